"""Static checks of images/*/Dockerfile (no Docker engine needed): pinned bases, a numeric
non-root USER, an ENTRYPOINT that matches how operator/bakeoff/manifests.py runs the image,
COPY sources that exist in the repository, and dependencies read from pyproject.toml (never
retyped). The node tier (tests/node) builds these images and runs them as pods."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from bakeoff import manifests, plan, validation
from bakeoff.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
# What each image's ENTRYPOINT must be: the manifests pass arguments only.
ENTRYPOINTS = {
    "operator": ["kopf", "run", "--standalone", "-m", "bakeoff.handlers"],
    "bench-job": ["python", "-m", "bakeoff_bench"],
    "serve": ["python", "-m", "bakeoff_serve"],
}
# The pyproject.toml extra each image installs.
EXTRAS = {"operator": "operator", "bench-job": "bench", "serve": "serve"}


def instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and continuation lines joined."""
    text = (IMAGES / name / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)
    result = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def resolved_froms(name: str) -> list[str]:
    steps = instructions(name)
    args = dict(rest.split("=", 1) for keyword, rest in steps if keyword == "ARG" and "=" in rest)
    stages: list[str] = []
    images = []
    for keyword, rest in steps:
        if keyword != "FROM":
            continue
        parts = rest.split()
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[0])
        if image not in stages:
            images.append(image)
        if len(parts) == 3 and parts[1].upper() == "AS":
            stages.append(parts[2])
    return images


def test_every_image_has_a_dockerfile() -> None:
    assert sorted(p.parent.name for p in IMAGES.glob("*/Dockerfile")) == sorted(ENTRYPOINTS)


@pytest.mark.parametrize("name", sorted(ENTRYPOINTS))
def test_base_images_are_pinned_by_tag(name: str) -> None:
    froms = resolved_froms(name)
    assert froms
    for image in froms:
        repo, _, tag = image.partition("@")[0].rpartition(":")
        assert repo and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image} uses :latest"


@pytest.mark.parametrize("name", sorted(ENTRYPOINTS))
def test_builds_in_stages(name: str) -> None:
    assert len([k for k, _ in instructions(name) if k == "FROM"]) >= 2


@pytest.mark.parametrize("name", sorted(ENTRYPOINTS))
def test_final_user_is_numeric_non_root(name: str) -> None:
    users = [rest for keyword, rest in instructions(name) if keyword == "USER"]
    assert users, f"{name} sets no USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0
    assert not gid or (gid.isdigit() and int(gid) != 0)
    # The pods run as 1000 (pods.RESTRICTED_POD); the image agrees.
    assert int(uid) == 1000


@pytest.mark.parametrize("name", sorted(ENTRYPOINTS))
def test_entrypoint_is_exec_form_and_what_the_manifests_expect(name: str) -> None:
    entrypoints = [rest for keyword, rest in instructions(name) if keyword == "ENTRYPOINT"]
    assert entrypoints, f"{name} has no ENTRYPOINT"
    assert json.loads(entrypoints[-1]) == ENTRYPOINTS[name]


@pytest.mark.parametrize("name", sorted(ENTRYPOINTS))
def test_copy_sources_exist(name: str) -> None:
    for keyword, rest in instructions(name):
        if keyword != "COPY" or "--from=" in rest:
            continue
        *sources, _destination = shlex.split(rest)
        for source in sources:
            assert (ROOT / source).exists(), f"{name}: COPY {source} is not in the repository"


def test_manifests_pass_arguments_that_follow_these_entrypoints() -> None:
    """The manifests never repeat the entrypoint: the Job's args start with --config-env,
    backend args with a bakeoff_serve subcommand (on a GPU pool, NVIDIA's Triton image runs
    `tritonserver`, its own entrypoint's binary)."""
    suite = validation.load_suite(ROOT / "examples" / "cpu-mock.yaml")
    settings = OperatorSettings(cpu_mock=True)
    first_args = set()
    for cell in plan.plan_cells(suite.spec):
        deployment = manifests.build_backend_deployment(suite, "uid", cell, settings)
        pod = deployment["spec"]["template"]["spec"]
        for container in [*pod.get("initContainers", []), *pod["containers"]]:
            first_args.add(container["args"][0])
            assert "python" not in container["args"], container["args"]
        job = manifests.build_bench_job(suite, "uid", cell, settings)
        bench = job["spec"]["template"]["spec"]["containers"][0]
        assert bench["args"] == ["--config-env", "BAKEOFF_BENCH_CONFIG", "--publish"]
    assert first_args == {"pytorch", "triton-prep", "triton"}


@pytest.mark.parametrize("name", sorted(ENTRYPOINTS))
def test_dependencies_come_from_pyproject(name: str) -> None:
    """Each image installs its extra through images/requirements.py, and types no pin."""
    runs = " ".join(rest for keyword, rest in instructions(name) if keyword == "RUN")
    assert f"requirements.py {EXTRAS[name]} " in runs
    assert not re.search(r"pip install[^&;]*[\"'][A-Za-z0-9_.-]+\s*[<>=~!]", runs), runs


def test_requirements_reader_expands_extras_and_the_no_deps_list() -> None:
    spec = importlib.util.spec_from_file_location("requirements", IMAGES / "requirements.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = project["dependencies"]
    for extra in set(EXTRAS.values()):
        lines = module.requirements(project, [extra])
        assert lines[: len(core)] == core
        assert set(project["optional-dependencies"][extra]) <= set(lines)
    everything = module.requirements(project, ["dev"])
    assert not any(line.startswith("bakeoff[") for line in everything)
    for extra in ("operator", "bench", "serve", "report"):
        assert set(project["optional-dependencies"][extra]) <= set(everything)
    with pytest.raises(SystemExit, match="no extra 'gpu'"):
        module.requirements(project, ["gpu"])
