"""POST /v2/models/{name}[/versions/{v}]/infer as plain ASGI: the request path, kept lean.

On a GPU a request is about a millisecond, so what the web framework does per request shows
in every number (routing, dependency injection, a Request object, body streaming through
Starlette). `InferFastPath`, the ASGI app uvicorn runs, answers the infer route itself,
before FastAPI sees the request, with the same steps and the same answers: `oip` decodes and
validates, the engine runs the model, `oip` encodes, `server_metrics` records the outcome
under Triton's names. Client mistakes leave as `{"error": message}` with a 4xx; anything
else as a 500, never a traceback. Every other route goes on to FastAPI.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Final

from fastapi import FastAPI

from bakeoff_serve import model_configs, oip
from bakeoff_serve.app.dependencies import ServerState

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

INFER_PATH: Final = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
_JSON: Final = [(b"content-type", b"application/json")]
# The scope key of a `DirectBody`: set when the head arrives, before the app starts, so that
# a middleware's copy of the scope shares it.
DIRECT_BODY_KEY: Final = "bakeoff.direct_body"


# The lifespan state key of a `BodyAllocator`: where `DirectBodyProtocol` receives bodies.
BODY_ALLOCATOR_KEY: Final = "bakeoff.body_allocator"
# A body's size -> a buffer of that size (page-locked memory on a GPU), or None for np.empty.
BodyAllocator = Callable[[int], memoryview | None]


@dataclass
class DirectBody:
    """A body `http_protocol.DirectBodyProtocol` receives into one buffer, past uvicorn's
    `receive()` (which would copy it): `data` is set once the last byte is in."""

    data: memoryview | None = None


class InferFastPath:
    """The server's ASGI app: the infer route here, everything else to the FastAPI app.

    Outermost, not a Starlette middleware: inside FastAPI, each request also went through
    its telemetry wrapper (which asks OpenTelemetry whether it is on, per request), its
    error middleware and Starlette's app dispatch: about 0.2 ms of a batch-1 request on the
    2-core development machine (a null model, 0.39 -> 0.2 ms).
    """

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = INFER_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        state: ServerState = self.app.state.bakeoff
        try:
            status, body, headers = await _infer(state, match[1], match[2] or "", scope, receive)
        except oip.OipError as error:
            status, body, headers = error.status, oip.error_body(error.message), _JSON
        except Exception as error:  # a bug or a device failure: a 500 naming it, and a log
            log.exception("inference failed")
            message = f"internal server error: {type(error).__name__}: {error}"
            status, body, headers = 500, oip.error_body(message), _JSON
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [*headers, (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def _read_body(scope: Scope, receive: Receive) -> bytes | memoryview:
    """The whole body; sized up front from Content-Length, refused past oip.MAX_BODY_BYTES."""
    length = _header(scope, b"content-length")
    if length is not None and length.isdigit() and int(length) > oip.MAX_BODY_BYTES:
        raise oip.OipError(413, f"request body exceeds {oip.MAX_BODY_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise oip.OipError(400, "the client went away before the body was complete")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > oip.MAX_BODY_BYTES:
            raise oip.OipError(413, f"request body exceeds {oip.MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    direct: DirectBody | None = scope.get(DIRECT_BODY_KEY)
    if direct is not None and direct.data is not None:
        body, direct.data = direct.data, None
        return body
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _infer(
    state: ServerState, model_name: str, model_version: str, scope: Scope, receive: Receive
) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    signature = state.signature
    oip.resolve_model(signature, model_name, model_version)
    state.require_ready()
    body = await _read_body(scope, receive)
    # Like Triton, the request clock starts once the body is in: network time is the client's.
    started_ns = time.perf_counter_ns()
    try:
        decoded = oip.decode_http_infer(
            signature,
            body,
            _header(scope, oip.HEADER_LENGTH.lower().encode()),
            _header(scope, b"content-encoding"),
        )
        embeddings, timings = await state.engine.infer(decoded.inputs[model_configs.INPUT_NAME])
        content, headers = oip.encode_http_infer(
            signature, decoded, {model_configs.OUTPUT_NAME: embeddings}
        )
    except oip.OipError:
        state.metrics.record_failure(signature.name, signature.version, "OTHER")
        raise
    except Exception:
        state.metrics.record_failure(signature.name, signature.version, "BACKEND")
        raise
    state.metrics.record_success(
        signature.name,
        signature.version,
        batch_size=decoded.batch_size,
        request_duration_ns=time.perf_counter_ns() - started_ns,
        timings=timings,
    )
    encoded = [
        (key.lower().encode("latin-1"), value.encode("latin-1")) for key, value in headers.items()
    ]
    return 200, content, encoded
