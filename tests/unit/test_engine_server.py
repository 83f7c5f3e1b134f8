"""Engine vs server: pairs that change one factor, chains that split a difference in both,
and how the report shows them."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from result_factories import cell

from bakeoff import analysis, api, engine_server, report, validation
from bakeoff_bench.results import CellResult

EXAMPLE = Path(__file__).parents[2] / "examples" / "cpu-mock.yaml"
POOL = "cpu-mock"

# Identities (server, engine, precision, wire), as each kind's plug-in states them.
PYTORCH = {"name": "pytorch", "kind": "pytorch"}  # bakeoff, pytorch, fp32, fp32
ORT_CUDA = {"name": "ort-cuda", "kind": "onnxruntime", "executionProvider": "cuda"}
ORT_TRT = {"name": "ort-trt", "kind": "onnxruntime", "executionProvider": "tensorrt"}
TRITON_CUDA = {"name": "triton-cuda", "kind": "triton-onnx", "executionProvider": "cuda"}
TRITON_TRT = {"name": "triton-trt", "kind": "triton-onnx", "executionProvider": "tensorrt"}
TRITON_TRT_FP16 = {**TRITON_TRT, "name": "triton-trt-fp16", "precision": "fp16"}
PYTORCH_UINT8 = {"name": "pytorch-uint8", "kind": "pytorch", "inputFormat": "uint8"}
EXTERNAL = {"name": "ext", "kind": "external", "endpoint": {"httpUrl": "http://ext:8000"}}


def suite_of(
    *backends: dict[str, Any], pools: tuple[str, ...] = (POOL,), gpus: int = 1
) -> api.BenchmarkSuite:
    document = yaml.safe_load(EXAMPLE.read_text())
    document["spec"]["backends"] = [copy.deepcopy(b) for b in backends]
    document["spec"]["parity"]["reference"] = backends[0]["name"]
    template = {**document["spec"]["nodePools"][0], "gpus": gpus}
    if gpus:
        template["nodeSelector"] = {"nvidia.com/gpu.present": "true"}
    document["spec"]["nodePools"] = [{**template, "name": name} for name in pools]
    return validation.parse_suite(document)


def test_on_a_cpu_pool_every_onnxruntime_engine_is_the_cpu_provider() -> None:
    tensorrt = {**ORT_CUDA, "name": "ort-trt", "executionProvider": "tensorrt"}
    suite = suite_of(PYTORCH, ORT_CUDA, tensorrt, gpus=0)
    results = [measured("pytorch", 10.0, 200.0), measured("ort-cuda", 8.0, 250.0),
               measured("ort-trt", 7.0, 300.0)]  # fmt: skip
    found = analysis.analyze(suite, results).engine_vs_server
    engines = {(p.changed_from, p.changed_to) for p in found.pairs}
    assert engines == {("pytorch", "onnxruntime-cpu")}  # cuda and tensorrt are the same there


def measured(backend: str, p50: float, best: float, pool: str = POOL) -> CellResult:
    # cell()'s single run does 1000/p50 img/s: keep `best` above it so that it is the best.
    assert best > 1000 / p50
    return cell(backend, pool, p50=p50, best=best)


def found_pairs(split: engine_server.EngineVsServer) -> set[tuple[str, str, str]]:
    return {(p.before, p.after, p.factor) for p in split.pairs}


def test_only_backends_differing_in_exactly_one_factor_are_pairs() -> None:
    suite = suite_of(PYTORCH, ORT_CUDA, TRITON_CUDA, TRITON_TRT_FP16, PYTORCH_UINT8, EXTERNAL)
    results = [
        measured("pytorch", 10.0, 200.0),
        measured("ort-cuda", 8.0, 250.0),
        measured("triton-cuda", 9.0, 240.0),
        measured("triton-trt-fp16", 4.0, 600.0),
        measured("pytorch-uint8", 9.5, 210.0),
        measured("ext", 8.0, 250.0),
    ]
    split = analysis.analyze(suite, results).engine_vs_server
    # pytorch vs triton-cuda changes both; the fp16 one a precision, pytorch-uint8 the wire
    # (and against pytorch, nothing): none of those isolates a factor. ext is unknown.
    assert found_pairs(split) == {
        ("pytorch", "ort-cuda", "engine"),
        ("ort-cuda", "triton-cuda", "server"),
    }
    engine = next(p for p in split.pairs if p.factor == "engine")
    assert (engine.changed_from, engine.changed_to, engine.kept) == (
        "pytorch",
        "onnxruntime-cuda",
        "bakeoff",
    )
    assert engine.p50_ms is not None and engine.inferences_per_s is not None
    assert engine.p50_ms.delta == pytest.approx(-2.0)
    assert engine.p50_ms.relative == pytest.approx(-0.2)
    assert engine.inferences_per_s.delta == pytest.approx(50.0)
    assert engine.inferences_per_s.relative == pytest.approx(0.25)
    server = next(p for p in split.pairs if p.factor == "server")
    assert (server.changed_from, server.changed_to, server.kept) == (
        "bakeoff",
        "triton",
        "onnxruntime-cuda",
    )


def test_a_chain_splits_the_whole_difference_into_parts_that_add_up() -> None:
    suite = suite_of(PYTORCH, ORT_CUDA, TRITON_CUDA)
    results = [
        measured("pytorch", 10.0, 200.0),
        measured("ort-cuda", 7.5, 300.0),
        measured("triton-cuda", 8.25, 260.0),
    ]
    (found,) = analysis.analyze(suite, results).engine_vs_server.decompositions
    assert (found.start, found.end) == ("pytorch", "triton-cuda")
    assert (found.start_engine, found.end_server) == ("pytorch", "triton")
    p50, throughput = found.p50_ms, found.inferences_per_s
    assert p50 is not None and throughput is not None
    assert [(r.via, r.first) for r in p50.routes] == [("ort-cuda", "engine")]
    # pytorch -> ort-cuda is the engine's part, ort-cuda -> triton-cuda the server's.
    assert (p50.total, p50.engine, p50.server) == (-1.75, -2.5, 0.75)
    assert p50.engine + p50.server == p50.total
    assert (throughput.total, throughput.engine, throughput.server) == (60.0, 100.0, -40.0)
    assert throughput.engine + throughput.server == throughput.total


def test_a_square_gives_each_part_as_the_mean_of_both_orders() -> None:
    suite = suite_of(ORT_CUDA, ORT_TRT, TRITON_CUDA, TRITON_TRT)
    results = [
        measured("ort-cuda", 8.0, 300.0),
        measured("ort-trt", 5.0, 400.0),  # the engine saves 3 ms in bakeoff's server ...
        measured("triton-cuda", 9.0, 280.0),
        measured("triton-trt", 7.0, 340.0),  # ... and 2 ms in triton's
    ]
    split = analysis.analyze(suite, results).engine_vs_server
    (square,) = [d for d in split.decompositions if d.start == "ort-cuda"]
    p50 = square.p50_ms
    assert p50 is not None
    assert {(r.via, r.first, r.engine) for r in p50.routes} == {
        ("ort-trt", "engine", -3.0),
        ("triton-cuda", "server", -2.0),
    }
    assert (p50.total, p50.engine, p50.server) == (-1.0, -2.5, 1.5)
    # ort-trt vs triton-cuda: the other diagonal, split through the same corners.
    assert {(d.start, d.end) for d in split.decompositions} == {
        ("ort-cuda", "triton-trt"),
        ("ort-trt", "triton-cuda"),
    }
    sentence = report.decomposition_sentence(square)
    assert (
        "engine \u22122.50 ms (\u221231%; \u22123.00 in bakeoff's server, \u22122.00 in "
        "triton's server) + server +1.50 ms (+19%)"
    ) in sentence
    assert "mean of both orders, via ort-trt (engine first) and triton-cuda (server first)" in (
        sentence
    )


def test_failed_parity_failed_and_external_backends_take_no_part() -> None:
    suite = suite_of(PYTORCH, ORT_CUDA, TRITON_CUDA, EXTERNAL)
    results = [
        measured("pytorch", 10.0, 200.0),
        cell("ort-cuda", POOL, p50=8.0, best=300.0, parity=[[0.8, 0.6], [0.0, 1.0]]),
        measured("ext", 8.0, 300.0),
    ]
    verdict = analysis.analyze(suite, results, [("triton-cuda", POOL, "crashed")])
    assert not next(r for r in verdict.rows if r.backend == "ort-cuda").ok
    # Only pytorch is left with an identity and a trustworthy row: nothing to compare.
    assert verdict.engine_vs_server == engine_server.EngineVsServer()


def test_pairs_are_found_within_a_pool_never_across_pools() -> None:
    suite = suite_of(PYTORCH, ORT_CUDA, pools=("small", "big"))
    results = [measured("pytorch", 10.0, 200.0, "small"), measured("ort-cuda", 8.0, 300.0, "big")]
    assert analysis.analyze(suite, results).engine_vs_server.pairs == []


def test_a_change_under_min_effect_is_within_noise() -> None:
    suite = suite_of(PYTORCH, ORT_CUDA)
    results = [measured("pytorch", 10.0, 200.0), measured("ort-cuda", 9.8, 300.0)]
    (pair,) = analysis.analyze(suite, results).engine_vs_server.pairs
    assert pair.p50_ms is not None and pair.inferences_per_s is not None
    assert pair.p50_ms.within_noise  # 2% < minEffect 5%
    assert not pair.inferences_per_s.within_noise
    assert "p50 \u22120.20 ms (\u22122%, within noise)" in report.pair_sentence(pair)


def test_a_verdict_written_before_the_split_still_loads() -> None:
    suite = suite_of(PYTORCH, ORT_CUDA)
    verdict = analysis.analyze(suite, [measured("pytorch", 10.0, 200.0)])
    document = json.loads(verdict.model_dump_json(by_alias=True))
    del document["engineVsServer"]
    assert analysis.Verdict.model_validate(document).engine_vs_server.pairs == []


def test_a_suite_without_pairs_has_no_engine_vs_server_section_or_plot(tmp_path: Path) -> None:
    # The quickstart: pytorch in bakeoff's server vs onnxruntime in triton's, both changed.
    suite = validation.load_suite(EXAMPLE)
    results = [measured("pytorch", 20.0, 100.0), measured("triton-onnx-cpu", 15.0, 80.0)]
    verdict = analysis.analyze(suite, results)
    paths = report.write_report(verdict, results, tmp_path)
    assert "engine-vs-server.png" not in {p.name for p in paths}
    assert "Engine vs server" not in (tmp_path / "report.md").read_text()
    assert "Engine vs server" not in (tmp_path / "report.html").read_text()
    assert "Engine vs server" not in report.render_table(verdict)


def test_the_report_shows_pairs_and_decompositions_in_words_a_table_and_a_plot(
    tmp_path: Path,
) -> None:
    suite = suite_of(PYTORCH, ORT_CUDA, TRITON_CUDA)
    results = [
        measured("pytorch", 10.0, 200.0),
        measured("ort-cuda", 8.0, 250.0),
        measured("triton-cuda", 9.0, 240.0),
    ]
    verdict = analysis.analyze(suite, results)
    paths = report.write_report(verdict, results, tmp_path)
    plot = tmp_path / "plots" / "engine-vs-server.png"
    assert plot in paths and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    markdown = (tmp_path / "report.md").read_text()
    assert "## Engine vs server" in markdown
    assert "![engine-vs-server](plots/engine-vs-server.png)" in markdown
    engine_sentence = (
        f"{POOL}: pytorch \u2192 onnxruntime-cuda (engine, in bakeoff's server, fp32, fp32 input; "
        "backends pytorch \u2192 ort-cuda): p50 \u22122.00 ms (\u221220%); "
        "throughput +50.0 img/s (+25%)"
    )
    assert f"- {engine_sentence}" in markdown
    assert (
        f"{POOL}: pytorch (pytorch in bakeoff's server) \u2192 triton-cuda (onnxruntime-cuda in "
        "triton's server), fp32, fp32 input: p50 \u22121.00 ms (\u221210%) = engine \u22122.00 ms "
        "(\u221220%) + server +1.00 ms (+10%); throughput +40.0 img/s (+20%) = engine +50.0 "
        "img/s (+25%) + server \u221210.0 img/s (\u22125%, within noise); split via ort-cuda "
        "(engine first)"
    ) in markdown

    header, rows = report.engine_server_rows(verdict)
    table = [dict(zip(header, row, strict=True)) for row in rows]
    assert [row["split"] for row in table] == ["engine only", "server only",
                                               "via ort-cuda (engine first)"]  # fmt: skip
    chain = table[2]
    assert (chain["engine"], chain["server"]) == (
        "pytorch \u2192 onnxruntime-cuda",
        "bakeoff \u2192 triton",
    )
    assert (chain["p50 change"], chain["p50: engine"], chain["p50: server"]) == (
        "\u22121.00 (\u221210%)",
        "\u22122.00",
        "+1.00",
    )
    assert table[0]["p50: server"] == "0"  # an engine pair keeps the server

    html = (tmp_path / "report.html").read_text()
    assert "<h2>Engine vs server</h2>" in html and "engine-vs-server" in html
    assert f"  {engine_sentence}" in report.render_table(verdict)
