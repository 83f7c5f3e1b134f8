"""The local tier: `bakeoff run SUITE --local` as a user runs it, servers and all."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import yaml

pytestmark = pytest.mark.local

SUITES = Path(__file__).parent / "suites"
BAKEOFF = [sys.executable, "-m", "bakeoff.cli"]


# Every run a test starts carries this in its environment, which the servers it starts
# inherit: leftovers are found by it, not confused with other work on the machine.
RUN_MARKER = "BAKEOFF_TEST_RUN"


def marked_env(cwd: Path) -> dict[str, str]:
    return {**os.environ, RUN_MARKER: str(cwd)}


def run_bakeoff(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BAKEOFF, *args], cwd=cwd, capture_output=True, text=True, timeout=600, check=False,
        env=marked_env(cwd),
    )  # fmt: skip


def servers_left(cwd: Path) -> list[psutil.Process]:
    """Servers still running that a run started in `cwd` launched (`python -m bakeoff_serve`,
    tritonserver and its stubs)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        argv = proc.info["cmdline"] or []
        program = Path(argv[0]).name if argv else ""
        pairs = itertools.pairwise(argv)
        started_module = any(a == "-m" and b == "bakeoff_serve" for a, b in pairs)
        if not (started_module or program in ("tritonserver", "triton_python_backend_stub")):
            continue
        try:
            if proc.environ().get(RUN_MARKER) == str(cwd):
                found.append(proc)
        except psutil.Error:
            continue  # gone meanwhile, or not ours to read
    return found


def test_local_run_compares_pytorch_and_triton_and_writes_the_report(tmp_path: Path) -> None:
    done = run_bakeoff("run", str(SUITES / "tiny.yaml"), "--local", "--out", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    suite_dir = tmp_path / "out" / "tiny"
    # the verdict table and where the report is
    assert "Winners (95% intervals" in done.stdout
    assert "Recommendations:" in done.stdout
    assert "report.md" in done.stdout
    # progress was shown while it worked
    assert "[1/2] pytorch on local (cpu): ready and warm after" in done.stderr
    assert "[2/2] triton-onnx-cpu on local (cpu)" in done.stderr
    cells = {p.stem: json.loads(p.read_text()) for p in (suite_dir / "cells").glob("*.json")}
    assert set(cells) == {"pytorch-local", "triton-onnx-cpu-local"}
    pytorch, triton = cells["pytorch-local"], cells["triton-onnx-cpu-local"]
    assert pytorch["server"]["name"] == "bakeoff-pytorch"
    assert triton["server"]["name"] == "triton"
    assert "onnxruntime" in triton["server"]["runtime"].lower()
    for result in (pytorch, triton):
        assert result["single"]["requests"] == 40
        assert result["single"]["latency"]["count"] == 40
        assert "p99" in result["single"]["latency"]["lowSamplePercentiles"]
        assert result["single"]["server"]["requests"] == 40  # warm-up is outside the window
        assert [s["batchSize"] for s in result["batchSweep"]] == [1, 4, 8]
        assert result["batchSweep"][2]["server"]["inferences"] == 80
        assert result["memoryBytes"] > 0
        assert result["timeToReadyS"] > 0
    summary = json.loads((suite_dir / "summary.json").read_text())
    parity = summary["parity"]
    assert len(parity) == 1 and parity[0]["passed"] is True
    assert parity[0]["minCosine"] >= 0.999
    # Every category is decided: a winner, or a tie the evidence cannot separate (on a busy
    # machine the two servers' throughput can fall within each other's intervals).
    winners, ties = set(summary["winners"]), set(summary["ties"])
    assert winners.isdisjoint(ties), (winners, ties)
    assert winners | ties == {"latency", "throughput", "cost", "memory"}, summary
    assert (suite_dir / "report.md").read_text().startswith("# Bake-off report: tiny")
    assert "data:image/png;base64," in (suite_dir / "report.html").read_text()
    assert {p.name for p in (suite_dir / "plots").iterdir()} == {
        "latency-distribution.png",
        "latency-percentiles.png",
        "time-breakdown.png",
        "cost-vs-p99.png",
        "batch-sweep.png",
    }
    assert servers_left(tmp_path) == []


def test_a_cell_that_cannot_start_fails_with_its_reason_and_the_other_completes(
    tmp_path: Path,
) -> None:
    done = run_bakeoff(
        "run", str(SUITES / "one-cell-fails.yaml"), "--local", "--out", "out", cwd=tmp_path
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert "fp16 on cpu is not supported" in done.stderr
    outcomes = json.loads((tmp_path / "out" / "one-cell-fails" / "outcomes.json").read_text())
    phases = {c["backend"]: c["phase"] for c in outcomes["cells"]}
    assert phases == {"pytorch": "Succeeded", "pytorch-fp16": "Failed"}
    assert "failed: " in done.stdout  # the verdict table shows the failed cell


def test_ctrl_c_stops_every_server_and_keeps_finished_results(tmp_path: Path) -> None:
    # Long enough a Triton measurement (seconds, not a fraction of one) that the interrupt
    # surely lands inside it, however fast the machine.
    suite = yaml.safe_load((SUITES / "tiny.yaml").read_text())
    suite["spec"]["scenarios"]["single"] = {"requests": 3000, "warmup": 5}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(suite))
    runner = subprocess.Popen(
        [*BAKEOFF, "run", "tiny.yaml", "--local", "--out", "out"],
        cwd=tmp_path,
        env=marked_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # The runner's progress says when the second backend (Triton) is being measured; read it
    # as it comes (a full pipe would also stall the runner).
    lines: list[str] = []
    measuring = threading.Event()

    def read_progress() -> None:
        assert runner.stderr is not None
        for line in runner.stderr:
            lines.append(line)
            if "[2/2]" in line and "cold start" in line:
                measuring.set()

    reader = threading.Thread(target=read_progress, daemon=True)
    reader.start()
    assert measuring.wait(300), "".join(lines)[-3000:]
    assert runner.poll() is None, "the run ended before it could be interrupted"
    os.kill(runner.pid, signal.SIGINT)
    runner.wait(timeout=120)
    reader.join(timeout=10)
    err = "".join(lines)
    assert runner.returncode == 130, err[-3000:]
    assert "interrupted: servers stopped" in err
    assert (tmp_path / "out" / "tiny" / "cells" / "pytorch-local.json").exists()
    deadline = time.monotonic() + 15
    while servers_left(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert servers_left(tmp_path) == []


def test_run_without_local_says_how_to_run_on_a_cluster(tmp_path: Path) -> None:
    done = run_bakeoff("run", str(SUITES / "tiny.yaml"), cwd=tmp_path)
    assert done.returncode == 2
    assert "kubectl apply -f" in done.stderr
    assert "Traceback" not in done.stderr


def test_uint8_and_jpeg_pytorch_with_dynamic_batching_agree_with_fp32_triton(
    tmp_path: Path,
) -> None:
    """The same pixels reach all: UINT8 to one PyTorch server, JPEG files to another, pixel /
    255 as FP32 to Triton."""
    suite = yaml.safe_load((SUITES / "tiny.yaml").read_text())
    suite["spec"]["backends"][0].update(
        {"inputFormat": "uint8", "dynamicBatching": {"maxQueueDelayMicroseconds": 200}}
    )
    suite["spec"]["backends"].append(
        {"name": "pytorch-jpeg", "kind": "pytorch", "maxBatchSize": 8, "inputFormat": "jpeg"}
    )
    suite["spec"]["scenarios"]["concurrencySweep"] = {"levels": [4], "requests": 40}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(suite))
    done = run_bakeoff("run", "tiny.yaml", "--local", "--out", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    suite_dir = tmp_path / "out" / "tiny"
    pytorch = json.loads((suite_dir / "cells" / "pytorch-local.json").read_text())
    assert "uint8-input" in pytorch["server"]["runtime"]
    assert "dynamic-batching 200us" in pytorch["server"]["runtime"]
    (point,) = pytorch["concurrencySweep"]
    assert point["requests"] == 40 and point["failed"] == 0
    # Four requests in flight, a 200 us queue delay: some ran together.
    assert point["server"]["executions"] < point["server"]["requests"]
    jpeg = json.loads((suite_dir / "cells" / "pytorch-jpeg-local.json").read_text())
    assert "jpeg-input" in jpeg["server"]["runtime"]
    summary = json.loads((suite_dir / "summary.json").read_text())
    assert {p["backend"] for p in summary["parity"]} == {"pytorch-jpeg", "triton-onnx-cpu"}
    assert all(p["passed"] and p["minCosine"] >= 0.9999 for p in summary["parity"])


def test_onnxruntime_splits_the_engine_from_the_server_against_pytorch_and_triton(
    tmp_path: Path,
) -> None:
    """The same ONNX Runtime engine in Bakeoff's server and in Triton, and PyTorch in
    Bakeoff's server: the verdict says which share of the difference is whose."""
    suite = yaml.safe_load((SUITES / "tiny.yaml").read_text())
    suite["spec"]["backends"].append(
        {"name": "ort-cpu", "kind": "onnxruntime", "executionProvider": "cpu", "maxBatchSize": 8}
    )
    suite["spec"]["backends"].append(
        {"name": "ort-trt", "kind": "onnxruntime", "executionProvider": "tensorrt",
         "maxBatchSize": 8}
    )  # fmt: skip
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(suite))
    done = run_bakeoff("run", "tiny.yaml", "--local", "--out", "out", cwd=tmp_path)
    suite_dir = tmp_path / "out" / "tiny"
    ort = json.loads((suite_dir / "cells" / "ort-cpu-local.json").read_text())
    assert ort["server"]["name"] == "bakeoff-onnxruntime"
    assert ort["server"]["runtime"].startswith("onnxruntime ")
    summary = json.loads((suite_dir / "summary.json").read_text())
    assert {p["backend"]: p["passed"] for p in summary["parity"]}["ort-cpu"] is True
    # A CPU pool runs every ONNX Runtime backend on the CPU provider: measured, not refused.
    assert (suite_dir / "cells" / "ort-trt-local.json").is_file()
    assert done.returncode == 0, done.stderr[-3000:]
    split = summary["engineVsServer"]
    # (`before` is whichever the suite lists first)
    pairs = {frozenset((p["before"], p["after"])): p["factor"] for p in split["pairs"]}
    assert pairs[frozenset(("pytorch", "ort-cpu"))] == "engine"  # PyTorch -> ORT, our server
    assert pairs[frozenset(("ort-cpu", "triton-onnx-cpu"))] == "server"  # ours -> Triton
    chains = [(d["start"], d["end"]) for d in split["decompositions"]]
    assert ("pytorch", "triton-onnx-cpu") in chains
    report = (suite_dir / "report.md").read_text()
    assert "## Engine vs server" in report
    assert (suite_dir / "plots" / "engine-vs-server.png").is_file()
    assert servers_left(tmp_path) == []


def test_three_clients_share_every_scenario_and_merge_into_one_result(tmp_path: Path) -> None:
    done = run_bakeoff(
        "run", str(SUITES / "three-clients.yaml"), "--local", "--out", "out", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "out/three-clients/cells/pytorch-local.json").read_text())
    assert "measured by 3 clients, merged" in result["notes"]
    single = result["single"]
    assert [c["index"] for c in single["clients"]] == [0]  # concurrency 1: client 0 alone
    assert single["requests"] == single["server"]["requests"] == 20
    low, high = result["concurrencySweep"]
    assert [c["index"] for c in low["clients"]] == [0]
    assert [(c["index"], c["concurrency"]) for c in high["clients"]] == [(0, 2), (1, 2), (2, 2)]
    assert sum(c["requests"] for c in high["clients"]) == high["requests"] == 60
    # Client 0's scrapes bound every client's measured requests, and nothing else.
    assert high["server"]["requests"] == 60
    assert high["latency"]["count"] == 60
    [rate] = result["rate"]
    assert len(rate["clients"]) == 3 and rate["workers"] == 3
    assert rate["openLoop"]["requestedRequestsPerS"] == 30
    assert rate["server"]["requests"] == rate["requests"] == rate["latency"]["count"]
    assert servers_left(tmp_path) == []
