"""Bakeoff's load generator as `make bench` measures it: one child process, pinned by taskset.

It runs the production path and nothing else: `client.make_session`, `client.OipClient`,
`scenarios.run_closed_loop` (batch-1 scenario, `concurrency` workers) on the event loop the
entry point would use (`client.event_loop_factory`: uvloop when installed). The request is
the body and headers that `loadgen.py` wrote, so every tool sends the same bytes. Prints one
JSON object on stdout.

    python benchmarks/loadgen_client.py --url URL --body FILE --headers JSON \\
        --concurrency 64 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any, Final

from bakeoff_bench import client as oip
from bakeoff_bench import payloads, scenarios

MODEL: Final = "bench"
REQUEST_TIMEOUT_S: Final = 10.0
PROBE_S: Final = 1.0  # warm-up that also estimates the rate, so the window lasts ~duration


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--body", type=Path, required=True)
    parser.add_argument("--headers", required=True, help="JSON object of the OIP headers")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    return parser.parse_args()


async def _measure(args: argparse.Namespace) -> dict[str, Any]:
    payload = payloads.Payload(
        body=args.body.read_bytes(), headers=json.loads(args.headers), batch_size=1
    )
    async with oip.make_session(args.concurrency, REQUEST_TIMEOUT_S) as session:
        client = oip.OipClient(session, args.url, MODEL)
        await client.wait_ready(10.0)
        # Grow the probe until it lasts PROBE_S/4: connections open, caches warm, rate known.
        probe_requests = 200 * args.concurrency
        while True:
            probe = await scenarios.run_closed_loop(
                client, payload, 1, args.concurrency, probe_requests, 0
            )
            if probe.duration_s >= PROBE_S / 4 or probe.failed:
                break
            probe_requests *= 4
        requests = max(args.concurrency * 100, int(probe.requests_per_s * args.duration))
        result = await scenarios.run_closed_loop(client, payload, 1, args.concurrency, requests, 0)
    return {
        "requests": result.requests,
        "errors": result.failed + probe.failed,
        "error_kinds": [e.model_dump() for e in result.errors],
        "requests_per_s": result.requests_per_s,
        "duration_s": result.duration_s,
        "p50_ms": result.latency.p50_ms,
        "p99_ms": result.latency.p99_ms,
        "event_loop": type(asyncio.get_running_loop()).__module__,
    }


def main() -> int:
    args = _parse_args()
    with asyncio.Runner(loop_factory=oip.event_loop_factory()) as runner:
        measured = runner.run(_measure(args))
    print(json.dumps(measured))
    return 0


if __name__ == "__main__":
    sys.exit(main())
