"""`bakeoff_serve.workers`: the worker plan, the shared folder, metric rows summed across
processes, and the supervisor's start-up and crash-loop decisions (with stand-in targets
that exit on cue: the real server's workers are the protocol tier's)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bakeoff_serve import server_metrics, workers
from bakeoff_serve.app.settings import Settings

TIMINGS = server_metrics.ExecTimings(
    queue_ns=1_000, compute_input_ns=2_000, compute_infer_ns=3_000, compute_output_ns=4_000
)


def settings(**changes: object) -> Settings:
    base: dict[str, object] = {
        "model_name": "m",
        "builtin": "vit-tiny-clip",
        "http_port": 18000,
        "grpc_port": 18001,
    }
    return Settings.model_validate(base | changes)


def test_plan_is_workers_per_gpu_gpu_by_gpu() -> None:
    plan = workers.plan_workers("cuda", gpus=2, workers_per_device=2)
    assert [(slot.index, slot.gpu) for slot in plan] == [(0, 0), (1, 0), (2, 1), (3, 1)]
    assert plan[2].describe() == "worker 2 (cuda:1)"
    cpu = workers.plan_workers("cpu", gpus=1, workers_per_device=3)
    assert [(slot.index, slot.gpu) for slot in cpu] == [(0, None), (1, None), (2, None)]


def test_worker_count_follows_gpus_and_workers_per_device() -> None:
    assert settings().worker_count == 1
    assert settings(device="cpu", workers_per_device=2).worker_count == 2
    with pytest.raises(ValueError, match="workers_per_device"):
        settings(workers_per_device=0)


def test_group_is_ready_only_when_every_worker_is() -> None:
    group = workers.WorkerGroup.create(3)
    try:
        assert group.not_ready() == [0, 1, 2] and not group.all_ready()
        group.mark_ready(0)
        group.mark_ready(2)
        assert group.not_ready() == [1]
        group.mark_ready(1)
        assert group.all_ready()
        group.clear_ready(1)
        group.add_restart()
        assert group.counts() == server_metrics.WorkerCounts(configured=3, ready=2, restarts=1)
    finally:
        group.remove()
    assert not group.root.exists()


def record(metrics: server_metrics.ServerMetrics, batches: list[int]) -> None:
    for batch in batches:
        metrics.record_success(
            "clip", "1", batch_size=batch, request_duration_ns=10_000, timings=TIMINGS
        )


def counters(text: str) -> dict[str, float]:
    return {
        family.name: sum(sample.value for sample in family.samples)
        for family in text_string_to_metric_families(text)
    }


def test_shared_rows_sum_across_workers_and_survive_a_restart(tmp_path: Path) -> None:
    first = server_metrics.ServerMetrics(tmp_path, slot=0)
    second = server_metrics.ServerMetrics(tmp_path, slot=1)
    record(first, [1, 2])
    record(second, [4])
    second.record_failure("clip", "1", "BACKEND")
    # Either worker answers a scrape with the same totals.
    for scraper in (first, second):
        totals = counters(scraper.render())
        assert totals["nv_inference_count"] == 7
        assert totals["nv_inference_request_success"] == 3
        assert totals["nv_inference_exec_count"] == 3
        assert totals["nv_inference_request_failure"] == 1
        assert totals["nv_inference_queue_duration_us"] == 3
    # Worker 1 crashes; its replacement maps the same row and counts on from it.
    del second
    replacement = server_metrics.ServerMetrics(tmp_path, slot=1)
    replacement.register_model("clip", "1")
    assert counters(first.render())["nv_inference_count"] == 7
    record(replacement, [8])
    assert counters(first.render())["nv_inference_count"] == 15
    assert counters(replacement.render())["nv_inference_request_success"] == 4


def test_worker_metrics_only_for_several_workers(tmp_path: Path) -> None:
    single = server_metrics.ServerMetrics()
    single.register_model("clip", "1")
    assert "bakeoff_server" not in single.render()
    shared = server_metrics.ServerMetrics(tmp_path, slot=0)
    text = shared.render(workers=server_metrics.WorkerCounts(configured=2, ready=1, restarts=3))
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert families["bakeoff_server_worker_restarts"].type == "counter"
    by_state = {s.labels["state"]: s.value for s in families["bakeoff_server_workers"].samples}
    assert by_state == {"configured": 2, "ready": 1}
    assert sum(s.value for s in families["bakeoff_server_worker_restarts"].samples) == 3


def test_shared_row_file_is_one_int64_per_counter(tmp_path: Path) -> None:
    metrics = server_metrics.ServerMetrics(tmp_path, slot=3)
    record(metrics, [5])
    [path] = list(tmp_path.glob("*/*/3.i64"))
    row = np.fromfile(path, dtype=np.int64)
    assert row.sum() > 0 and path.stat().st_size == row.size * 8


# Stand-in worker targets: top-level, so a spawned process can import them.


def exit_at_once(settings_json: str, context: workers.WorkerContext) -> None:
    raise SystemExit(3)


def ready_then_crash(settings_json: str, context: workers.WorkerContext) -> None:
    context.group.mark_ready(context.slot.index)
    time.sleep(0.05)
    os._exit(7)


def test_worker_dying_before_ready_stops_the_server() -> None:
    slots = workers.plan_workers("cpu", 1, 2)
    supervisor = workers.Supervisor(
        settings(device="cpu", workers_per_device=2), slots, exit_at_once
    )
    root = supervisor._group.root
    assert supervisor.run() == 1
    assert not root.exists()  # the group folder goes with the server


def test_crash_loop_gives_up_after_the_restart_budget(caplog: pytest.LogCaptureFixture) -> None:
    slots = workers.plan_workers("cpu", 1, 1)
    supervisor = workers.Supervisor(
        settings(device="cpu"), slots, ready_then_crash, first_restart_delay_s=0.001
    )
    started = time.monotonic()
    with caplog.at_level("INFO", logger="bakeoff_serve.workers"):
        assert supervisor.run() == 1
    assert time.monotonic() - started < 60
    messages = [record.getMessage() for record in caplog.records]
    restarts = [m for m in messages if "restarting it in" in m]
    assert len(restarts) == workers.MAX_RESTARTS
    assert "exited with code 7" in restarts[0]
    assert "stopping the server" in messages[-1] or any(
        "stopping the server" in m for m in messages
    )
