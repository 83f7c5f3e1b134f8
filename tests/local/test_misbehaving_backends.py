"""Every flag of docs/architecture.md §2 fires on a backend built to earn it, through
`bakeoff run --local`.

The backends are purpose-built misbehaving OIP servers (tests/unit/fake_oip.py), measured as
`kind: external` backends: a lazy engine build on the first request of each batch size, a
fixed queue delay, outputs that differ from the reference, latency that never settles, and
a server too slow for the requested rate. A well-behaved server is the parity reference.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
import yaml

from bakeoff import cli

sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
from fake_oip import MODEL, FakeOipServer, serving_in_thread

pytestmark = pytest.mark.local

# Each well-behaved request takes 20 ms: long beside the few milliseconds a busy machine adds
# to a request here and there, so its windows agree under load too.
STEADY_S = 0.02
# Where the drifting server starts: 20% slower every window from there.
DRIFT_START_S = 0.005

SERVERS = {
    "well": FakeOipServer(record_bodies=False, delay_s=lambda _c, _b: STEADY_S),
    "lazy-build": FakeOipServer(record_bodies=False, first_request_delay_s={1: 0.6, 4: 0.6}),
    "batching-delay": FakeOipServer(record_bodies=False, queue_delay_s=0.02),
    "wrong-outputs": FakeOipServer(
        record_bodies=False, output_transform=lambda e: (-e).astype(np.float32)
    ),
    # 20% slower every 30 requests (a window): no three windows ever agree.
    "drifting": FakeOipServer(
        record_bodies=False, delay_s=lambda call, _b: min(0.05, DRIFT_START_S * 1.2 ** (call / 30))
    ),
    # One request at a time, 40 ms each: 25 requests/s at most, asked for 60 (a rate every
    # other server sustains with room to spare, even with both cores busy elsewhere).
    "too-slow": FakeOipServer(record_bodies=False, max_concurrent=1, delay_s=lambda _c, _b: 0.04),
}


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, FakeOipServer]]:
    with ExitStack() as stack:
        for server in SERVERS.values():
            stack.enter_context(serving_in_thread(server))
        yield SERVERS


def suite_document(servers: dict[str, FakeOipServer]) -> dict[str, object]:
    return {
        "apiVersion": "bakeoff.dev/v1alpha1",
        "kind": "BenchmarkSuite",
        "metadata": {"name": "misbehaving"},
        "spec": {
            "model": {"name": MODEL, "source": {"builtin": "vit-tiny-clip"}},
            "backends": [
                {"name": name, "kind": "external", "maxBatchSize": 8,
                 "endpoint": {"httpUrl": s.url, "metricsUrl": f"{s.url}/metrics"}}
                for name, s in servers.items()
            ],
            "nodePools": [{"name": "local", "gpus": 0, "costPerHour": 1.0}],
            "scenarios": {
                "single": {"requests": 60, "warmup": 3},
                "batchSweep": {"batchSizes": [1, 4], "requests": 20, "warmup": 2},
                "steadyState": {"windowRequests": 30, "maxWindows": 6},
                "rate": {"requestsPerSecond": [60], "arrival": "constant",
                         "durationSeconds": 2, "maxInFlight": 64},
            },
            "parity": {"reference": "well"},
        },
    }  # fmt: skip


@pytest.fixture(scope="module")
def run(
    servers: dict[str, FakeOipServer], tmp_path_factory: pytest.TempPathFactory
) -> tuple[int, Path]:
    work = tmp_path_factory.mktemp("misbehaving")
    suite_file = work / "suite.yaml"
    suite_file.write_text(yaml.safe_dump(suite_document(servers)))
    code = cli.main(["run", str(suite_file), "--local", "--out", str(work / "out")])
    return code, work / "out" / "misbehaving"


def scenario_codes(suite_dir: Path, backend: str) -> list[set[str]]:
    """The flags of each scenario of the backend's cell, the cell's own flags first."""
    result = json.loads((suite_dir / "cells" / f"{backend}-local.json").read_text())
    found = [{f["code"] for f in result["flags"]}]
    for key in ("single", "batchSweep", "rate"):
        scenarios = result[key] if isinstance(result[key], list) else [result[key]]
        found += [{f["code"] for f in s["flags"]} for s in scenarios if s]
    return found


def codes(suite_dir: Path, backend: str) -> set[str]:
    return set().union(*scenario_codes(suite_dir, backend))


# On a machine whose cores are busy with other work, the load generator itself can fall
# behind a rate schedule. It says so (client-bottleneck) in the same scenario: that is the
# machine's doing, not the server's. A server that is really too slow leaves the client idle,
# waiting, so its shortfall comes without client-bottleneck.
EXPLAINED_BY_THE_CLIENT = {"rate-not-sustained"}


def blamed_on_the_server(suite_dir: Path, backend: str) -> set[str]:
    """The flags of the backend, less those its own scenario puts down to a starved client."""
    blamed: set[str] = set()
    for scenario in scenario_codes(suite_dir, backend):
        if "client-bottleneck" in scenario:
            scenario = scenario - EXPLAINED_BY_THE_CLIENT
        blamed |= scenario
    return blamed


def test_the_run_completes_every_cell(run: tuple[int, Path]) -> None:
    code, suite_dir = run
    assert code == 0
    assert len(list((suite_dir / "cells").glob("*.json"))) == len(SERVERS)


@pytest.mark.parametrize(
    ("backend", "flag"),
    [
        ("lazy-build", "slow-first-request"),
        ("batching-delay", "queue-dominates"),
        ("drifting", "unstable"),
        ("too-slow", "rate-not-sustained"),
    ],
)
def test_each_misbehaviour_raises_its_flag(run: tuple[int, Path], backend: str, flag: str) -> None:
    _, suite_dir = run
    assert flag in codes(suite_dir, backend)
    assert flag not in blamed_on_the_server(suite_dir, "well")


def test_the_well_behaved_server_raises_none_of_those_flags(run: tuple[int, Path]) -> None:
    _, suite_dir = run
    assert not blamed_on_the_server(suite_dir, "well") & {
        "slow-first-request",
        "queue-dominates",
        "unstable",
        "rate-not-sustained",
    }


def test_outputs_that_differ_fail_parity_and_cannot_win(run: tuple[int, Path]) -> None:
    _, suite_dir = run
    summary = json.loads((suite_dir / "summary.json").read_text())
    check = next(p for p in summary["parity"] if p["backend"] == "wrong-outputs")
    assert check["passed"] is False and check["minCosine"] < 0
    assert all(w["backend"] != "wrong-outputs" for w in summary["winners"].values())
    row = next(r for r in summary["rows"] if r["backend"] == "wrong-outputs")
    assert row["status"].startswith("parity failed")


def test_the_report_lists_every_flag_in_plain_words(run: tuple[int, Path]) -> None:
    _, suite_dir = run
    report = (suite_dir / "report.md").read_text()
    flags = report.split("## Flags", 1)[1].split("\n## ", 1)[0]
    for backend, flag in [("lazy-build", "slow-first-request"), ("drifting", "unstable"),
                          ("batching-delay", "queue-dominates"), ("too-slow", "rate-not-sustained"),
                          ("wrong-outputs", "parity failed")]:  # fmt: skip
        assert any(line.startswith(f"- {backend}/local: {flag}") for line in flags.splitlines()), (
            backend,
            flag,
            flags,
        )
    assert "## Methodology" in report and "## Open-loop rates" in report
