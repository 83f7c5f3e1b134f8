"""The OIP HTTP client: one shared aiohttp session per run, and the timed `infer` call.

Called by `runner` (metadata, readiness, parity) and `scenarios` (the hot path). A failing
request is returned as data (`ErrorKey`) and tallied by `ErrorTally`; it never raises, so one
bad response cannot end a run whose other thousand requests were fine.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

import aiohttp
import numpy as np
import numpy.typing as npt
import orjson

from bakeoff_bench import payloads
from bakeoff_bench.results import RequestError

# (error_type, message): the key under which failures are aggregated.
ErrorKey = tuple[str, str]
InferOutcome = tuple[float, bool, ErrorKey | None]

_MAX_MESSAGE: Final = 300  # a server may echo a whole tensor back in its error text


class BenchError(RuntimeError):
    """A run cannot go on; the message says why. Callers catch this one base class."""


class BackendNotReadyError(BenchError):
    """GET /v2/health/ready did not answer 200 within the ready timeout."""


class BackendResponseError(BenchError):
    """A metadata or parity call failed or could not connect; the message quotes the server."""


def make_session(concurrency: int, request_timeout_s: float) -> aiohttp.ClientSession:
    """The one session of a run: pool of `concurrency` keep-alive connections, explicit timeouts.

    DNS is resolved once and cached for the whole run (ttl None), so no lookup (and no
    resolver thread) ever lands inside a measured window; a Service's ClusterIP does not
    change under a running Job. Idle connections are kept for at least a minute so that the
    pauses between phases (scrapes, parity) do not cost a measured request a new handshake.
    """
    connector = aiohttp.TCPConnector(
        limit=concurrency,
        limit_per_host=concurrency,
        use_dns_cache=True,
        ttl_dns_cache=None,
        keepalive_timeout=max(60.0, request_timeout_s),
    )
    timeout = aiohttp.ClientTimeout(
        total=request_timeout_s, sock_connect=min(10.0, request_timeout_s)
    )
    return aiohttp.ClientSession(connector=connector, timeout=timeout)


def error_message(body: bytes) -> str:
    """The server's `{"error": ...}` text, or the raw body when it is not that JSON.

    Triton sends its error JSON with Content-Type text/plain, so the type is not trusted.
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = None
    if isinstance(document, dict) and "error" in document:
        text = str(document["error"])
    else:
        text = body.decode("utf-8", errors="replace").strip()
    return text[:_MAX_MESSAGE]


def exception_key(exc: BaseException) -> ErrorKey:
    message = str(exc) or repr(exc)
    return type(exc).__name__, message[:_MAX_MESSAGE]


class ErrorTally:
    """Counts failures by (type, message); turns into the result's `RequestError` list."""

    def __init__(self) -> None:
        self._counts: dict[ErrorKey, int] = {}

    def add(self, key: ErrorKey) -> None:
        self._counts[key] = self._counts.get(key, 0) + 1

    @property
    def total(self) -> int:
        return sum(self._counts.values())

    def to_models(self) -> list[RequestError]:
        # Most frequent first: that is the one a reader should look at.
        ordered = sorted(self._counts.items(), key=lambda item: (-item[1], item[0]))
        return [
            RequestError(error_type=kind, message=message, count=count)
            for (kind, message), count in ordered
        ]


class OipClient:
    """Open Inference Protocol calls for one model on one server."""

    def __init__(self, session: aiohttp.ClientSession, http_url: str, model_name: str) -> None:
        self.session = session
        self.base_url = http_url.rstrip("/")
        self.model_name = model_name
        self.model_url = f"{self.base_url}/v2/models/{model_name}"
        self.infer_url = f"{self.model_url}/infer"

    async def wait_ready(self, timeout_s: float, poll_s: float = 0.5) -> float:
        """Poll /v2/health/ready until 200; return the seconds waited."""
        url = f"{self.base_url}/v2/health/ready"
        started = time.monotonic()
        last = "no answer yet"
        # A short per-poll timeout, so that one hung poll cannot eat the whole deadline.
        poll_timeout = aiohttp.ClientTimeout(total=min(5.0, timeout_s))
        while True:
            try:
                async with self.session.get(url, timeout=poll_timeout) as response:
                    await response.read()
                    if response.status == 200:
                        return time.monotonic() - started
                    last = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            if time.monotonic() - started + poll_s > timeout_s:
                raise BackendNotReadyError(
                    f"{url} was not ready after {timeout_s:g} s (last answer: {last})"
                )
            await asyncio.sleep(poll_s)

    async def get_json(self, url: str) -> dict[str, Any]:
        try:
            async with self.session.get(url) as response:
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BackendResponseError(f"GET {url}: {type(exc).__name__}: {exc}") from exc
        if response.status != 200:
            raise BackendResponseError(f"GET {url}: HTTP {response.status}: {error_message(body)}")
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BackendResponseError(f"GET {url}: not JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise BackendResponseError(f"GET {url}: expected a JSON object")
        return document

    async def server_metadata(self) -> dict[str, Any]:
        return await self.get_json(f"{self.base_url}/v2")

    async def model_metadata(self) -> dict[str, Any]:
        return await self.get_json(self.model_url)

    async def model_config(self) -> dict[str, Any] | None:
        """Triton's model configuration, or None where the server does not offer one."""
        try:
            return await self.get_json(f"{self.model_url}/config")
        except BackendResponseError:
            return None

    async def infer(self, payload: payloads.Payload) -> InferOutcome:
        """Send a pre-encoded request; time it from just before the send to the full body read.

        The hot path: no encoding, no JSON, no decoding; the body is read (so the server's
        whole answer is in the latency) and dropped.
        """
        started = time.perf_counter()
        try:
            async with self.session.post(
                self.infer_url, data=payload.body, headers=payload.headers
            ) as response:
                body = await response.read()
                latency = time.perf_counter() - started
                if response.status < 300:
                    return latency, True, None
                return latency, False, (f"HTTP {response.status}", error_message(body))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return time.perf_counter() - started, False, exception_key(exc)

    async def infer_decoded(self, payload: payloads.Payload) -> dict[str, npt.NDArray[Any]]:
        """One request with decoded outputs (parity); a failure raises with the server's text."""
        try:
            async with self.session.post(
                self.infer_url, data=payload.body, headers=payload.headers
            ) as response:
                body = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BackendResponseError(
                f"POST {self.infer_url}: {type(exc).__name__}: {exc}"
            ) from exc
        if response.status >= 300:
            raise BackendResponseError(
                f"POST {self.infer_url}: HTTP {response.status}: {error_message(body)}"
            )
        try:
            return payloads.decode_infer_response(body, response.headers)
        except ValueError as exc:  # orjson's decode error is a ValueError too
            raise BackendResponseError(f"POST {self.infer_url}: bad response: {exc}") from exc


def as_float_rows(array: npt.NDArray[Any]) -> list[list[float]]:
    """A batch of outputs as one flat float list per image (what the parity gate compares)."""
    rows: list[list[float]] = (
        np.asarray(array, dtype=np.float64).reshape(array.shape[0], -1).tolist()
    )
    return rows
