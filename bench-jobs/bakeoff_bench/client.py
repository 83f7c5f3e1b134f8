"""The OIP HTTP client: a minimal keep-alive transport for `infer`, aiohttp for everything else.

Called by `runner` (metadata, readiness, parity) and `scenarios` (the hot path). A failing
request is returned as data (`ErrorKey`) and tallied by `ErrorTally`; it never raises, so one
bad response cannot end a run whose other thousand requests were fine.

Why a transport of its own (`http1`): the load generator must not be the bottleneck, nor add
latency that a reader would blame on the server. `infer` therefore sends request bytes built
once per payload, on one keep-alive connection per in-flight request, and `http1` parses only
what it needs of the answer. It sends no Accept-Encoding: tritonserver
gzips its answer when asked (aiohttp asks by default), which costs the server time that the
PyTorch server never spends, so every backend is measured with identity encoding.

Readiness, metadata and metrics are not timed and stay on the shared aiohttp session.
"""

from __future__ import annotations

import asyncio
import importlib
import ssl
import time
import weakref
import zlib
from collections.abc import Callable
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import numpy as np
import numpy.typing as npt
import orjson

from bakeoff_bench import credentials, http1, payloads
from bakeoff_bench.config import TargetAuth
from bakeoff_bench.results import RequestError

# (error_type, message): the key under which failures are aggregated.
ErrorKey = tuple[str, str]
InferOutcome = tuple[float, bool, ErrorKey | None]

_MAX_MESSAGE: Final = 300  # a server may echo a whole tensor back in its error text
_DEFAULT_TIMEOUT_S: Final = 300.0  # aiohttp's own default, for a session without one
_USER_AGENT: Final = "bakeoff-bench"
# Request headers the transport writes itself; a payload must not repeat them.
_OWN_HEADERS: Final = frozenset({"host", "content-length", "connection", "transfer-encoding"})


class BenchError(RuntimeError):
    """A run cannot go on; the message says why. Callers catch this one base class."""


class BackendNotReadyError(BenchError):
    """GET /v2/health/ready did not answer 200 within the ready timeout."""


class BackendGoneError(BenchError):
    """The backend stopped answering in the middle of the run (the circuit breaker tripped)."""


# The circuit breaker: this many connection-level failures in a row (refused, reset, closed
# before an answer) mean the server is gone (crashed, killed, restarting): no answer came in
# between, so it is no blip. The run stops there instead of timing a dead port for every
# scenario left (a refused connection fails in microseconds: 20 are over at once).
BREAKER_FAILURES: Final = 20


class BackendResponseError(BenchError):
    """A metadata or parity call failed or could not connect; the message quotes the server."""


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's event loop when it is installed (a cheaper hot path), else asyncio's own.

    For the entry points: `asyncio.Runner(loop_factory=client.event_loop_factory())`.
    """
    try:
        uvloop = importlib.import_module("uvloop")  # optional: not every image ships it
    except ImportError:
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def make_session(
    concurrency: int, request_timeout_s: float, ssl_context: ssl.SSLContext | None = None
) -> aiohttp.ClientSession:
    """The one session of a run: pool of `concurrency` keep-alive connections, explicit timeouts.

    DNS is resolved once and cached for the whole run (ttl None), so no lookup (and no
    resolver thread) ever lands inside a measured window; a Service's ClusterIP does not
    change under a running Job. Idle connections are kept for at least a minute so that the
    pauses between phases (scrapes, parity) do not cost a measured request a new handshake.
    Closing the session also closes the `infer` connections of every `OipClient` on it.
    `ssl_context`: how https answers are checked (a custom CA, a client certificate).
    """
    connector = _SessionConnector(
        ssl=ssl_context if ssl_context is not None else True,
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


class _SessionConnector(aiohttp.TCPConnector):
    """aiohttp's connector that also closes the `infer` pools of the clients on its session."""

    def __init__(
        self,
        *,
        ssl: ssl.SSLContext | bool,
        limit: int,
        limit_per_host: int,
        use_dns_cache: bool,
        ttl_dns_cache: int | None,
        keepalive_timeout: float,
    ) -> None:
        super().__init__(
            ssl=ssl,
            limit=limit,
            limit_per_host=limit_per_host,
            use_dns_cache=use_dns_cache,
            ttl_dns_cache=ttl_dns_cache,
            keepalive_timeout=keepalive_timeout,
        )
        self.http_pools: weakref.WeakSet[http1.HttpPool] = weakref.WeakSet()

    async def close(self, *, abort_ssl: bool = False) -> None:
        for pool in list(self.http_pools):
            pool.close()
        await super().close(abort_ssl=abort_ssl)


class OipClient:
    """Open Inference Protocol calls for one model on one server."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        http_url: str,
        model_name: str,
        auth: TargetAuth | None = None,
    ) -> None:
        self.session = session
        self.base_url = http_url.rstrip("/")
        # Read once: every request (health, metadata, infer) carries the same credentials.
        self.auth = auth
        self.credentials = credentials.load(auth, self.base_url)
        self._auth_headers = self.credentials.headers_for(self.base_url)
        self.model_name = model_name
        self.model_url = f"{self.base_url}/v2/models/{model_name}"
        self.infer_url = f"{self.model_url}/infer"
        timeout = session.timeout
        total = timeout.total if timeout.total is not None else _DEFAULT_TIMEOUT_S
        self._pool = http1.HttpPool(
            self.base_url,
            total,
            timeout.sock_connect or timeout.connect or total,
            self.credentials.ssl_context,
        )
        self._infer_path = urlsplit(self.infer_url).path or "/"
        if isinstance(session.connector, _SessionConnector):
            session.connector.http_pools.add(self._pool)
        # The request bytes of the last payload sent: a scenario sends one payload many times.
        self._payload: payloads.Payload | None = None
        self._request = b""
        # The circuit breaker's state; `gone` says why once it tripped.
        self._failing = 0
        self._failing_since = 0.0
        self.gone: str | None = None

    def close(self) -> None:
        """Close the `infer` connections (closing a `make_session` session does it too)."""
        self._pool.close()

    async def wait_ready(self, timeout_s: float, poll_s: float = 0.5) -> float:
        """Poll /v2/health/ready until 200; return the seconds waited."""
        url = f"{self.base_url}/v2/health/ready"
        started = time.monotonic()
        last = "no answer yet"
        # A short per-poll timeout, so that one hung poll cannot eat the whole deadline.
        poll_timeout = aiohttp.ClientTimeout(total=min(5.0, timeout_s))
        while True:
            try:
                async with self.session.get(
                    url, timeout=poll_timeout, headers=self._auth_headers
                ) as response:
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
            async with self.session.get(url, headers=self._auth_headers) as response:
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

    def request_bytes(self, payload: payloads.Payload) -> bytes:
        """The complete HTTP request for `payload`: request line, headers, then the body."""
        lines = [
            f"POST {self._infer_path} HTTP/1.1",
            f"Host: {self._pool.host_header}",
            f"User-Agent: {_USER_AGENT}",
            *[f"{name}: {value}" for name, value in self._auth_headers.items()],
        ]
        for name, value in payload.headers.items():
            if "\r" in name or "\n" in name or "\r" in value or "\n" in value:
                raise ValueError(f"header {name!r} contains a line break")
            if name.lower() not in _OWN_HEADERS:
                lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {len(payload.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload.body

    async def _exchange(
        self, request: bytes, want_body: bool, started: float, fresh: bool = False
    ) -> http1.HttpConnection:
        """Send `request` on an idle connection (or a new one); return it once answered.

        A kept-alive connection that the server closed just as the request went out (its
        keep-alive timeout) is retried once on a fresh connection; the time of the failed
        attempt stays in the latency. The returned connection's status, head, body and
        finished_at stay valid until the caller next awaits.
        """
        pool = self._pool
        connection = pool.idle.pop() if pool.idle and not fresh else await pool.connect()
        waiter = connection.send(request, want_body)
        pool.watch(connection, started)
        try:
            await waiter
        except http1.ServerDisconnectedError as exc:
            if fresh or exc.received or not connection.exchanges:
                raise
            return await self._exchange(request, want_body, started, fresh=True)
        except asyncio.CancelledError:
            connection.discard()  # its response is still on the way
            raise
        if connection.reusable:
            pool.idle.append(connection)
        return connection

    async def infer(self, payload: payloads.Payload) -> InferOutcome:
        """Send a pre-encoded request; time it from just before the send to the full body read.

        The hot path: the request bytes are built once per payload; the response body of a
        success is counted and dropped. The end time is taken when the last byte arrives.
        """
        if payload is not self._payload:
            self._request = self.request_bytes(payload)
            self._payload = payload
        pool = self._pool
        started = time.perf_counter()
        try:
            if pool.idle:
                # `_exchange` on a kept-alive connection, inlined: a coroutine less per request.
                connection = pool.idle.pop()
                waiter = connection.send(self._request, False)
                pool.watch(connection, started)
                try:
                    await waiter
                except http1.ServerDisconnectedError as exc:
                    if exc.received:
                        raise
                    connection = await self._exchange(self._request, False, started, fresh=True)
                except asyncio.CancelledError:
                    connection.discard()
                    raise
                else:
                    if connection.reusable:
                        pool.idle.append(connection)
            else:
                connection = await self._exchange(self._request, False, started)
        except (OSError, TimeoutError, http1.BadHttpResponseError) as exc:
            if isinstance(exc, ConnectionError):  # refused, reset, closed: not a timeout
                self._connection_failed(exc)
            return time.perf_counter() - started, False, exception_key(exc)
        self._failing = 0
        latency = connection.finished_at - started
        status = connection.status
        if status < 300:
            return latency, True, None
        return latency, False, (f"HTTP {status}", error_message(connection.body))

    def _connection_failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self._failing == 0:
            self._failing_since = now
        self._failing += 1
        span = now - self._failing_since
        if self.gone is None and self._failing >= BREAKER_FAILURES:
            kind, message = exception_key(exc)
            self.gone = (
                f"{self._failing} connection failures in a row over {span * 1000:.0f} ms "
                f"({kind}: {message})"
            )

    def raise_if_gone(self, where: str) -> None:
        """Stop the run once the backend stopped answering (see BREAKER_FAILURES)."""
        if self.gone is not None:
            raise BackendGoneError(
                f"the backend stopped answering during {where}: {self.gone}; the remaining "
                "scenarios were skipped"
            )

    async def infer_decoded(self, payload: payloads.Payload) -> dict[str, npt.NDArray[Any]]:
        """One request with decoded outputs (parity); a failure raises with the server's text."""
        try:
            connection = await self._exchange(
                self.request_bytes(payload), True, time.perf_counter()
            )
        except (OSError, TimeoutError, http1.BadHttpResponseError) as exc:
            raise BackendResponseError(
                f"POST {self.infer_url}: {type(exc).__name__}: {exc}"
            ) from exc
        status, body = connection.status, connection.body
        headers = http1.response_headers(connection.head)
        if status >= 300:
            raise BackendResponseError(
                f"POST {self.infer_url}: HTTP {status}: {error_message(body)}"
            )
        try:
            body = _decompress(body, headers.get("content-encoding", "identity"))
            return payloads.decode_infer_response(body, headers)
        except (ValueError, zlib.error) as exc:  # orjson's decode error is a ValueError too
            raise BackendResponseError(f"POST {self.infer_url}: bad response: {exc}") from exc


def _decompress(body: bytes, encoding: str) -> bytes:
    # Never asked for (no Accept-Encoding is sent), but a proxy in between might compress.
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompress(body, wbits=16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompress(body)
    raise ValueError(f"unsupported Content-Encoding {encoding!r}")


def as_float_rows(array: npt.NDArray[Any]) -> list[list[float]]:
    """A batch of outputs as one flat float list per image (what the parity gate compares)."""
    rows: list[list[float]] = (
        np.asarray(array, dtype=np.float64).reshape(array.shape[0], -1).tolist()
    )
    return rows
