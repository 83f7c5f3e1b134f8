"""`bakeoff validate`: every bad suite is reported at its field path, with a hint."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from rule_cases import (
    DELETE as REMOVE,
)
from rule_cases import (
    RuleCase,
    base_suite,
    changed,
    rule_cases,
    rules_without_a_case,
)

from bakeoff import cli, validation

EXAMPLE = Path(__file__).parents[2] / "examples" / "rtx4080-vs-a100.yaml"


def good_suite() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    return document


def with_change(path: str, value: Any) -> dict[str, Any]:
    document = copy.deepcopy(good_suite())
    node: Any = document
    parts = path.split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    last = parts[-1]
    if value is DELETE:
        del node[int(last) if last.isdigit() else last]
    elif last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return document


DELETE = object()

CASES = [
    ("missing-model", "spec.model", DELETE, "spec.model", "Field required"),
    (
        "unknown-backend-kind",
        "spec.backends.0.kind",
        "tensorflow",
        "spec.backends[0].kind",
        "'pytorch', 'triton-onnx', 'onnxruntime' or 'external'",
    ),
    (
        "unknown-provider",
        "spec.backends.1.executionProvider",
        "rocm",
        "spec.backends[1].executionProvider",
        "'cpu', 'cuda' or 'tensorrt'",
    ),
    (
        "negative-cost",
        "spec.nodePools.0.costPerHour",
        -1,
        "spec.nodePools[0].costPerHour",
        "greater than or equal to 0",
    ),
    (
        "typo-field",
        "spec.nodePools.0.nodeSelectr",
        {"a": "b"},
        "spec.nodePools[0].nodeSelectr",
        "Extra inputs",
    ),
    (
        "zero-requests",
        "spec.scenarios.single.requests",
        0,
        "spec.scenarios.single.requests",
        "greater than 0",
    ),
    (
        # The load generator's own knobs are not part of the API: a suite leaves them default.
        "load-generator-knob-in-a-suite",
        "spec.scenarios.rate.warmupSeconds",
        0,
        "spec.scenarios.rate.warmupSeconds",
        "Extra inputs",
    ),
    ("empty-backends", "spec.backends", [], "spec.backends", "at least 1"),
    ("empty-pools", "spec.nodePools", [], "spec.nodePools", "at least 1"),
    ("bad-name", "metadata.name", "Not_A_Name", "metadata.name", "pattern"),
    (
        "string-for-int",
        "spec.backends.0.maxBatchSize",
        "big",
        "spec.backends[0].maxBatchSize",
        "valid integer",
    ),
    ("wrong-kind", "kind", "Suite", "kind", "'BenchmarkSuite'"),
    ("wrong-api-version", "apiVersion", "v1", "apiVersion", "bakeoff.dev/v1alpha1"),
    (
        "cosine-above-one",
        "spec.parity.minCosine",
        1.5,
        "spec.parity.minCosine",
        "less than or equal to 1",
    ),
    ("bad-cleanup", "spec.cleanup.policy", "Sometimes", "spec.cleanup.policy", "'OnSuccess'"),
    (
        "endpoint-not-a-url",
        "spec.backends.0",
        {"name": "ext", "kind": "external", "endpoint": {"httpUrl": "x:8000"}},
        "spec.backends[0].endpoint.httpUrl",
        "pattern",
    ),
    (
        "steady-state-without-window",
        "spec.scenarios.steadyState",
        {"tolerance": 0.05},
        "spec.scenarios.steadyState",
        "exactly one of windowRequests and windowSeconds",
    ),
    (
        "zero-workers",
        "spec.scenarios.workers",
        0,
        "spec.scenarios.workers",
        "greater than or equal to 1",
    ),
    (
        "node-selector-key-not-a-label-key",
        "spec.nodePools.0.nodeSelector",
        {"gpu product": "A100"},
        "spec.nodePools[0].nodeSelector",
        "key 'gpu product' is not a label key",
    ),
    (
        "node-selector-key-with-a-64-character-name",
        "spec.nodePools.0.nodeSelector",
        {"nvidia.com/" + "g" * 64: "A100"},
        "spec.nodePools[0].nodeSelector",
        "is not a label key",
    ),
    (
        "node-selector-value-not-a-label-value",
        "spec.nodePools.0.nodeSelector",
        {"nvidia.com/gpu.product": "NVIDIA A100"},
        "spec.nodePools[0].nodeSelector.nvidia.com/gpu.product",
        "String should match pattern",
    ),
]


@pytest.mark.parametrize(
    ("path", "value", "reported_at", "message"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_suite_is_reported_at_its_field(
    path: str, value: Any, reported_at: str, message: str
) -> None:
    with pytest.raises(validation.SuiteInvalid) as raised:
        validation.parse_suite(with_change(path, value))
    problems = {p.path: p.message for p in raised.value.problems}
    assert reported_at in problems, problems
    assert message in problems[reported_at]


@pytest.mark.parametrize("case", rule_cases(), ids=lambda case: case.name)
def test_every_rule_of_the_table_is_reported_at_its_field(case: RuleCase) -> None:
    """The table's rules as `bakeoff validate` (and the operator) enforce them; the cluster
    tier breaks the same rules on a real API server, which must name the same fields."""
    with pytest.raises(validation.SuiteInvalid) as raised:
        validation.parse_suite(changed(base_suite(), case.changes))
    problems = {p.path: p.message for p in raised.value.problems}
    assert problems.get(case.path) == case.message, problems


def test_every_rule_of_the_table_has_a_case() -> None:
    assert rules_without_a_case() == []


def test_hints_say_what_to_write_instead() -> None:
    document = changed(base_suite(), (("spec.backends.0.pools", ["a10"]),
                                      ("spec.parity.reference", "pytorh"),
                                      ("spec.backends.1.name", "pytorch")))  # fmt: skip
    with pytest.raises(validation.SuiteInvalid) as raised:
        validation.parse_suite(document)
    hints = [f"{p.path}: {p.hint}" for p in raised.value.problems]
    for expected in (
        "spec.backends: 'a10': did you mean 'a100'?",
        "spec.parity.reference: 'pytorh': did you mean 'pytorch'?",
        "spec.backends: repeated: pytorch",
    ):
        assert any(hint.startswith(expected) for hint in hints), hints


def test_a_backend_without_a_kind_or_with_an_unknown_one_is_blamed_at_kind() -> None:
    for value in ("tensorflow", DELETE):
        with pytest.raises(validation.SuiteInvalid) as raised:
            validation.parse_suite(with_change("spec.backends.1.kind", value))
        problems = {p.path: p.message for p in raised.value.problems}
        assert (
            "'pytorch', 'triton-onnx', 'onnxruntime' or 'external'"
            in problems["spec.backends[1].kind"]
        )


def test_typo_gets_did_you_mean_hint() -> None:
    with pytest.raises(validation.SuiteInvalid) as raised:
        validation.parse_suite(with_change("spec.nodePools.0.nodeSelectr", {"a": "b"}))
    hint = next(p.hint for p in raised.value.problems if p.path.endswith("nodeSelectr"))
    assert "did you mean 'nodeSelector'" in hint


def test_every_problem_is_reported_at_once() -> None:
    document = with_change("spec.backends.0.kind", "tensorflow")
    document["spec"]["nodePools"][0]["costPerHour"] = -3
    with pytest.raises(validation.SuiteInvalid) as raised:
        validation.parse_suite(document)
    paths = {p.path for p in raised.value.problems}
    assert {"spec.backends[0].kind", "spec.nodePools[0].costPerHour"} <= paths


def test_defaults_fill_in_scenarios_parity_and_cleanup() -> None:
    document = good_suite()
    del document["spec"]["scenarios"], document["spec"]["parity"], document["spec"]["cleanup"]
    suite = validation.parse_suite(document)
    assert suite.spec.scenarios.single is not None
    assert suite.spec.scenarios.single.requests == 200
    assert suite.spec.parity.min_cosine == 0.999
    assert suite.spec.cleanup.policy.value == "OnSuccess"


def test_cli_validate_bad_file_exits_2_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(with_change("spec.backends.0.kind", "tensorflow")))
    assert cli.main(["validate", str(bad)]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "spec.backends[0].kind" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "where"),
    [("spec: [unclosed", "line 1"), ("- just\n- a list\n", "(document)"), ("", "(file)")],
    ids=["broken-yaml", "not-a-mapping", "empty-file"],
)
def test_cli_validate_unreadable_documents(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, where: str
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    assert cli.main(["validate", str(bad)]) == cli.EXIT_BAD_INPUT
    assert where in capsys.readouterr().err


def test_cli_validate_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["validate", "/nonexistent/suite.yaml"]) == cli.EXIT_BAD_INPUT
    assert "cannot read" in capsys.readouterr().err


def test_pytorch_serving_options_are_accepted() -> None:
    document = with_change("spec.backends.0.dynamicBatching", {"maxQueueDelayMicroseconds": 100})
    document["spec"]["backends"][0].update(
        {"inputFormat": "uint8", "cudaGraphs": True, "instancesPerGpu": 2}
    )
    suite = validation.parse_suite(document)
    pytorch = suite.spec.backends[0]
    assert (pytorch.input_format.value, pytorch.cuda_graphs, pytorch.instances_per_gpu) == (
        "uint8", True, 2,
    )  # fmt: skip


def test_every_problem_is_reported_in_one_pass(tmp_path: Path) -> None:
    """A schema problem (no model source) does not hide the rules across fields."""
    document = good_suite()
    del document["spec"]["model"]["source"]
    document["spec"]["backends"][1]["name"] = document["spec"]["backends"][0]["name"]
    document["spec"]["backends"][0]["executionProvider"] = "cuda"
    document["spec"]["parity"]["reference"] = "nope"
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(validation.SuiteInvalid) as caught:
        validation.load_suite(path)
    paths = [p.path for p in caught.value.problems]
    assert paths[0] == "spec.model.source"
    assert "spec.backends" in paths  # names must be unique
    assert "spec.backends[0].executionProvider" in paths
    assert "spec.parity.reference" in paths
    assert len(paths) == len(set(paths))  # nothing twice


def test_backends_the_schema_refuses_still_count_in_the_rules_across_backends() -> None:
    """A backend without a field its kind requires, or of an unknown kind, stands in by its
    name: the duplicate name and the parity hint still see every backend."""
    document = changed(base_suite(), (
        ("spec.backends.1.executionProvider", REMOVE),
        ("spec.backends.2.kind", "tensorflow"),
        ("spec.backends.0.name", "triton-onnx-trt"),
        ("spec.parity.reference", "triton-onnx-cud"),
    ))  # fmt: skip
    with pytest.raises(validation.SuiteInvalid) as raised:
        validation.parse_suite(document)
    problems = {f"{p.path}: {p.message}": p.hint for p in raised.value.problems}
    assert (
        "spec.backends[1].executionProvider: executionProvider is required for kind "
        "triton-onnx" in problems
    ), problems
    assert problems["spec.backends: backend names must be unique"] == "repeated: triton-onnx-trt"
    hint = problems["spec.parity.reference: spec.parity.reference must name one of spec.backends"]
    assert hint.startswith("'triton-onnx-cud': did you mean 'triton-onnx-cuda'?"), hint


def test_a_value_the_schema_refuses_is_not_reported_again_by_the_cross_checks() -> None:
    document = good_suite()
    document["spec"]["backends"][0]["maxBatchSize"] = -1  # refused by the schema
    with pytest.raises(validation.SuiteInvalid) as caught:
        validation.parse_suite(document)
    paths = [p.path for p in caught.value.problems]
    assert paths.count("spec.backends[0].maxBatchSize") == 1


def test_suite_names_of_63_characters_are_accepted_and_64_refused() -> None:
    document = good_suite()
    document["metadata"]["name"] = "s" * 63
    assert validation.parse_suite(document).metadata.name == "s" * 63
    document["metadata"]["name"] = "s" * 64
    with pytest.raises(validation.SuiteInvalid, match="1 problem"):
        validation.parse_suite(document)
