"""The OIP HTTP client: a minimal keep-alive transport for `infer`, aiohttp for everything else.

Called by `runner` (metadata, readiness, parity) and `scenarios` (the hot path). A failing
request is returned as data (`ErrorKey`) and tallied by `ErrorTally`; it never raises, so one
bad response cannot end a run whose other thousand requests were fine.

Why a transport of its own: the load generator must not be the bottleneck, nor add latency
that a reader would blame on the server. `infer` therefore sends request bytes built once
per payload (request line, headers and body in one `bytes`), on one keep-alive connection
per in-flight request, and parses only what it needs: the status line, Content-Length or
chunked framing, and `Connection: close`. The body is counted, not kept, unless it is an
error to quote or parity outputs to decode. It sends no Accept-Encoding: tritonserver
gzips its answer when asked (aiohttp asks by default), which costs the server time that the
PyTorch server never spends, so every backend is measured with identity encoding.

Readiness, metadata and metrics are not timed and stay on the shared aiohttp session.
"""

from __future__ import annotations

import asyncio
import importlib
import ipaddress
import socket
import ssl
import time
import weakref
import zlib
from collections.abc import Callable
from typing import Any, Final, cast
from urllib.parse import urlsplit

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
_MAX_HEAD: Final = 64 * 1024  # a response head larger than this is not an OIP server
_DEFAULT_TIMEOUT_S: Final = 300.0  # aiohttp's own default, for a session without one
_USER_AGENT: Final = "bakeoff-bench"
# A server sends the same head again and again (a Date header changes it once a second):
# its framing is parsed once and looked up after, which halves the client's parsing cost.
_MAX_FRAMINGS: Final = 64
# Request headers the transport writes itself; a payload must not repeat them.
_OWN_HEADERS: Final = frozenset({"host", "content-length", "connection", "transfer-encoding"})


class BenchError(RuntimeError):
    """A run cannot go on; the message says why. Callers catch this one base class."""


class BackendNotReadyError(BenchError):
    """GET /v2/health/ready did not answer 200 within the ready timeout."""


class BackendResponseError(BenchError):
    """A metadata or parity call failed or could not connect; the message quotes the server."""


class ServerDisconnectedError(ConnectionError):
    """The server closed the connection before its response was complete."""

    def __init__(self, message: str, *, received: bool) -> None:
        super().__init__(message)
        # Nothing of the response arrived: on a reused keep-alive connection, the server had
        # closed it just as the request went out, and the request may be sent again.
        self.received = received


class BadHttpResponseError(Exception):
    """The server's bytes are not an HTTP/1.x response this client can frame."""


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


def make_session(concurrency: int, request_timeout_s: float) -> aiohttp.ClientSession:
    """The one session of a run: pool of `concurrency` keep-alive connections, explicit timeouts.

    DNS is resolved once and cached for the whole run (ttl None), so no lookup (and no
    resolver thread) ever lands inside a measured window; a Service's ClusterIP does not
    change under a running Job. Idle connections are kept for at least a minute so that the
    pauses between phases (scrapes, parity) do not cost a measured request a new handshake.
    Closing the session also closes the `infer` connections of every `OipClient` on it.
    """
    connector = _SessionConnector(
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


# Response framing states of `_HttpConnection`.
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _UNTIL_CLOSE = range(7)


def _line_end(head: bytes, start: int) -> int:
    end = head.find(b"\r", start)
    return end if end >= 0 else len(head)


# (status, close after this response, body state, Content-Length or 0)
Framing = tuple[int, bool, int, int]


def read_framing(head: bytes) -> Framing:
    """How the body of a response with this head is framed (RFC 9112 section 6.3).

    Names are found in the lower-cased head, a value is read to its line end, and int()
    ignores the spaces around it. An interim (1xx) head has state _HEAD: a response follows.
    """
    if head[:7] != b"HTTP/1." or head[8:9] != b" ":
        raise BadHttpResponseError(f"not an HTTP/1.x status line: {head[:80]!r}")
    status = int(head[9:12])
    if status < 200:
        if status == 101 or status < 100:
            raise BadHttpResponseError(f"unexpected status {status}")
        return status, False, _HEAD, 0
    http10 = head[7:8] == b"0"
    lowered = head.lower()
    at = lowered.find(b"\nconnection:")
    if at < 0:
        close = http10  # HTTP/1.0 closes unless it says keep-alive
    else:
        value = lowered[at + 12 : _line_end(lowered, at)]
        close = b"close" in value or (http10 and b"keep-alive" not in value)
    at = lowered.find(b"\ntransfer-encoding:")
    if at >= 0 and b"chunked" in lowered[at + 19 : _line_end(lowered, at)]:
        return status, close, _CHUNK_SIZE, 0
    if status in (204, 304):
        return status, close, _HEAD, 0
    at = lowered.find(b"\ncontent-length:")
    if at < 0:  # the body ends when the server closes
        return status, True, _UNTIL_CLOSE, 0
    length = int(lowered[at + 16 : _line_end(lowered, at)])
    if length < 0:
        raise BadHttpResponseError(f"negative Content-Length {length}")
    return status, close, _LENGTH, length


def response_headers(head: bytes) -> dict[str, str]:
    """The header lines of a response head as a dict with lower-case names."""
    headers: dict[str, str] = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


class _HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with at most one request in flight.

    `send` writes a complete request and returns a future that gets the status code once the
    whole response has arrived; `finished_at` is the perf_counter of that moment, taken in
    the protocol callback so that the event loop's wake-up of the caller is not in it.
    """

    def __init__(self, pool: _HttpPool) -> None:
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[int] | None = None
        self.deadline = 0.0  # perf_counter by which the response must be complete
        self.finished_at = 0.0
        self.status = 0
        self.head = b""  # status line and headers of the last response
        self.body = b""  # its body, when kept
        self.reusable = False  # the last exchange completed and the server keeps the connection
        self.exchanges = 0  # completed request/response pairs on this connection
        self.received = False  # some byte of the current response has arrived
        self._want_body = False
        self._keep = False
        self._close_after = False
        self._state = _HEAD
        self._remaining = 0
        self._buffer = bytearray()
        self._kept = bytearray()

    # asyncio.Protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:
            # Bytes nobody asked for: the framing is lost, so the connection is too.
            self._discard_stream()
            return
        self.received = True
        try:
            if not self._buffer:
                # Fast paths: a whole small response in one read (the usual case), or body
                # bytes of a success, which are only counted, never copied.
                state = self._state
                if state == _HEAD:
                    end = data.find(b"\r\n\r\n")
                    if end < 0:
                        self._buffer += data
                        self._parse()
                        return
                    self._start(data[:end])
                    data = data[end + 4 :]
                    if self.waiter is None:  # a response without a body
                        if data:
                            self._discard_stream()
                        return
                    state = self._state
                if state == _LENGTH and not self._keep:
                    size = len(data)
                    if size < self._remaining:
                        self._remaining -= size
                        return
                    if size == self._remaining:
                        self._remaining = 0
                        self._finish()
                        return
            self._buffer += data
            self._parse()
        except (BadHttpResponseError, ValueError) as exc:
            error = exc if isinstance(exc, BadHttpResponseError) else BadHttpResponseError(exc)
            self._fail(error)

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        self._pool.forget(self)
        if self.waiter is None:
            return
        if self._state == _UNTIL_CLOSE and exc is None:
            self._take(len(self._buffer))
            self._finish()
            return
        reason = f": {exc}" if exc is not None else ""
        self._fail(
            ServerDisconnectedError(
                f"the server closed the connection before the response was complete{reason}",
                received=self.received,
            )
        )

    # used by the client

    def send(self, request: bytes, want_body: bool) -> asyncio.Future[int]:
        assert self.transport is not None
        waiter: asyncio.Future[int] = self._pool.loop.create_future()
        self.waiter = waiter
        self.reusable = False
        self.received = False
        self._want_body = want_body
        try:
            self.transport.write(request)
        except RuntimeError as exc:  # uvloop: the server's FIN arrived since the last use
            self._fail(ServerDisconnectedError(f"the connection had closed: {exc}", received=False))
        return waiter

    def expire(self, timeout_s: float) -> None:
        """The deadline passed: fail the request; the late response would only confuse us."""
        self._fail(TimeoutError(f"no complete response within {timeout_s:g} s"))

    def discard(self, error: BaseException | None = None) -> None:
        """Close now; a request in flight fails with `error`."""
        if self.waiter is not None:
            self._fail(error or ConnectionAbortedError("the client closed the connection"))
        elif self.transport is not None:
            self.reusable = False
            self.transport.close()

    # framing

    def _discard_stream(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    def _parse(self) -> None:
        buffer = self._buffer
        while self.waiter is not None:
            state = self._state
            if state == _HEAD:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffer) > _MAX_HEAD:
                        raise BadHttpResponseError(f"no end of headers in {len(buffer)} bytes")
                    return
                head = bytes(buffer[:end])
                del buffer[: end + 4]
                self._start(head)
            elif state == _LENGTH:
                if not buffer:
                    return
                self._remaining -= self._take(min(self._remaining, len(buffer)))
                if self._remaining:
                    return
                self._finish()
            elif state == _CHUNK_SIZE:
                end = buffer.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(buffer[:end]).split(b";", 1)[0].strip(), 16)
                del buffer[: end + 2]
                self._remaining = size
                self._state = _CHUNK_DATA if size else _TRAILER
            elif state == _CHUNK_DATA:
                if not buffer:
                    return
                self._remaining -= self._take(min(self._remaining, len(buffer)))
                if self._remaining:
                    return
                self._state = _CHUNK_END
            elif state == _CHUNK_END:
                if len(buffer) < 2:
                    return
                if buffer[:2] != b"\r\n":
                    raise BadHttpResponseError("chunk not followed by CRLF")
                del buffer[:2]
                self._state = _CHUNK_SIZE
            elif state == _TRAILER:
                end = buffer.find(b"\r\n")
                if end < 0:
                    return
                del buffer[: end + 2]
                if end == 0:  # the empty line after the (usually absent) trailers
                    self._finish()
            else:  # _UNTIL_CLOSE: everything up to the server's FIN is the body
                self._take(len(buffer))
                return

    def _start(self, head: bytes) -> None:
        """Set the body state from the response head (parsed once per distinct head)."""
        framings = self._pool.framings
        framing = framings.get(head)
        if framing is None:
            framing = read_framing(head)
            if len(framings) >= _MAX_FRAMINGS:
                framings.clear()
            framings[head] = framing
        status, close_after, state, length = framing
        if status < 200:
            return  # an interim response (100 Continue): the real one follows
        self.status = status
        self.head = head
        self._keep = self._want_body or status >= 300
        self._close_after = close_after
        self._state = state
        if state == _LENGTH:
            self._remaining = length
            if not length:
                self._finish()
        elif state == _HEAD:  # 204 or 304: no body at all
            self._finish()

    def _take(self, size: int) -> int:
        """Move `size` body bytes out of the buffer, keeping them only when wanted."""
        if self._keep:
            self._kept += self._buffer[:size]
        del self._buffer[:size]
        return size

    def _finish(self) -> None:
        self.finished_at = time.perf_counter()
        waiter = self.waiter
        self.waiter = None
        self.exchanges += 1
        if self._keep:
            self.body = bytes(self._kept)
            self._kept.clear()
        else:
            self.body = b""
        self._state = _HEAD
        # Leftover bytes would be a pipelining bug on either side: never reuse such a stream.
        self.reusable = not (self._close_after or self._buffer)
        if not self.reusable and self.transport is not None:
            self.transport.close()
        if waiter is not None and not waiter.done():
            waiter.set_result(self.status)

    def _fail(self, error: BaseException) -> None:
        waiter = self.waiter
        self.waiter = None
        self.reusable = False
        self._state = _HEAD
        self._buffer.clear()
        self._kept.clear()
        if self.transport is not None:
            self.transport.abort()
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)


class _HttpPool:
    """The `infer` connections of one client: idle ones for reuse, and a timeout watchdog.

    One connection per request in flight: a closed-loop run with `concurrency` workers opens
    exactly `concurrency` connections and keeps them for the whole run. Timeouts are checked
    by one watchdog timer while requests are in flight rather than a timer per request (which
    costs about 2 us each, a fifth of the client's whole cost per request at saturation): a
    request fails at most a twentieth of the timeout (at most 1 s) after its deadline.
    """

    def __init__(self, url: str, timeout_s: float | None, connect_timeout_s: float | None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if default_port else f"{host}:{self.port}"
        self.ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if parts.scheme == "https" else None
        )
        self.timeout_s = timeout_s if timeout_s else float("inf")
        self.connect_timeout_s = connect_timeout_s or timeout_s or None
        self._tick_s = min(1.0, max(0.005, self.timeout_s / 20))
        self.idle: list[_HttpConnection] = []
        self.framings: dict[bytes, Framing] = {}
        self.connections: set[_HttpConnection] = set()
        self.closed = False
        self._address: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.armed = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "used before the first connection"
        return self._loop

    async def connect(self) -> _HttpConnection:
        if self.closed:
            raise ConnectionAbortedError("the client is closed")
        loop = self._loop = asyncio.get_running_loop()
        if self._address is None:
            self._address = await self._resolve(loop)
        connection = _HttpConnection(self)
        await asyncio.wait_for(
            loop.create_connection(
                lambda: connection,
                self._address,
                self.port,
                ssl=self.ssl,
                server_hostname=self.host if self.ssl is not None else None,
            ),
            self.connect_timeout_s,
        )
        # asyncio and uvloop both set TCP_NODELAY: a request is never held back by Nagle.
        self.connections.add(connection)
        return connection

    async def _resolve(self, loop: asyncio.AbstractEventLoop) -> str:
        # Resolved once per client: no lookup lands in a measured window after the first.
        try:
            return str(ipaddress.ip_address(self.host))
        except ValueError:
            pass
        infos = await loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        if not infos:
            raise OSError(f"cannot resolve {self.host}")
        return str(infos[0][4][0])

    def watch(self, connection: _HttpConnection, started: float) -> None:
        connection.deadline = started + self.timeout_s
        if not self.armed and self.timeout_s != float("inf"):
            self.armed = True
            self.loop.call_later(self._tick_s, self._check_deadlines)

    def _check_deadlines(self) -> None:
        now = time.perf_counter()
        busy = False
        for connection in list(self.connections):
            if connection.waiter is None:
                continue
            if now >= connection.deadline:
                connection.expire(self.timeout_s)
            else:
                busy = True
        self.armed = busy and not self.closed
        if self.armed:
            self.loop.call_later(self._tick_s, self._check_deadlines)

    def forget(self, connection: _HttpConnection) -> None:
        self.connections.discard(connection)
        if connection in self.idle:
            self.idle.remove(connection)

    def close(self) -> None:
        self.closed = True
        self.idle.clear()
        for connection in list(self.connections):
            connection.discard()
        self.connections.clear()


class _SessionConnector(aiohttp.TCPConnector):
    """aiohttp's connector that also closes the `infer` pools of the clients on its session."""

    def __init__(
        self,
        *,
        limit: int,
        limit_per_host: int,
        use_dns_cache: bool,
        ttl_dns_cache: int | None,
        keepalive_timeout: float,
    ) -> None:
        super().__init__(
            limit=limit,
            limit_per_host=limit_per_host,
            use_dns_cache=use_dns_cache,
            ttl_dns_cache=ttl_dns_cache,
            keepalive_timeout=keepalive_timeout,
        )
        self.http_pools: weakref.WeakSet[_HttpPool] = weakref.WeakSet()

    async def close(self, *, abort_ssl: bool = False) -> None:
        for pool in list(self.http_pools):
            pool.close()
        await super().close(abort_ssl=abort_ssl)


class OipClient:
    """Open Inference Protocol calls for one model on one server."""

    def __init__(self, session: aiohttp.ClientSession, http_url: str, model_name: str) -> None:
        self.session = session
        self.base_url = http_url.rstrip("/")
        self.model_name = model_name
        self.model_url = f"{self.base_url}/v2/models/{model_name}"
        self.infer_url = f"{self.model_url}/infer"
        timeout = session.timeout
        total = timeout.total if timeout.total is not None else _DEFAULT_TIMEOUT_S
        self._pool = _HttpPool(
            self.base_url, total, timeout.sock_connect or timeout.connect or total
        )
        self._infer_path = urlsplit(self.infer_url).path or "/"
        if isinstance(session.connector, _SessionConnector):
            session.connector.http_pools.add(self._pool)
        # The request bytes of the last payload sent: a scenario sends one payload many times.
        self._payload: payloads.Payload | None = None
        self._request = b""

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

    def request_bytes(self, payload: payloads.Payload) -> bytes:
        """The complete HTTP request for `payload`: request line, headers, then the body."""
        lines = [
            f"POST {self._infer_path} HTTP/1.1",
            f"Host: {self._pool.host_header}",
            f"User-Agent: {_USER_AGENT}",
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
    ) -> _HttpConnection:
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
        except ServerDisconnectedError as exc:
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
                except ServerDisconnectedError as exc:
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
        except (OSError, TimeoutError, BadHttpResponseError) as exc:
            return time.perf_counter() - started, False, exception_key(exc)
        latency = connection.finished_at - started
        status = connection.status
        if status < 300:
            return latency, True, None
        return latency, False, (f"HTTP {status}", error_message(connection.body))

    async def infer_decoded(self, payload: payloads.Payload) -> dict[str, npt.NDArray[Any]]:
        """One request with decoded outputs (parity); a failure raises with the server's text."""
        try:
            connection = await self._exchange(
                self.request_bytes(payload), True, time.perf_counter()
            )
        except (OSError, TimeoutError, BadHttpResponseError) as exc:
            raise BackendResponseError(
                f"POST {self.infer_url}: {type(exc).__name__}: {exc}"
            ) from exc
        status, body = connection.status, connection.body
        headers = response_headers(connection.head)
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
