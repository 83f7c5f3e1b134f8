"""`bakeoff compare OLD NEW`: faster, slower or no change, from the same intervals."""

from __future__ import annotations

from pathlib import Path

import pytest
from result_factories import cell

from bakeoff import cli, compare
from bakeoff_bench.results import CellResult


def run_of(p50: float, spread: float = 0.2, count: int = 400) -> list[CellResult]:
    return [cell("pytorch", "cpu", p50=p50, best=8000 / p50, single_count=count, spread=spread)]


def verdicts(
    old: list[CellResult], new: list[CellResult], threshold: float = 0.05
) -> dict[str, str]:
    changes = compare.compare_results(old, new, threshold=threshold, confidence=0.95)
    return {c.metric: c.verdict for c in changes}


def test_a_30_percent_slowdown_is_slower_and_a_regression() -> None:
    changes = compare.compare_results(run_of(10.0), run_of(13.0), threshold=0.05, confidence=0.95)
    by_metric = {c.metric: c for c in changes}
    assert by_metric["p50"].verdict == "slower" and by_metric["p50"].regression
    assert by_metric["throughput"].verdict == "slower"
    assert by_metric["p50"].relative == pytest.approx(0.3, abs=0.05)
    assert "pytorch/cpu p50: " in by_metric["p50"].line() and "slower" in by_metric["p50"].line()


def test_a_speedup_is_faster_and_no_regression() -> None:
    assert verdicts(run_of(13.0), run_of(10.0))["p50"] == "faster"


def test_noise_is_no_change() -> None:
    assert set(verdicts(run_of(10.0), run_of(10.2)).values()) == {"no change"}


def test_a_separated_change_below_the_threshold_is_no_change() -> None:
    old, new = run_of(10.0, spread=0.01, count=20_000), run_of(10.3, spread=0.01, count=20_000)
    assert verdicts(old, new, threshold=0.05)["p50"] == "no change"
    assert verdicts(old, new, threshold=0.02)["p50"] == "slower"


def test_cells_in_only_one_run_are_left_out() -> None:
    other = [cell("triton", "cpu", p50=10.0, spread=0.2)]
    assert compare.compare_results(run_of(10.0), other, threshold=0.05, confidence=0.95) == []


def write(folder: Path, results: list[CellResult]) -> Path:
    (folder / "cells").mkdir(parents=True)
    for result in results:
        path = folder / "cells" / f"{result.backend}-{result.pool}.json"
        path.write_text(result.model_dump_json(by_alias=True))
    return folder


def test_the_command_exits_3_on_a_regression_for_ci_gates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = write(tmp_path / "old", run_of(10.0))
    new = write(tmp_path / "new", run_of(13.0))
    assert cli.main(["compare", str(old), str(new)]) == cli.EXIT_REGRESSION
    out = capsys.readouterr()
    assert "pytorch/cpu p50: " in out.out and "regression(s) past 5%" in out.err
    assert cli.main(["compare", str(old), str(new), "--threshold", "0.5"]) == cli.EXIT_OK
    assert cli.main(["compare", str(new), str(old)]) == cli.EXIT_OK  # faster


def test_the_command_names_what_is_wrong_with_its_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = write(tmp_path / "old", run_of(10.0))
    assert cli.main(["compare", str(old), str(tmp_path / "missing")]) == cli.EXIT_BAD_INPUT
    assert "missing/cells has no results" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["compare", str(old), str(old), "--threshold", "5"])
    assert "is not a fraction" in capsys.readouterr().err
