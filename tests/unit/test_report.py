"""The report: terminal table, Markdown, HTML and plots from a verdict."""

from __future__ import annotations

from pathlib import Path

import pytest
from result_factories import cell

from bakeoff import analysis, report, validation

SUITE = validation.load_suite(Path(__file__).parents[2] / "examples" / "cpu-mock.yaml")


def verdict_and_results(single_count: int = 200) -> tuple[analysis.Verdict, list]:  # type: ignore[type-arg]
    results = [
        cell("pytorch", "cpu-mock", p50=20.0, best=100.0, single_count=single_count),
        cell("triton-onnx-cpu", "cpu-mock", p50=15.0, best=80.0, single_count=single_count),
    ]
    return analysis.analyze(SUITE, results), results


def test_table_lists_every_cell_and_the_winners() -> None:
    verdict, _ = verdict_and_results()
    text = report.render_table(verdict)
    assert "pytorch" in text and "triton-onnx-cpu" in text
    assert "Single-image latency (p50): triton-onnx-cpu on cpu-mock, 15 ms" in text
    assert "Throughput: pytorch on cpu-mock, 100 inferences/s" in text
    assert "fewer than 100 samples" not in text


def test_low_sample_p99_is_flagged_everywhere() -> None:
    verdict, results = verdict_and_results(single_count=30)
    assert "! p99 from fewer than 100 samples" in report.render_table(verdict)
    markdown = report.render_markdown(verdict, results, [])
    assert "- pytorch/cpu-mock: low-samples: single b=1 c=1: p99 is based on 30 samples" in markdown


def test_write_report_produces_markdown_html_and_plots(tmp_path: Path) -> None:
    verdict, results = verdict_and_results()
    paths = report.write_report(verdict, results, tmp_path)
    names = {p.name for p in paths}
    assert names == {"report.md", "report.html", "latency-percentiles.png", "batch-sweep.png",
                     "time-breakdown.png", "cost-vs-p99.png"}  # fmt: skip
    for png in tmp_path.glob("plots/*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (tmp_path / "report.md").read_text()
    assert "![batch-sweep](plots/batch-sweep.png)" in markdown
    for title in (
        "Verdict",
        "Flags",
        "Throughput and latency per batch size",
        "Cold start",
        "Plots",
        "Parity",
        "Methodology",
        "Environment",
    ):
        assert f"## {title}" in markdown, title
        assert f"<h2>{title}</h2>" in (tmp_path / "report.html").read_text(), title
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4
    assert (tmp_path / "summary.json").exists()


def test_reference_backend_is_marked_in_the_parity_column() -> None:
    verdict, _ = verdict_and_results()
    header, rows = report.table_rows(verdict)
    parity = header.index("parity")
    by_backend = {row[0]: row[parity] for row in rows}
    assert by_backend == {"pytorch": "reference", "triton-onnx-cpu": "1.00000"}


def test_the_report_shows_the_executed_batch_and_the_client_mean_beside_the_servers() -> None:
    verdict, results = verdict_and_results()
    markdown = report.render_markdown(verdict, results, [])
    assert "| mean ms | server queue ms | server compute ms | executed batch |" in markdown
    # The factories' server ran each request as one execution of its batch.
    assert "| 8 | 1 |" in markdown and "| 8.0 |" in markdown


def test_intervals_and_ties_reach_the_table() -> None:
    results = [
        cell("pytorch", "cpu-mock", p50=10.0, best=800.0, spread=0.3),
        cell("triton-onnx-cpu", "cpu-mock", p50=10.2, best=790.0, spread=0.3),
    ]
    verdict = analysis.analyze(SUITE, results)
    text = report.render_table(verdict)
    assert "p50 ms [95%]" in text
    row = next(r for r in verdict.rows if r.backend == "pytorch")
    assert row.single_p50_interval_ms is not None
    assert f"[{row.single_p50_interval_ms[0]:.2f}, {row.single_p50_interval_ms[1]:.2f}]" in text
    assert "Single-image latency (p50): no clear winner (within noise): " in text


def test_with_histograms_the_report_draws_the_percentile_distribution(tmp_path: Path) -> None:
    results = [
        cell("pytorch", "cpu-mock", p50=20.0, best=100.0, spread=0.3),
        cell("triton-onnx-cpu", "cpu-mock", p50=15.0, best=80.0, spread=0.3),
    ]
    paths = report.write_report(analysis.analyze(SUITE, results), results, tmp_path)
    assert "latency-distribution.png" in {p.name for p in paths}


def test_the_pareto_front_holds_the_points_nothing_beats_on_both() -> None:
    # (p99, cost): b is faster and cheaper than d; a is cheapest, c fastest.
    points = [(30.0, 0.001), (20.0, 0.002), (10.0, 0.005), (25.0, 0.003)]
    assert report.pareto_front(points) == [2, 1, 0]


def test_time_breakdown_adds_up_to_the_clients_mean() -> None:
    result = cell("pytorch", "cpu-mock", p50=20.0)
    parts = report.time_breakdown(result)
    assert parts is not None and result.single is not None
    assert sum(parts.values()) == pytest.approx(result.single.latency.mean_ms)
    assert parts["server queue"] == pytest.approx(0.05)
