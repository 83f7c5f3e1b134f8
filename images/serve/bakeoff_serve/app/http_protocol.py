"""uvicorn's HTTP protocol, with large infer bodies read from the socket straight into one buffer.

At batch 32 an infer request carries 4.8 MB (UINT8) to 19 MB (FP32). uvicorn hands a body to
the app in pieces: it parses every chunk the socket gives, pauses reading above 64 KiB until
the app's task wakes to take it, and its `receive()` copies what it hands over; the app then
joins the pieces. Measured on loopback on the 2-core development machine (a null model, one
request in flight): a 4.8 MB request took 7.8 ms that way and 1.3 ms received into one
buffer, the same as a bare asyncio server. On a GPU that runs the batch in about 3 ms, that
difference decides whether the HTTP server or the GPU is the limit.

`DirectBodyProtocol` runs uvicorn's httptools protocol (same parser, ASGI cycle, keep-alive,
pipelining and shutdown) behind an `asyncio.BufferedProtocol`. When a request's head says
POST to the infer route with a Content-Length from `DIRECT_MIN_BYTES` to `DIRECT_MAX_BYTES`,
it allocates the body once and lets the event loop `recv` into it; the parser sees only the
head. The buffer comes from the lifespan state's `BODY_ALLOCATOR_KEY` when that gives one
(page-locked memory on a GPU: the tensor then goes from there to the device by DMA), else
from `np.empty` (no zero fill). The app's `receive()` then says the body is complete and the
scope's `DirectBody` (`infer_path.DIRECT_BODY_KEY`) holds it: one `memoryview` that `oip`
decodes without copying. Any other request, or an infer request outside those sizes, takes
uvicorn's own path (`InferFastPath` still answers 413 past `oip.MAX_BODY_BYTES`).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

import httptools
import numpy as np
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from bakeoff_serve.app.infer_path import (
    BODY_ALLOCATOR_KEY,
    DIRECT_BODY_KEY,
    INFER_PATH,
    BodyAllocator,
    DirectBody,
)

# uvicorn's own path pauses reading above 64 KiB: below that a body costs it nothing extra.
DIRECT_MIN_BYTES: Final = 64 * 1024
# A request is allocated in full when its head arrives, before its bytes do: the cap keeps a
# client that declares a huge body and sends nothing from reserving memory up front.
DIRECT_MAX_BYTES: Final = 256 * 1024 * 1024
_READ_SIZE: Final = 256 * 1024  # what uvloop reads per call for a plain Protocol


def direct_body_size(method: bytes, path: str, headers: list[tuple[bytes, bytes]]) -> int | None:
    """The body size to receive directly, or None for uvicorn's own path (pure, for tests)."""
    if method != b"POST" or INFER_PATH.match(path) is None:
        return None
    length: int | None = None
    for name, value in headers:
        if name == b"transfer-encoding":
            return None
        if name == b"content-length":
            if not value.isdigit() or length is not None:
                return None  # malformed or repeated: the parser and the app will say so
            length = int(value)
    if length is None or not DIRECT_MIN_BYTES <= length <= DIRECT_MAX_BYTES:
        return None
    return length


class _DirectBodyHttp(HttpToolsProtocol):
    """uvicorn's protocol, told by `DirectBodyProtocol` what the socket read; it decides when
    the socket reads into a request's body buffer instead of through the parser."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._scratch = memoryview(bytearray(_READ_SIZE))
        self._body: memoryview | None = None
        self._received = 0
        self._direct = DirectBody()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._body is not None:
            return self._body[self._received :]
        return self._scratch

    def buffer_updated(self, nbytes: int) -> None:
        if self._body is None:
            # The parser copies what it keeps (URL, headers, body pieces) before returning,
            # so the scratch buffer can be read into again.
            self.data_received(self._scratch[:nbytes])  # type: ignore[arg-type]
            return
        self._received += nbytes
        if self._received == len(self._body):
            # The parser saw the head only and still waits for the body: a fresh parser
            # starts at the next request, as the old one would have after the last byte.
            self.parser = _new_parser(self)
            self.on_message_complete()

    # httptools callbacks
    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        size = direct_body_size(self.parser.get_method(), self.scope.get("path", ""), self.headers)
        if size is not None and self.cycle is not None:
            allocate: BodyAllocator | None = self.app_state.get(BODY_ALLOCATOR_KEY)
            buffer = allocate(size) if allocate is not None else None
            self._body = buffer if buffer is not None else np.empty(size, dtype=np.uint8).data
            self._received = 0
            self._direct = DirectBody()
            self.scope[DIRECT_BODY_KEY] = self._direct  # type: ignore[typeddict-unknown-key]

    def on_body(self, body: bytes) -> None:
        if self._body is None:
            super().on_body(body)
            return
        # Body bytes that came in the same read as the head: the parser hands them over.
        end = self._received + len(body)
        self._body[self._received : end] = body
        self._received = end

    def on_message_complete(self) -> None:
        if self._body is not None:
            # uvicorn's receive() then says the body is complete (and is empty): the app
            # takes the body from the scope's DirectBody.
            self._direct.data = self._body
            self._body = None
        super().on_message_complete()


class DirectBodyProtocol(asyncio.BufferedProtocol):
    """What uvicorn's `Config(http=...)` takes: a BufferedProtocol around `_DirectBodyHttp`.

    A wrapper, not a subclass: uvloop reads into `get_buffer` only for protocols that are not
    `asyncio.Protocol` instances, and uvicorn's protocol is one.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.http = _DirectBodyHttp(*args, **kwargs)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.http.connection_made(transport)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        self.http.connection_lost(exc)

    def eof_received(self) -> None:
        self.http.eof_received()

    def pause_writing(self) -> None:
        self.http.pause_writing()

    def resume_writing(self) -> None:
        self.http.resume_writing()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.http.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self.http.buffer_updated(nbytes)


def _new_parser(protocol: HttpToolsProtocol) -> httptools.HttpRequestParser:
    parser = httptools.HttpRequestParser(protocol)
    # As uvicorn sets it: answer the first of pipelined requests after a close.
    with contextlib.suppress(AttributeError):  # httptools < 0.6.3 has no such setting
        parser.set_dangerous_leniencies(lenient_data_after_close=True)
    return parser
