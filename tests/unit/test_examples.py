"""Anti-staleness: every example suite loads through the same path as `bakeoff validate`."""

from __future__ import annotations

from pathlib import Path

import pytest

from bakeoff import api, plan, validation

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))


def test_there_are_examples() -> None:
    assert {p.name for p in EXAMPLES} >= {"cpu-mock.yaml", "rtx4080-vs-a100.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_valid(path: Path) -> None:
    suite = validation.load_suite(path)
    assert plan.plan_cells(suite.spec)


def test_cpu_mock_is_cpu_only_pytorch_vs_triton() -> None:
    suite = validation.load_suite(Path(__file__).parents[2] / "examples" / "cpu-mock.yaml")
    assert all(pool.gpus == 0 for pool in suite.spec.node_pools)
    kinds = {b.kind.value for b in suite.spec.backends}
    assert kinds == {"pytorch", "triton-onnx"}
    assert all(
        b.execution_provider.value == "cpu"
        for b in suite.spec.backends
        if isinstance(b, api.TritonOnnxBackend)
    )


def test_study_example_has_three_backends_on_two_pools() -> None:
    suite = validation.load_suite(Path(__file__).parents[2] / "examples" / "rtx4080-vs-a100.yaml")
    assert len(plan.plan_cells(suite.spec)) == 6
