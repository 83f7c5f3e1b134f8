"""HTTP/1.1 for the load generator's hot path: one keep-alive connection per request in flight.

Used by `client.OipClient.infer`. A connection writes a request built once (request line,
headers and body in one `bytes`) and parses only what it needs of the answer: the status
line, Content-Length or chunked framing, and `Connection: close`. The body is counted, not
kept, unless the caller wants it (an error to quote, parity outputs to decode). A pool keeps
the idle connections and one watchdog timer for every request's deadline.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from typing import Final, cast
from urllib.parse import urlsplit

_MAX_HEAD: Final = 64 * 1024  # a response head larger than this is not an OIP server
# A server sends the same head again and again (a Date header changes it once a second):
# its framing is parsed once and looked up after, which halves the client's parsing cost.
_MAX_FRAMINGS: Final = 64


class ServerDisconnectedError(ConnectionError):
    """The server closed the connection before its response was complete."""

    def __init__(self, message: str, *, received: bool) -> None:
        super().__init__(message)
        # Nothing of the response arrived: on a reused keep-alive connection, the server had
        # closed it just as the request went out, and the request may be sent again.
        self.received = received


class BadHttpResponseError(Exception):
    """The server's bytes are not an HTTP/1.x response this client can frame."""


# Response framing states of `HttpConnection`.
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


class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with at most one request in flight.

    `send` writes a complete request and returns a future that gets the status code once the
    whole response has arrived; `finished_at` is the perf_counter of that moment, taken in
    the protocol callback so that the event loop's wake-up of the caller is not in it.
    """

    def __init__(self, pool: HttpPool) -> None:
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


class HttpPool:
    """The `infer` connections of one client: idle ones for reuse, and a timeout watchdog.

    One connection per request in flight: a closed-loop run with `concurrency` workers opens
    exactly `concurrency` connections and keeps them for the whole run. Timeouts are checked
    by one watchdog timer while requests are in flight rather than a timer per request (which
    costs about 2 us each, a fifth of the client's whole cost per request at saturation): a
    request fails at most a twentieth of the timeout (at most 1 s) after its deadline.
    """

    def __init__(
        self,
        url: str,
        timeout_s: float | None,
        connect_timeout_s: float | None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        default_port = self.port == (443 if parts.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if default_port else f"{host}:{self.port}"
        self.ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self.ssl = ssl_context if ssl_context is not None else ssl.create_default_context()
        self.timeout_s = timeout_s if timeout_s else float("inf")
        self.connect_timeout_s = connect_timeout_s or timeout_s or None
        self._tick_s = min(1.0, max(0.005, self.timeout_s / 20))
        self.idle: list[HttpConnection] = []
        self.framings: dict[bytes, Framing] = {}
        self.connections: set[HttpConnection] = set()
        self.closed = False
        self._address: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.armed = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "used before the first connection"
        return self._loop

    async def connect(self) -> HttpConnection:
        if self.closed:
            raise ConnectionAbortedError("the client is closed")
        loop = self._loop = asyncio.get_running_loop()
        if self._address is None:
            self._address = await self._resolve(loop)
        connection = HttpConnection(self)
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

    def watch(self, connection: HttpConnection, started: float) -> None:
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

    def forget(self, connection: HttpConnection) -> None:
        self.connections.discard(connection)
        if connection in self.idle:
            self.idle.remove(connection)

    def close(self) -> None:
        self.closed = True
        self.idle.clear()
        for connection in list(self.connections):
            connection.discard()
        self.connections.clear()
