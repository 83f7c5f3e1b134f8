"""`run_bench` end to end against an in-test OIP server on loopback.

The server (`fake_oip`) speaks the binary tensor extension as Triton does and counts every
request in Triton-named metrics, so the tests can check exactly what the load generator
sent and that the server-side window covers the measured requests only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import fake_oip
import numpy as np
import pytest
from fake_oip import GPU_USED, IMAGE_SHAPE, MAX_BATCH, MODEL, FakeOipServer

from bakeoff_bench import __main__ as cli
from bakeoff_bench import client as oip
from bakeoff_bench import payloads, runner
from bakeoff_bench.config import BenchConfig
from bakeoff_bench.results import CellResult, RequestError, ServerTimes


@pytest.fixture
async def server() -> AsyncIterator[FakeOipServer]:
    async with fake_oip.serving(FakeOipServer()) as fake:
        yield fake


def make_config(url: str, **overrides: Any) -> BenchConfig:
    data: dict[str, Any] = {
        "suite": "s",
        "backend": "fake",
        "pool": "loopback",
        "target": {"httpUrl": url, "metricsUrl": f"{url}/metrics", "modelName": MODEL},
        "single": {"requests": 30, "warmup": 5},
        "batchSweep": {"batchSizes": [1, 4], "requests": 12, "warmup": 3, "concurrency": 3},
        "seed": 42,
        "parityBatch": 3,
        "requestTimeoutS": 10,
        "readyTimeoutS": 5,
    }
    data.update(overrides)
    return BenchConfig.model_validate(data)


EXPECTED_SERVER_TIMES_MS = {
    "request_ms": 1.0,
    "queue_ms": 0.1,
    "compute_input_ms": 0.05,
    "compute_infer_ms": 0.8,
    "compute_output_ms": 0.05,
}


async def test_end_to_end_counts_exactly_and_excludes_warmup(server: FakeOipServer) -> None:
    messages: list[str] = []
    result = await runner.run_bench(make_config(server.url), messages.append)

    single = result.single
    assert single is not None
    assert (single.requests, single.failed, single.latency.count) == (30, 0, 30)
    # The server served 35 single requests; only the 30 measured ones are in the window.
    assert single.server == ServerTimes(
        requests=30, inferences=30, executions=30, **EXPECTED_SERVER_TIMES_MS
    )
    assert [(s.batch_size, s.concurrency, s.requests) for s in result.batch_sweep] == [
        (1, 3, 12),
        (4, 3, 12),
    ]
    batch4 = result.batch_sweep[1]
    assert batch4.server == ServerTimes(
        requests=12, inferences=48, executions=12, **EXPECTED_SERVER_TIMES_MS
    )
    assert batch4.inferences_per_s == pytest.approx(batch4.requests_per_s * 4)
    assert batch4.requests_per_s == pytest.approx(12 / batch4.duration_s)
    # cold start: one request per batch size (1, 4); parity: one request of 3 images;
    # then 35 single, 2 x (3 warm-up + 12 measured).
    assert server.infer_calls == 2 + 1 + 35 + 2 * 15
    assert server.success == server.infer_calls


async def test_every_batch_size_gets_one_identical_seeded_body(server: FakeOipServer) -> None:
    await runner.run_bench(make_config(server.url), lambda _: None)
    assert sorted(server.bodies) == [1, 3, 4]  # 3 is the parity batch
    assert all(len(digests) == 1 for digests in server.bodies.values())
    images = payloads.seeded_images(42, [4, *IMAGE_SHAPE])
    body, _ = payloads.encode_binary_infer_request("images", images, "embedding")
    assert server.bodies[4] == {hashlib.sha256(body).hexdigest()}


async def test_parity_outputs_come_from_the_offset_seed(server: FakeOipServer) -> None:
    result = await runner.run_bench(make_config(server.url), lambda _: None)
    images = payloads.seeded_images(42 + payloads.PARITY_SEED_OFFSET, [3, *IMAGE_SHAPE])
    flat = images.reshape(3, -1)
    expected = np.stack([flat.mean(axis=1), flat[:, 0]], axis=1).astype(np.float32)
    assert result.parity_outputs is not None
    assert np.array_equal(np.array(result.parity_outputs, dtype=np.float32), expected)


async def test_parity_larger_than_max_batch_is_sent_in_chunks(server: FakeOipServer) -> None:
    config = make_config(server.url, parityBatch=MAX_BATCH + 2, single=None, batchSweep=None)
    result = await runner.run_bench(config, lambda _: None)
    assert result.parity_outputs is not None
    assert len(result.parity_outputs) == MAX_BATCH + 2
    assert sorted(server.bodies) == [2, MAX_BATCH]


async def test_result_records_server_memory_and_environment(server: FakeOipServer) -> None:
    result = await runner.run_bench(make_config(server.url), lambda _: None)
    assert result.server.name == "triton"
    assert result.server.version == "2.51.0"
    assert result.server.runtime == "onnxruntime 1.20 cpu fp32"
    assert result.server.model_provenance == "sha256:abc"
    assert result.server.model_platform == "python"
    assert (result.memory_bytes, result.memory_kind) == (sum(GPU_USED), "gpu")
    assert result.environment.client_cores >= 1
    assert "numpy" in result.environment.packages
    assert result.finished_at >= result.started_at
    assert result.time_to_ready_s is None  # the caller, who started the server, sets it
    assert CellResult.model_validate_json(result.model_dump_json(by_alias=True)) == result


async def test_p99_with_fewer_than_100_samples_is_flagged(server: FakeOipServer) -> None:
    result = await runner.run_bench(make_config(server.url), lambda _: None)
    assert result.single is not None
    assert result.single.latency.low_sample_percentiles == ["p99"]
    assert any("p99 is based on 30 samples" in note for note in result.notes)
    assert [f.code.value for f in result.single.flags if f.code.value == "low-samples"] == [
        "low-samples"
    ]
    enough = make_config(server.url, single={"requests": 100, "warmup": 0}, batchSweep=None)
    result = await runner.run_bench(enough, lambda _: None)
    assert result.single is not None
    assert result.single.latency.low_sample_percentiles == []
    assert not any("p99 is based on" in note for note in result.notes)
    assert "low-samples" not in {f.code.value for f in result.single.flags}


async def test_failed_requests_are_recorded_as_data(server: FakeOipServer) -> None:
    server.fail_every = 3  # infer calls 3, 6, ..., 30 fail
    config = make_config(
        server.url, single={"requests": 30, "warmup": 0}, batchSweep=None, parityBatch=0
    )
    result = await runner.run_bench(config, lambda _: None)
    single = result.single
    assert single is not None
    assert (single.requests, single.failed, single.latency.count) == (20, 10, 20)
    assert single.errors == [
        RequestError(error_type="HTTP 400", message="simulated failure", count=10)
    ]
    assert single.server is not None
    assert single.server.requests == 20  # the server counts successes only
    assert any("10 of 30 requests failed" in note for note in result.notes)


async def test_progress_reports_each_scenario(server: FakeOipServer) -> None:
    messages: list[str] = []
    await runner.run_bench(make_config(server.url), messages.append)
    summaries = [m for m in messages if " ok, " in m]
    assert [s.split(":")[0] for s in summaries] == [
        "single b=1 c=1",
        "batch b=1 c=3",
        "batch b=4 c=3",
    ]
    assert "server queue 0.10 ms" in summaries[0]


async def test_without_metrics_url_there_are_no_server_times(server: FakeOipServer) -> None:
    target = {"httpUrl": server.url, "modelName": MODEL}
    result = await runner.run_bench(make_config(server.url, target=target), lambda _: None)
    assert result.single is not None and result.single.server is None
    assert result.memory_bytes is None and result.memory_kind is None
    assert not any("server-side" in note or "metrics" in note for note in result.notes)


async def test_batch_size_above_max_batch_is_rejected_before_sending(
    server: FakeOipServer,
) -> None:
    config = make_config(
        server.url, batchSweep={"batchSizes": [4, 16, 32], "requests": 5, "warmup": 0}
    )
    with pytest.raises(runner.BenchSetupError, match=r"\[16, 32\].*max_batch_size 8"):
        await runner.run_bench(config, lambda _: None)
    assert server.infer_calls == 0


async def test_backend_that_never_gets_ready_fails_clearly(server: FakeOipServer) -> None:
    server.ready = False
    config = make_config(server.url, readyTimeoutS=0.6)
    with pytest.raises(oip.BackendNotReadyError, match=r"not ready after 0\.6 s.*HTTP 503"):
        await runner.run_bench(config, lambda _: None)


# The CLI: run in a worker thread, because main() starts its own event loop with asyncio.run
# while the fake server keeps answering on the test's loop.


def _write(tmp_path: Path, name: str, data: object) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data) if name.endswith(".json") else str(data))
    return path


async def test_cli_writes_the_result(
    server: FakeOipServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In a Job, the operator passes the backend's time to ready (it saw the pod's).
    monkeypatch.setenv("BAKEOFF_TIME_TO_READY_S", "12.5")
    config = make_config(server.url, batchSweep=None).model_dump(by_alias=True, mode="json")
    config_path = _write(tmp_path, "cfg.json", config)
    out = tmp_path / "out" / "result.json"
    code = await asyncio.to_thread(cli.main, ["--config", str(config_path), "--out", str(out)])
    assert code == 0
    result = CellResult.model_validate_json(out.read_text())
    assert result.single is not None and result.single.requests == 30
    assert result.time_to_ready_s == 12.5
    assert "singleScenario" not in out.read_text() and '"parityOutputs"' in out.read_text()


def test_cli_lists_every_field_error_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    yaml_text = (
        "suite: s\nbackend: b\npool: p\n"
        "target: {httpUrl: 'http://x'}\n"
        "batchSweep: {batchSizes: [4, 4], requests: 0}\n"
    )
    path = _write(tmp_path, "cfg.yaml", yaml_text)
    assert cli.main(["--config", str(path), "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "target.modelName: Field required" in err
    assert "batchSweep.requests: Input should be greater than 0" in err
    assert "Traceback" not in err
    assert not (tmp_path / "r.json").exists()


def test_cli_exits_1_when_the_backend_is_not_ready(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as sock:  # a port that nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = make_config(f"http://127.0.0.1:{port}", readyTimeoutS=0.6)
    path = _write(tmp_path, "cfg.json", config.model_dump(by_alias=True, mode="json"))
    assert cli.main(["--config", str(path), "--out", str(tmp_path / "r.json")]) == 1
    err = capsys.readouterr().err
    assert f"http://127.0.0.1:{port}/v2/health/ready was not ready after 0.6 s" in err
    assert "Traceback" not in err


async def test_unknown_model_is_a_bench_error_quoting_the_server(server: FakeOipServer) -> None:
    config = make_config(server.url, target={"httpUrl": server.url, "modelName": "absent"})
    with pytest.raises(runner.BenchError, match=r"GET .*/v2/models/absent: HTTP 404"):
        await runner.run_bench(config, lambda _: None)


async def test_a_backend_that_dies_mid_run_stops_the_run_within_seconds() -> None:
    """The circuit breaker: connection failures in a row end the run with the scenario named,
    instead of timing a dead port through every scenario left."""
    stack = contextlib.ExitStack()
    fake = stack.enter_context(fake_oip.serving_in_thread(FakeOipServer(record_bodies=False)))
    config = make_config(fake.url, single={"requests": 1_000_000, "warmup": 1})
    run = asyncio.create_task(runner.run_bench(config, lambda _: None))
    while fake.success < 200:  # measuring by now
        await asyncio.sleep(0.05)
    await asyncio.to_thread(stack.close)  # the server goes away
    died = time.monotonic()
    with pytest.raises(oip.BackendGoneError) as caught:
        await asyncio.wait_for(run, timeout=60)
    assert time.monotonic() - died < 15
    message = str(caught.value)
    assert message.startswith("the backend stopped answering during single")
    assert "connection failures in a row" in message
    assert "remaining scenarios were skipped" in message
    assert fake.batch_calls.get(4, 0) == 1  # its cold-start request: the sweep never ran


async def test_the_breaker_trips_on_failures_in_a_row_only(server: FakeOipServer) -> None:
    client = oip.OipClient(oip.make_session(1, 5), server.url, MODEL)
    payload = payloads.build_payload(
        "images", "embedding", payloads.seeded_images(1, [1, *IMAGE_SHAPE])
    )
    try:
        for _ in range(3):  # a blip: failures, then an answer, then failures again
            for _ in range(oip.BREAKER_FAILURES - 1):
                client._connection_failed(ConnectionRefusedError("refused"))
            assert (await client.infer(payload))[1] is True
        client.raise_if_gone("single")
        assert client.gone is None
        for _ in range(oip.BREAKER_FAILURES):
            client._connection_failed(ConnectionRefusedError("refused"))
        with pytest.raises(oip.BackendGoneError, match="20 connection failures in a row"):
            client.raise_if_gone("single")
    finally:
        await client.session.close()
