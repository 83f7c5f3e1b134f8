"""Print the requirements of one or more of Bakeoff's extras, read from pyproject.toml.

The Dockerfiles install their image's part of Bakeoff with it, before the source is copied
(so the dependency layer stays cached while the code changes), and hack/setup-venv.sh reads
the --no-deps list from it: every pin lives in pyproject.toml only.

    python3 requirements.py [--pyproject PATH] EXTRA [EXTRA ...]   # core + those extras
    python3 requirements.py [--pyproject PATH] --no-deps           # [tool.bakeoff] no-deps

Standard library only (it runs in a bare base image), Python 3.11+ (tomllib).
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

# `name[extra,...]` with optional version and marker, e.g. "bakeoff[operator,serve]".
_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?(.*)$")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(project: dict[str, Any], extras: list[str]) -> list[str]:
    """The core dependencies plus each extra's, with the project's own extras expanded
    (`bakeoff[a,b]` inside an extra), duplicates dropped, order kept."""
    own = _normalize(project["name"])
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    out: list[str] = []
    seen_extras: set[str] = set()

    def add(lines: list[str]) -> None:
        for line in lines:
            match = _REQUIREMENT.match(line)
            if match and _normalize(match.group(1)) == own:
                for extra in (match.group(2) or "").split(","):
                    visit(extra.strip())
            elif line not in out:
                out.append(line)

    def visit(extra: str) -> None:
        if not extra or extra in seen_extras:
            return
        if extra not in optional:
            known = ", ".join(sorted(optional))
            raise SystemExit(f"requirements.py: no extra '{extra}' in pyproject.toml ({known})")
        seen_extras.add(extra)
        add(optional[extra])

    add(project.get("dependencies", []))
    for extra in extras:
        visit(extra)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    here = Path(__file__).with_name("pyproject.toml")
    parser.add_argument("--pyproject", type=Path, default=here)
    parser.add_argument("--no-deps", action="store_true", help="print [tool.bakeoff] no-deps")
    parser.add_argument("extras", nargs="*")
    args = parser.parse_args(argv)
    if not args.pyproject.is_file():
        # In the repository the file sits one level up; in an image build, beside this one.
        args.pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    data = tomllib.loads(args.pyproject.read_text())
    if args.no_deps:
        lines = list(data.get("tool", {}).get("bakeoff", {}).get("no-deps", []))
    else:
        lines = requirements(data["project"], args.extras)
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
