"""The verdict: cost arithmetic, parity gate, winners and recommendations."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from result_factories import cell

from bakeoff import analysis, api, validation
from bakeoff_bench.results import CellResult, Flag, FlagCode

SUITE = validation.load_suite(Path(__file__).parents[2] / "examples" / "cpu-mock.yaml")


def test_cost_per_1k_follows_the_design_formula() -> None:
    # 0.10 per hour at 100 inferences/s: 0.10 / 360000 * 1000
    assert analysis.cost_per_1k(0.10, 100.0) == pytest.approx(0.10 / 360_000 * 1000)
    assert analysis.cost_per_1k(0.85, 0.0) == math.inf


def test_cosine_rows() -> None:
    assert analysis.cosine_rows([[1, 0], [0, 2]], [[2, 0], [0, 1]]) == [1.0, 1.0]
    assert analysis.cosine_rows([[1, 0]], [[0, 1]]) == [0.0]
    with pytest.raises(ValueError, match="rows"):
        analysis.cosine_rows([[1, 0]], [[1, 0], [0, 1]])


def test_fastest_and_highest_throughput_win_their_categories() -> None:
    results = [
        cell("pytorch", "cpu-mock", p50=20.0, best=100.0, memory=800 * 2**20),
        cell("triton-onnx-cpu", "cpu-mock", p50=15.0, best=80.0, memory=600 * 2**20),
    ]
    verdict = analysis.analyze(SUITE, results)
    assert verdict.winners["latency"].backend == "triton-onnx-cpu"
    assert verdict.winners["throughput"].backend == "pytorch"
    assert verdict.winners["cost"].backend == "pytorch"
    assert verdict.winners["memory"].backend == "triton-onnx-cpu"
    assert verdict.winners["cost"].value == pytest.approx(analysis.cost_per_1k(0.10, 100.0))
    assert "batch 8" in verdict.winners["throughput"].basis
    assert len(verdict.recommendations) == 1
    assert verdict.recommendations[0].startswith("cpu-mock: lowest latency: triton-onnx-cpu")


def test_backend_failing_parity_is_shown_but_cannot_win() -> None:
    results = [
        cell("pytorch", "cpu-mock", p50=20.0, best=100.0),
        cell("triton-onnx-cpu", "cpu-mock", p50=5.0, best=500.0, parity=[[0.8, 0.6], [0.0, 1.0]]),
    ]
    verdict = analysis.analyze(SUITE, results)
    bad = next(r for r in verdict.rows if r.backend == "triton-onnx-cpu")
    assert not bad.ok
    assert bad.status.startswith("parity failed: cosine 0.0")
    assert {w.backend for w in verdict.winners.values()} == {"pytorch"}
    assert verdict.parity[0].passed is False


def test_failed_cell_is_listed_with_its_reason() -> None:
    verdict = analysis.analyze(
        SUITE, [cell("pytorch", "cpu-mock")], [("triton-onnx-cpu", "cpu-mock", "not ready")]
    )
    failed = next(r for r in verdict.rows if r.backend == "triton-onnx-cpu")
    assert failed.status == "failed: not ready"
    assert failed.ok is False
    assert "reference" not in " ".join(verdict.notes)


def test_a_backend_that_cannot_exist_here_is_not_run_rather_than_failed() -> None:
    reason = "run 1 of the repeats: not run: execution provider tensorrt needs TensorRT's libraries"
    verdict = analysis.analyze(
        SUITE, [cell("pytorch", "cpu-mock")], [("triton-onnx-cpu", "cpu-mock", reason)]
    )
    row = next(r for r in verdict.rows if r.backend == "triton-onnx-cpu")
    assert row.status.startswith("not run: execution provider tensorrt needs")
    assert row.ok is False


def test_summary_for_status_carries_cost_per_backend_and_pool() -> None:
    verdict = analysis.analyze(SUITE, [cell("pytorch", "cpu-mock", best=100.0)])
    summary = verdict.summary()
    assert set(summary.cost_per_1k) == {"pytorch/cpu-mock"}
    assert set(summary.winners) == {"latency", "throughput", "cost", "memory"}


def test_a_result_without_one_successful_request_shows_no_numbers_and_cannot_win() -> None:
    dead = cell("pytorch", "cpu-mock", p50=0.0001, best=1e9)
    for scenario in dead.scenario_results():
        scenario.latency = scenario.latency.model_copy(update={"count": 0})
    verdict = analysis.analyze(SUITE, [dead, cell("triton-onnx-cpu", "cpu-mock", p50=15.0)])
    row = next(r for r in verdict.rows if r.backend == "pytorch")
    assert row.ok is False
    assert row.status == "failed: no request succeeded in any scenario"
    assert row.single_p50_ms is None and row.best_inferences_per_s is None
    assert row.cost_per_1k is None
    assert {w.backend for w in verdict.winners.values()} == {"triton-onnx-cpu"}


def noisy(backend: str, p50: float, count: int = 200, spread: float = 0.3) -> CellResult:
    return cell(backend, "cpu-mock", p50=p50, best=8000 / p50, single_count=count, spread=spread)


def test_a_3_percent_difference_under_noise_is_a_tie() -> None:
    verdict = analysis.analyze(SUITE, [noisy("pytorch", 10.0), noisy("triton-onnx-cpu", 10.3)])
    assert "latency" not in verdict.winners
    tie = verdict.ties["latency"]
    assert tie.candidates == ["pytorch/cpu-mock", "triton-onnx-cpu/cpu-mock"]
    assert tie.message.startswith("no clear winner (within noise): pytorch/cpu-mock ")
    assert " ms [" in tie.message and " vs triton-onnx-cpu/cpu-mock " in tie.message
    assert any("no clear winner between pytorch and triton-onnx-cpu" in r
               for r in verdict.recommendations)  # fmt: skip


def test_overlapping_intervals_are_a_tie_that_says_how_many_samples_would_settle_it() -> None:
    verdict = analysis.analyze(SUITE, [noisy("pytorch", 10.0), noisy("triton-onnx-cpu", 10.8)])
    tie = verdict.ties["latency"]
    assert "95% intervals overlap" in tie.message
    assert tie.samples_needed is not None and tie.samples_needed > 200
    assert f"about {tie.samples_needed:,} samples each would settle it" in tie.message


def test_a_30_percent_difference_is_a_win_with_its_interval() -> None:
    verdict = analysis.analyze(SUITE, [noisy("pytorch", 10.0), noisy("triton-onnx-cpu", 13.0)])
    winner = verdict.winners["latency"]
    assert winner.backend == "pytorch"
    assert winner.low is not None and winner.high is not None
    assert winner.low <= winner.value <= winner.high
    row = next(r for r in verdict.rows if r.backend == "pytorch")
    assert row.single_p50_interval_ms == (winner.low, winner.high)
    assert row.single_p99_interval_ms is not None and row.single_mean_interval_ms is not None
    assert row.best_inferences_per_s_interval is not None and row.cost_per_1k_interval is not None
    assert "latency" not in verdict.ties


def test_a_separated_difference_below_the_minimum_effect_is_still_a_tie() -> None:
    results = [noisy("pytorch", 10.0, 20_000, 0.01), noisy("triton-onnx-cpu", 10.2, 20_000, 0.01)]
    verdict = analysis.analyze(SUITE, results)
    assert "is below minEffect 5%" in verdict.ties["latency"].message
    stricter = SUITE.model_copy(
        update={
            "spec": SUITE.spec.model_copy(update={"verdict": api.VerdictRules(min_effect=0.01)})
        }
    )
    assert analysis.analyze(stricter, results).winners["latency"].backend == "pytorch"


def test_an_unstable_result_cannot_win() -> None:
    drifting = noisy("pytorch", 5.0)
    assert drifting.single is not None
    drifting.single.flags.append(
        Flag(code=FlagCode.UNSTABLE, severity="warning", message="p50 +18% over 10 windows")
    )
    verdict = analysis.analyze(SUITE, [drifting, noisy("triton-onnx-cpu", 10.0)])
    assert verdict.winners["latency"].backend == "triton-onnx-cpu"
    row = next(r for r in verdict.rows if r.backend == "pytorch")
    assert row.ok is False and row.status.startswith("unstable: ")


def test_repeated_runs_combine_into_the_median_run_and_widen_the_intervals() -> None:
    runs = [noisy("pytorch", p50) for p50 in (10.0, 12.0, 11.0)]
    combined = analysis.combine_repeats(runs)
    assert combined.single is not None and combined.single.latency.p50_ms == pytest.approx(
        runs[2].single.latency.p50_ms  # type: ignore[union-attr]
    )
    assert [r.index for r in combined.repeats] == [1, 2, 3]
    assert "median of 3 interleaved runs" in combined.notes[-1]
    alone = analysis.analyze(SUITE, [runs[2]]).rows[0].single_p50_interval_ms
    widened = analysis.analyze(SUITE, [combined]).rows[0].single_p50_interval_ms
    assert alone is not None and widened is not None
    assert widened[0] <= alone[0] and widened[1] >= alone[1]
    assert widened[1] - widened[0] > alone[1] - alone[0]


def test_the_operator_says_repeats_are_for_local_runs() -> None:
    repeated = SUITE.model_copy(
        update={"spec": SUITE.spec.model_copy(update={
            "scenarios": SUITE.spec.scenarios.model_copy(update={"repeats": 3})})}
    )  # fmt: skip
    (problem,) = validation.cluster_problems(repeated)
    assert problem.path == "spec.scenarios.repeats" and "--local" in problem.message
    assert validation.cluster_problems(SUITE) == []
