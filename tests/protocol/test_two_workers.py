"""Bakeoff's server as two worker processes on the CPU, behind one port (SO_REUSEPORT).

The official tritonclient sends concurrent requests over many connections, HTTP and gRPC:
every answer equals the model run in this process, both workers serve, and the Prometheus
counters any worker reports add up to what the clients counted. A worker killed with
SIGKILL is reported, restarted warm, and its counts are kept (counters never go back).
"""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from endpoints import LoopbackServer
from prometheus_client.parser import text_string_to_metric_families

from bakeoff_serve import launch, model, process

pytestmark = pytest.mark.protocol

BUILTIN = "vit-tiny-clip"
MODEL = "clip-workers"
SIZE = model.BUILTIN_MODELS[BUILTIN].image_size
PIXELS = np.random.default_rng(7).random((4, 3, SIZE, SIZE), dtype=np.float32)


@dataclass(frozen=True)
class TwoWorkers(LoopbackServer):
    server: process.RunningServer

    def group_folder(self) -> Path:
        found = re.search(r"group folder (\S+)\)", self.server.log_path.read_text())
        assert found, "the supervisor names its group folder in the log"
        return Path(found.group(1))

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.server.process.pid}/task/{self.server.process.pid}/children")
        pids = [int(pid) for pid in children.read_text().split()]
        # multiprocessing's resource tracker is a child too; workers run the server.
        return [pid for pid in pids if b"resource_tracker" not in _cmdline(pid)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoWorkers]:
    http, grpc = process.free_port(), process.free_port()
    command = launch.pytorch_server_command(
        MODEL, BUILTIN, "cpu", "fp32", http, grpc, 8, [1, 4], 0,
        options=["--workers-per-device=2"],
    )  # fmt: skip
    log = tmp_path_factory.mktemp("two-workers") / "server.log"
    with process.running_server(command, log, ready_timeout_s=180) as server:
        yield TwoWorkers(MODEL, BUILTIN, 0, 8, http, grpc, server)


@pytest.fixture(scope="module")
def reference() -> np.ndarray[Any, Any]:
    built, _ = model.build_model(BUILTIN, seed=0)
    with torch.inference_mode():
        out: np.ndarray[Any, Any] = built(torch.from_numpy(PIXELS)).numpy()
    return out


def scrape(server: TwoWorkers) -> dict[str, float]:
    """Each family summed over its samples; a new connection, so any worker may answer."""
    request = urllib.request.Request(
        f"http://{server.http_url}/metrics", headers={"Connection": "close"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    return {
        family.name: sum(sample.value for sample in family.samples)
        for family in text_string_to_metric_families(text)
        if family.name != "bakeoff_server_workers"
    } | {
        f"workers_{sample.labels['state']}": sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "bakeoff_server_workers"
        for sample in family.samples
    }


def ready_status(server: TwoWorkers) -> int:
    try:
        with urllib.request.urlopen(f"http://{server.http_url}/v2/health/ready", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def infer(server: TwoWorkers, rows: int, protocol: Any) -> np.ndarray[Any, Any]:
    """One request through tritonclient's `protocol` module (http or grpc), on a client of
    its own: its own connection, which the kernel hands to either worker."""
    url = server.http_url if protocol is httpclient else server.grpc_url
    client = protocol.InferenceServerClient(url)
    try:
        tensor = protocol.InferInput(model.INPUT_NAME, [rows, 3, SIZE, SIZE], "FP32")
        tensor.set_data_from_numpy(PIXELS[:rows])
        result: np.ndarray[Any, Any] = client.infer(MODEL, [tensor]).as_numpy(model.OUTPUT_NAME)
        return result
    finally:
        client.close()


def send_concurrently(server: TwoWorkers, count: int) -> int:
    """`count` requests (HTTP and gRPC, 1-4 rows) from 8 threads; checks every answer."""
    rows = [1 + index % 4 for index in range(count)]

    def one(index: int) -> tuple[int, np.ndarray[Any, Any]]:
        protocol = httpclient if index % 3 else grpcclient
        return rows[index], infer(server, rows[index], protocol)

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(one, range(count)))
    built, _ = model.build_model(BUILTIN, seed=0)
    with torch.inference_mode():
        expected = built(torch.from_numpy(PIXELS)).numpy()
    for count_rows, answer in answers:
        assert answer.shape == (count_rows, 512)
        assert np.abs(answer - expected[:count_rows]).max() < 1e-5
    return sum(rows)


def test_concurrent_requests_answer_like_the_reference_and_both_workers_serve(
    two_workers: TwoWorkers,
) -> None:
    before = scrape(two_workers)
    images = send_concurrently(two_workers, 48)
    after = scrape(two_workers)
    assert after["nv_inference_count"] - before["nv_inference_count"] == images
    assert after["nv_inference_request_success"] - before["nv_inference_request_success"] == 48
    assert after["nv_inference_request_failure"] == before["nv_inference_request_failure"]
    # Each worker's own row: both took connections (48 of them, spread by the kernel).
    rows = [
        np.fromfile(path, dtype=np.int64)
        for path in sorted(two_workers.group_folder().glob("metrics/*/*/*.i64"))
    ]
    assert len(rows) == 2 and all(row.sum() > 0 for row in rows)


def test_every_worker_reports_the_same_totals(two_workers: TwoWorkers) -> None:
    send_concurrently(two_workers, 8)
    scrapes = [scrape(two_workers) for _ in range(12)]  # new connections: both workers answer
    assert all(s == scrapes[0] for s in scrapes)
    assert scrapes[0]["workers_configured"] == 2 and scrapes[0]["workers_ready"] == 2


def test_model_config_and_readiness_describe_the_whole_server(two_workers: TwoWorkers) -> None:
    client = grpcclient.InferenceServerClient(two_workers.grpc_url)
    try:
        assert client.is_server_ready() and client.is_model_ready(MODEL)
    finally:
        client.close()
    assert ready_status(two_workers) == 200


def test_killed_worker_is_restarted_warm_and_its_counts_are_kept(
    two_workers: TwoWorkers,
) -> None:
    send_concurrently(two_workers, 8)
    before = scrape(two_workers)
    victim, survivor = two_workers.worker_pids()
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while victim in two_workers.worker_pids() or len(two_workers.worker_pids()) < 2:
        assert time.monotonic() < deadline, "no replacement worker started"
        time.sleep(0.05)
    assert ready_status(two_workers) == 503  # the replacement is still loading
    while ready_status(two_workers) != 200:
        assert time.monotonic() < deadline, "the replacement never got ready"
        time.sleep(0.1)
    assert survivor in two_workers.worker_pids()
    after = scrape(two_workers)
    assert after["bakeoff_server_worker_restarts"] == before["bakeoff_server_worker_restarts"] + 1
    # The victim's requests still count: nothing went back.
    assert after["nv_inference_count"] == before["nv_inference_count"]
    images = send_concurrently(two_workers, 24)
    assert scrape(two_workers)["nv_inference_count"] == before["nv_inference_count"] + images
    log = two_workers.server.log_path.read_text()
    assert f"(pid {victim}) was killed by SIGKILL; restarting it" in log
    assert "it binds once warm" in log
