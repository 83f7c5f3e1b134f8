"""Fixtures of the chart tier: helm and kubeconform built from their Go modules
(hack/build-tools.sh), and Kubernetes JSON schemas generated from the real API server.

kubeconform downloads its schemas from GitHub by default, which CI here cannot reach; the
schemas are instead generated from the OpenAPI v3 documents of the local control plane
(hack/control-plane.sh, Kubernetes 1.36.3), so they are exactly what the API server enforces.
A tool that cannot be built or a control plane that cannot start fails the tier; nothing skips.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "bakeoff"
BUILD_TOOLS = REPO / "hack" / "build-tools.sh"
CONTROL_PLANE = REPO / "hack" / "control-plane.sh"
CACHE = Path(os.environ.get("BAKEOFF_CACHE", Path.home() / ".cache" / "bakeoff"))


def run(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        pytest.fail(
            f"{' '.join(args)} exited {done.returncode}:\n{done.stderr}\n{done.stdout}",
            pytrace=False,
        )
    return done


@pytest.fixture(scope="session")
def tool_bin() -> Path:
    """hack/build-tools.sh build (reuses cached binaries; first build takes minutes)."""
    run(str(BUILD_TOOLS), "build", timeout=3600)
    return Path(run(str(BUILD_TOOLS), "path").stdout.strip())


@pytest.fixture(scope="session")
def helm(tool_bin: Path) -> Path:
    return tool_bin / "helm"


@pytest.fixture(scope="session")
def kubeconform(tool_bin: Path) -> Path:
    return tool_bin / "kubeconform"


def _strict(schema: Any) -> Any:
    """Close every object schema that lists its properties (kubeconform's -strict schemas do the
    same), so a misspelt field in a template fails instead of being pruned by the server."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def kind_suffix(group: str, version: str) -> str:
    """kubeconform's {{ .KindSuffix }}: "-v1", "-apps-v1", "-rbac-v1" (first part of the group)."""
    return f"-{group.split('.')[0]}-{version}".lower() if group else f"-{version}"


def generate_schemas(out: Path) -> int:
    """One standalone JSON schema per kind, named like kubernetes-json-schema's files
    (`deployment-apps-v1.json`): the kind's `$ref` plus its group-version document's
    components, so the references resolve inside the file."""
    kubectl = [str(CONTROL_PLANE), "kubectl"]
    paths = json.loads(run(*kubectl, "get", "--raw", "/openapi/v3").stdout)["paths"]
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    for path in sorted(paths):
        if not (path.startswith("api/") or path.startswith("apis/")) or path.count("/") < 1:
            continue
        document = json.loads(run(*kubectl, "get", "--raw", f"/openapi/v3/{path}").stdout)
        schemas = document.get("components", {}).get("schemas", {})
        components = {"schemas": _strict(schemas)}
        for name, schema in schemas.items():
            for gvk in schema.get("x-kubernetes-group-version-kind", []):
                group, version, kind = gvk["group"], gvk["version"], gvk["kind"]
                if path != ("api/v1" if not group else f"apis/{group}/{version}"):
                    continue  # e.g. meta/v1 WatchEvent listed in every document
                target = out / f"{kind.lower()}{kind_suffix(group, version)}.json"
                target.write_text(
                    json.dumps({"$ref": f"#/components/schemas/{name}", "components": components})
                )
                count += 1
    return count


@pytest.fixture(scope="session")
def schema_dir() -> Path:
    """Schemas of the running control plane's Kubernetes version, generated once and cached
    in ~/.cache/bakeoff/kubeconform-schemas/<gitVersion>/ (the control plane is started if it
    is not up)."""
    run(str(CONTROL_PLANE), "up", timeout=3600)
    version = json.loads(run(str(CONTROL_PLANE), "kubectl", "version", "-o", "json").stdout)[
        "serverVersion"
    ]["gitVersion"]
    directory = CACHE / "kubeconform-schemas" / version
    stamp = directory / ".complete"
    if not stamp.exists():
        count = generate_schemas(directory)
        assert count > 50, f"only {count} schemas generated from the API server"
        stamp.write_text(f"{count}\n")
    return directory
