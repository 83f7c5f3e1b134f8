"""An in-test OIP server with knobs for misbehaviour, for the load generator's tests.

Just enough of Triton's HTTP API (binary tensor extension, Triton-named metrics) to run
`run_bench` against, and counters the tests read directly. The knobs make it misbehave the
ways docs/architecture.md §2 says a bake-off goes wrong, one at a time:

- `delay_s(call, batch)`: seconds of "compute" for each request (drifting latency);
- `first_request_delay_s[batch]`: extra seconds on the first request of a batch size (a
  lazy engine build);
- `queue_delay_s`: seconds each request waits before compute, reported as queue time (a
  dynamic-batching delay);
- `max_concurrent`: requests beyond this wait for a slot, the wait reported as queue time
  (a server that cannot sustain a rate);
- `output_transform`: applied to the embedding (wrong outputs for the parity gate);
- `fail_every`: every n-th infer call answers HTTP 400;
- `count_late_s`: the metrics count a request this long after it was answered (Triton
  updates its counters after sending the response);
- `precise`: sleep the compute time in a thread (asyncio's timers round up to milliseconds,
  too coarse for latencies a few percent apart);
- `required_headers`: every request without these exact headers answers 401 (an inference
  gateway's credentials); `serving(..., ssl_context=...)` serves https.

Metrics: per successful request the counters grow by `US_PER_REQUEST` plus the queue and
compute delays above (configured values, so tests can assert exact server times).

Run it alone for benchmarks: `python tests/unit/fake_oip.py --port 8000 [--delay-ms 1]`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from aiohttp import web

MODEL = "clip"
IMAGE_SHAPE = [3, 8, 8]  # small images keep the tests fast; the protocol is the same
MAX_BATCH = 8
GPU_USED = (1_500_000_000, 250_000_000)
# Per successful request the fake server adds these microseconds to its counters.
US_PER_REQUEST = {"request": 1000, "queue": 100, "input": 50, "infer": 800, "output": 50}


@dataclass
class FakeOipServer:
    """The server's state and knobs; `app()` serves it."""

    fail_every: int | None = None
    ready: bool = True
    delay_s: Callable[[int, int], float] | None = None
    first_request_delay_s: dict[int, float] = field(default_factory=dict)
    queue_delay_s: float = 0.0
    max_concurrent: int | None = None
    output_transform: Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]] | None = None
    record_bodies: bool = True
    count_late_s: float = 0.0  # metrics count a request this long after answering it
    precise: bool = False  # sleep the compute time in a thread: exact, not whole milliseconds
    required_headers: dict[str, str] = field(default_factory=dict)
    # What happened: read by the tests.
    infer_calls: int = 0
    success: int = 0
    failure: int = 0
    inferences: int = 0
    bodies: dict[int, set[str]] = field(default_factory=dict)  # batch -> body digests
    batch_calls: dict[int, int] = field(default_factory=dict)  # batch -> infer calls
    extra_us: dict[str, float] = field(default_factory=dict)  # counter -> added by knobs
    authorized: int = 0  # requests that carried `required_headers` (any route)
    unauthorized: int = 0  # requests refused with 401 for want of them
    url: str = ""
    _slots: asyncio.Semaphore | None = None

    @web.middleware
    async def _check_headers(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if any(request.headers.get(k) != v for k, v in self.required_headers.items()):
            self.unauthorized += 1
            await request.read()
            return web.json_response({"error": "unauthorized"}, status=401)
        if self.required_headers:
            self.authorized += 1
        return await handler(request)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._check_headers])
        app.router.add_get("/v2", self.server_metadata)
        app.router.add_get("/v2/health/ready", self.health_ready)
        app.router.add_get(f"/v2/models/{MODEL}", self.model_metadata)
        app.router.add_get(f"/v2/models/{MODEL}/config", self.model_config)
        app.router.add_post(f"/v2/models/{MODEL}/infer", self.infer)
        app.router.add_get("/metrics", self.metrics)
        return app

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"name": "triton", "version": "2.51.0", "extensions": ["binary_tensor_data"]}
        )

    async def health_ready(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.ready else 503)

    async def model_metadata(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "name": MODEL,
                "versions": ["1"],
                "platform": "python",
                "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, *IMAGE_SHAPE]}],
                "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 2]}],
            }
        )

    async def model_config(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "name": MODEL,
                "backend": "python",
                "max_batch_size": MAX_BATCH,
                "parameters": {
                    "runtime": {"string_value": "onnxruntime 1.20 cpu fp32"},
                    "model_provenance": {"string_value": "sha256:abc"},
                },
            }
        )

    def error(self, message: str) -> web.Response:
        # Triton sends its error JSON as text/plain.
        self.failure += 1
        return web.Response(
            status=400, text=json.dumps({"error": message}), content_type="text/plain"
        )

    def _add(self, counter: str, seconds: float) -> None:
        self.extra_us[counter] = self.extra_us.get(counter, 0.0) + seconds * 1e6

    async def _wait_and_compute(self, batch: int, first: bool) -> tuple[float, float]:
        queued = time.perf_counter()
        if self.max_concurrent is not None:
            if self._slots is None:
                self._slots = asyncio.Semaphore(self.max_concurrent)
            await self._slots.acquire()
        try:
            waited = time.perf_counter() - queued if self.max_concurrent is not None else 0.0
            if self.queue_delay_s:
                await asyncio.sleep(self.queue_delay_s)
            compute = self.delay_s(self.infer_calls, batch) if self.delay_s else 0.0
            if first:
                compute += self.first_request_delay_s.get(batch, 0.0)
            if compute and self.precise:
                # asyncio's timers round up to whole milliseconds; a thread sleeps exactly.
                await asyncio.get_running_loop().run_in_executor(None, time.sleep, compute)
            elif compute:
                await asyncio.sleep(compute)
        finally:
            if self._slots is not None:
                self._slots.release()
        return waited + self.queue_delay_s, compute

    def _count(self, batch: int, queued: float, compute: float) -> None:
        self.success += 1
        self.inferences += batch
        self._add("queue", queued)
        self._add("infer", compute)
        self._add("request", queued + compute)

    async def infer(self, request: web.Request) -> web.Response:
        self.infer_calls += 1
        body = await request.read()
        json_end = int(request.headers["Inference-Header-Content-Length"])
        header = orjson.loads(body[:json_end])
        tensor = header["inputs"][0]
        shape = tensor["shape"]
        size = tensor["parameters"]["binary_data_size"]
        assert tensor["name"] == "images" and tensor["datatype"] == "FP32"
        assert size == len(body) - json_end == int(np.prod(shape)) * 4
        batch = int(shape[0])
        first = batch not in self.batch_calls
        self.batch_calls[batch] = self.batch_calls.get(batch, 0) + 1
        if self.fail_every and self.infer_calls % self.fail_every == 0:
            return self.error("simulated failure")
        if batch > MAX_BATCH:
            return self.error(f"batch size {batch} exceeds {MAX_BATCH}")
        if self.record_bodies:
            self.bodies.setdefault(batch, set()).add(hashlib.sha256(body).hexdigest())
        queued, compute = await self._wait_and_compute(batch, first)
        images = np.frombuffer(body[json_end:], dtype="<f4").reshape(batch, -1)
        # The embedding is (mean, first value) per image: parity rows can be checked exactly.
        embedding = np.stack([images.mean(axis=1), images[:, 0]], axis=1).astype("<f4")
        if self.output_transform is not None:
            embedding = self.output_transform(embedding).astype("<f4")
        if self.count_late_s:
            # As Triton does: the request is counted a moment after its answer has gone out.
            loop = asyncio.get_running_loop()
            loop.call_later(self.count_late_s, self._count, batch, queued, compute)
        else:
            self._count(batch, queued, compute)
        out_header = orjson.dumps(
            {
                "model_name": MODEL,
                "model_version": "1",
                "outputs": [
                    {
                        "name": "embedding",
                        "datatype": "FP32",
                        "shape": list(embedding.shape),
                        "parameters": {"binary_data_size": embedding.nbytes},
                    }
                ],
            }
        )
        return web.Response(
            body=out_header + embedding.tobytes(),
            headers={"Inference-Header-Content-Length": str(len(out_header))},
            content_type="application/octet-stream",
        )

    def _us(self, counter: str, key: str) -> int:
        return self.success * US_PER_REQUEST[key] + round(self.extra_us.get(counter, 0.0))

    async def metrics(self, request: web.Request) -> web.Response:
        def counter(name: str, help_text: str, value: int) -> str:
            return (
                f"# HELP {name} {help_text}\n# TYPE {name} counter\n"
                f'{name}{{model="{MODEL}",version="1"}} {value}\n'
            )

        n = self.success
        text = "".join(
            [
                counter("nv_inference_request_success", "Number of successful inference requests, all batch sizes", n),  # noqa: E501
                counter("nv_inference_request_failure", "Number of failed inference requests, all batch sizes", self.failure),  # noqa: E501
                counter("nv_inference_count", "Number of inferences performed (does not include cached requests)", self.inferences),  # noqa: E501
                counter("nv_inference_exec_count", "Number of model executions performed (does not include cached requests)", n),  # noqa: E501
                counter("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds (includes cached requests)", self._us("request", "request")),  # noqa: E501
                counter("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds (includes cached requests)", self._us("queue", "queue")),  # noqa: E501
                counter("nv_inference_compute_input_duration_us", "Cumulative compute input duration in microseconds (does not include cached requests)", n * US_PER_REQUEST["input"]),  # noqa: E501
                counter("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds (does not include cached requests)", self._us("infer", "infer")),  # noqa: E501
                counter("nv_inference_compute_output_duration_us", "Cumulative inference compute output duration in microseconds (does not include cached requests)", n * US_PER_REQUEST["output"]),  # noqa: E501
                "# HELP nv_gpu_memory_used_bytes GPU used memory, in bytes\n",
                "# TYPE nv_gpu_memory_used_bytes gauge\n",
                f'nv_gpu_memory_used_bytes{{gpu_uuid="GPU-0"}} {GPU_USED[0]}\n',
                f'nv_gpu_memory_used_bytes{{gpu_uuid="GPU-1"}} {GPU_USED[1]}\n',
            ]
        )  # fmt: skip
        return web.Response(text=text, content_type="text/plain")


@asynccontextmanager
async def serving(
    fake: FakeOipServer,
    port: int = 0,
    ssl_context: ssl.SSLContext | None = None,
    host: str = "127.0.0.1",
) -> AsyncIterator[FakeOipServer]:
    """Serve `fake` on `host` in the running loop (https with `ssl_context`); `fake.url` is
    set inside (https://localhost:PORT on loopback with TLS, the name its certificate has)."""
    app_runner = web.AppRunner(fake.app(), access_log=None)
    await app_runner.setup()
    site = web.TCPSite(app_runner, host, port, ssl_context=ssl_context)
    await site.start()
    address, bound = app_runner.addresses[0][:2]
    if ssl_context is not None and address == "127.0.0.1":
        address = "localhost"
    fake.url = f"{'https' if ssl_context else 'http'}://{address}:{bound}"
    try:
        yield fake
    finally:
        await app_runner.cleanup()


@contextmanager
def serving_in_thread(
    fake: FakeOipServer, ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1"
) -> Iterator[FakeOipServer]:
    """Serve `fake` from its own thread and event loop, apart from the client's loop.

    The client's event-loop CPU (`thread_time`) then excludes the server's work.
    """
    started = threading.Event()
    stop: list[Callable[[], Any]] = []

    async def main() -> None:
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        stop.append(lambda: loop.call_soon_threadsafe(done.set))
        async with serving(fake, ssl_context=ssl_context, host=host):
            started.set()
            await done.wait()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    if not started.wait(timeout=10):
        raise RuntimeError("the fake OIP server did not start in 10 s")
    try:
        yield fake
    finally:
        stop[0]()
        thread.join(timeout=10)


@contextmanager
def tls_gateway(
    required_headers: dict[str, str], ssl_context: ssl.SSLContext, host: str = "127.0.0.1"
) -> Iterator[FakeOipServer]:
    """An inference gateway: https, and 401 to any request without `required_headers`."""
    fake = FakeOipServer(required_headers=required_headers, record_bodies=False)
    with serving_in_thread(fake, ssl_context=ssl_context, host=host) as served:
        yield served


def _main() -> None:
    parser = argparse.ArgumentParser(description="Serve the fake OIP model 'clip'.")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="compute per request")
    parser.add_argument("--max-concurrent", type=int, default=None)
    args = parser.parse_args()
    delay = args.delay_ms / 1000.0
    fake = FakeOipServer(
        delay_s=(lambda _call, _batch: delay) if delay else None,
        max_concurrent=args.max_concurrent,
        record_bodies=False,
    )
    web.run_app(fake.app(), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    _main()
