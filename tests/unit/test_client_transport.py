"""`OipClient.infer`'s own HTTP/1.1 transport against a scripted raw server on loopback.

The server answers each infer by the model name in its path ("chunked", "close", "slow",
...), writing exact bytes, so every framing a real server may choose (uvicorn and Triton
send Content-Length; Triton answers HTTP/1.0 without one; proxies send chunked) and every
failure (errors, drops, stalls, stale keep-alives, garbage) is reproduced on purpose. Every
test runs on asyncio's loop and on uvloop, the two loops the load generator runs on.
"""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pytest
import uvloop

from bakeoff_bench import client as oip
from bakeoff_bench import http1, payloads

EMBEDDING = np.arange(2 * 512, dtype="<f4").reshape(2, 512) / 7.0  # 4 KiB of binary output
JSON_OK = b'{"model_name":"m","outputs":[]}'


def binary_response() -> tuple[bytes, int]:
    """An OIP binary-output body (JSON header then raw FP32) and its header length."""
    header = orjson.dumps(
        {
            "model_name": "m",
            "outputs": [
                {
                    "name": "embedding",
                    "datatype": "FP32",
                    "shape": list(EMBEDDING.shape),
                    "parameters": {"binary_data_size": EMBEDDING.nbytes},
                }
            ],
        }
    )
    return header + EMBEDDING.tobytes(), len(header)


def head(status: str, *headers: str) -> bytes:
    return ("\r\n".join([f"HTTP/1.1 {status}", *headers]) + "\r\n\r\n").encode()


@dataclass
class Exchange:
    """What the scripted server knows about the request it is answering."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    index_on_connection: int  # 0 for the first request on this connection


Behaviour = Callable[["RawServer", Exchange], Awaitable[bool]]  # True: keep the connection


async def ok_length(server: RawServer, ex: Exchange) -> bool:
    body, json_end = binary_response()
    ex.writer.write(
        head(
            "200 OK",
            "Content-Type: application/octet-stream",
            f"Inference-Header-Content-Length: {json_end}",
            f"Content-Length: {len(body)}",
        )
        + body
    )
    return True


async def ok_chunked(server: RawServer, ex: Exchange) -> bool:
    body, json_end = binary_response()
    pieces = [body[:100], body[100:101], body[101:3000], body[3000:]]
    chunks = b"".join(f"{len(p):x};ext=1\r\n".encode() + p + b"\r\n" for p in pieces)
    ex.writer.write(
        head(
            "200 OK",
            f"Inference-Header-Content-Length: {json_end}",
            "Transfer-Encoding: chunked",
        )
        + chunks
        + b"0\r\nX-Trailer: yes\r\n\r\n"
    )
    return True


async def ok_then_close(server: RawServer, ex: Exchange) -> bool:
    body, json_end = binary_response()
    ex.writer.write(
        head(
            "200 OK",
            "Connection: close",
            f"Inference-Header-Content-Length: {json_end}",
            f"Content-Length: {len(body)}",
        )
        + body
    )
    return False


async def http10_until_close(server: RawServer, ex: Exchange) -> bool:
    # Triton's answer to an HTTP/1.0 request: no Content-Length, the body ends at the FIN.
    body, json_end = binary_response()
    ex.writer.write(
        f"HTTP/1.0 200 OK\r\nInference-Header-Content-Length: {json_end}\r\n\r\n".encode() + body
    )
    return False


async def trickle(server: RawServer, ex: Exchange) -> bool:
    # Split inside the status line, inside the blank line ending the head, and in the body.
    body, json_end = binary_response()
    data = (
        head(
            "200 OK",
            f"Inference-Header-Content-Length: {json_end}",
            f"Content-Length: {len(body)}",
        )
        + body
    )
    cut = data.index(b"\r\n\r\n") + 2
    for piece in (data[:5], data[5:cut], data[cut : cut + 3], data[cut + 3 : 400], data[400:]):
        ex.writer.write(piece)
        await ex.writer.drain()
        await asyncio.sleep(0.002)
    return True


async def continue_then_ok(server: RawServer, ex: Exchange) -> bool:
    ex.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    return await ok_length(server, ex)


async def gzip_body(server: RawServer, ex: Exchange) -> bool:
    body, json_end = binary_response()
    packed = gzip.compress(body)
    ex.writer.write(
        head(
            "200 OK",
            "Content-Encoding: gzip",
            f"Inference-Header-Content-Length: {json_end}",
            f"Content-Length: {len(packed)}",
        )
        + packed
    )
    return True


async def no_content(server: RawServer, ex: Exchange) -> bool:
    ex.writer.write(head("204 No Content"))
    return True


async def big_body(server: RawServer, ex: Exchange) -> bool:
    raw = np.arange(1_500_000, dtype="<f4")  # 6 MB: many reads on the client side
    header = orjson.dumps(
        {
            "outputs": [
                {
                    "name": "embedding",
                    "datatype": "FP32",
                    "shape": [1, raw.size],
                    "parameters": {"binary_data_size": raw.nbytes},
                }
            ]
        }
    )
    body = header + raw.tobytes()
    ex.writer.write(
        head(
            "200 OK",
            f"Inference-Header-Content-Length: {len(header)}",
            f"Content-Length: {len(body)}",
        )
        + body
    )
    return True


async def http_error(server: RawServer, ex: Exchange) -> bool:
    # Triton sends its error JSON as text/plain.
    message = b'{"error":"simulated failure"}'
    ex.writer.write(
        head("400 Bad Request", "Content-Type: text/plain", f"Content-Length: {len(message)}")
        + message
    )
    return True


async def drop(server: RawServer, ex: Exchange) -> bool:
    return False  # read the request, answer nothing, close


async def stall(server: RawServer, ex: Exchange) -> bool:
    await ex.reader.read(1)  # never answers; returns when the client goes away
    return False


async def stale_keep_alive(server: RawServer, ex: Exchange) -> bool:
    # The keep-alive timeout fires just as the second request arrives: closed unanswered.
    if ex.index_on_connection == 0:
        return await ok_length(server, ex)
    return False


async def answer_then_close(server: RawServer, ex: Exchange) -> bool:
    # A keep-alive answer, then the server's keep-alive timeout closes the connection.
    await ok_length(server, ex)
    return False


async def garbage(server: RawServer, ex: Exchange) -> bool:
    ex.writer.write(b"SPDY/3 200 OK\r\n\r\n")
    return True


BEHAVIOURS: dict[str, Behaviour] = {
    "length": ok_length,
    "chunked": ok_chunked,
    "close": ok_then_close,
    "http10": http10_until_close,
    "trickle": trickle,
    "continue": continue_then_ok,
    "gzip": gzip_body,
    "nocontent": no_content,
    "big": big_body,
    "error": http_error,
    "drop": drop,
    "stall": stall,
    "stale": stale_keep_alive,
    "closeidle": answer_then_close,
    "garbage": garbage,
}


@dataclass
class RawServer:
    """Reads HTTP/1.1 requests exactly and answers with the behaviour the path names."""

    connections: int = 0
    open_connections: int = 0
    requests: list[bytes] = field(default_factory=list)  # raw request bytes, head and body
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    url: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_connections += 1
        self.writers.append(writer)
        index = 0
        try:
            while True:
                request_head = await reader.readuntil(b"\r\n\r\n")
                lines = request_head.decode("latin-1").split("\r\n")
                target = lines[0].split(" ")[1]
                lengths = [
                    v
                    for k, _, v in (h.partition(":") for h in lines[1:])
                    if k.lower() == "content-length"
                ]
                body = await reader.readexactly(int(lengths[0]) if lengths else 0)
                self.requests.append(request_head + body)
                keep = await BEHAVIOURS[target.split("/")[3]](self, Exchange(reader, writer, index))
                await writer.drain()
                index += 1
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed: what a client closing its pool does
        finally:
            self.open_connections -= 1
            writer.close()


def run(loop_kind: str, main: Callable[[RawServer], Awaitable[Any]]) -> Any:
    """Run `main(server)` on a fresh loop of `loop_kind` with a RawServer on loopback."""

    async def with_server() -> Any:
        server = RawServer()
        listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        server.url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
        try:
            return await main(server)
        finally:
            for writer in server.writers:
                writer.close()
            listener.close()
            await listener.wait_closed()

    factory = uvloop.new_event_loop if loop_kind == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(with_server())


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    yield request.param


def payload() -> payloads.Payload:
    images = payloads.seeded_images(3, [1, 3, 8, 8])
    return payloads.build_payload("pixel_values", "embedding", images)


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.01)


def test_sequential_requests_reuse_one_keep_alive_connection(loop_kind: str) -> None:
    async def main(server: RawServer) -> None:
        async with oip.make_session(4, 10.0) as session:
            client = oip.OipClient(session, server.url, "length")
            outcomes = [await client.infer(payload()) for _ in range(50)]
        assert all(ok for _, ok, _ in outcomes)
        assert (server.connections, len(server.requests)) == (1, 50)

    run(loop_kind, main)


def test_concurrent_requests_open_one_connection_per_request_in_flight(loop_kind: str) -> None:
    async def main(server: RawServer) -> None:
        async with oip.make_session(8, 10.0) as session:
            client = oip.OipClient(session, server.url, "length")
            sent = payload()

            async def worker() -> list[oip.InferOutcome]:
                return [await client.infer(sent) for _ in range(25)]

            results = await asyncio.gather(*(worker() for _ in range(8)))
        assert all(ok for outcomes in results for _, ok, _ in outcomes)
        assert (server.connections, len(server.requests)) == (8, 200)

    run(loop_kind, main)


def test_request_is_the_payload_bytes_with_framing_and_no_accept_encoding(loop_kind: str) -> None:
    async def main(server: RawServer) -> None:
        sent = payload()
        async with oip.make_session(1, 10.0) as session:
            client = oip.OipClient(session, server.url, "length")
            await client.infer(sent)
        request = server.requests[0]
        request_head, _, body = request.partition(b"\r\n\r\n")
        lines = request_head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        assert lines[0] == "POST /v2/models/length/infer HTTP/1.1"
        assert body == sent.body
        assert headers["content-length"] == str(len(sent.body))
        assert headers["inference-header-content-length"] == sent.headers[payloads.HEADER_LENGTH]
        assert headers["host"] == server.url.removeprefix("http://")
        # Triton gzips its answer when asked; every backend must be measured uncompressed.
        assert "accept-encoding" not in headers

    run(loop_kind, main)


@pytest.mark.parametrize(
    ("model", "connections_after_3"),
    [
        ("length", 1),
        ("chunked", 1),
        ("trickle", 1),
        ("continue", 1),
        ("close", 3),  # Connection: close: a new connection per request
        ("http10", 3),  # body until FIN: likewise
    ],
)
def test_every_framing_is_read_whole_and_reuse_follows_the_server(
    loop_kind: str, model: str, connections_after_3: int
) -> None:
    async def main(server: RawServer) -> None:
        async with oip.make_session(1, 10.0) as session:
            client = oip.OipClient(session, server.url, model)
            decoded = await client.infer_decoded(payload())
            latency, ok, error = await client.infer(payload())
            again = await client.infer_decoded(payload())
        np.testing.assert_array_equal(decoded["embedding"], EMBEDDING)
        np.testing.assert_array_equal(again["embedding"], EMBEDDING)
        assert (ok, error) == (True, None) and latency > 0
        assert server.connections == connections_after_3

    run(loop_kind, main)


def test_binary_responses_of_megabytes_arrive_intact(loop_kind: str) -> None:
    async def main(server: RawServer) -> None:
        async with oip.make_session(1, 10.0) as session:
            client = oip.OipClient(session, server.url, "big")
            _, ok, _ = await client.infer(payload())  # counted, not kept
            decoded = await client.infer_decoded(payload())
        assert ok
        np.testing.assert_array_equal(decoded["embedding"][0], np.arange(1_500_000, dtype="<f4"))
        assert server.connections == 1

    run(loop_kind, main)


def test_gzip_and_empty_responses_are_handled(loop_kind: str) -> None:
    async def main(server: RawServer) -> None:
        async with oip.make_session(1, 10.0) as session:
            decoded = await oip.OipClient(session, server.url, "gzip").infer_decoded(payload())
            outcome = await oip.OipClient(session, server.url, "nocontent").infer(payload())
        np.testing.assert_array_equal(decoded["embedding"], EMBEDDING)
        assert outcome[1:] == (True, None)

    run(loop_kind, main)


def test_http_errors_are_data_with_the_servers_message(loop_kind: str) -> None:
    async def main(server: RawServer) -> None:
        async with oip.make_session(1, 10.0) as session:
            client = oip.OipClient(session, server.url, "error")
            outcomes = [await client.infer(payload()) for _ in range(3)]
            with pytest.raises(oip.BackendResponseError, match="HTTP 400: simulated failure"):
                await client.infer_decoded(payload())
        assert [o[1:] for o in outcomes] == [(False, ("HTTP 400", "simulated failure"))] * 3
        assert server.connections == 1  # an error answer keeps the connection

    run(loop_kind, main)


@pytest.mark.parametrize(
    ("model", "error_type"),
    [("drop", "ServerDisconnectedError"), ("garbage", "BadHttpResponseError")],
)
def test_broken_answers_are_data_and_the_next_request_works(
    loop_kind: str, model: str, error_type: str
) -> None:
    async def main(server: RawServer) -> None:
        async with oip.make_session(1, 10.0) as session:
            latency, ok, error = await oip.OipClient(session, server.url, model).infer(payload())
            good = await oip.OipClient(session, server.url, "length").infer(payload())
        assert not ok and error is not None and error[0] == error_type
        assert latency >= 0
        assert good[1:] == (True, None)

    run(loop_kind, main)


def test_a_refused_connection_is_data(loop_kind: str) -> None:
    async def main(server: RawServer) -> None:
        async with oip.make_session(1, 10.0) as session:
            # Port 1 on loopback: nothing listens there.
            _, ok, error = await oip.OipClient(session, "http://127.0.0.1:1", "m").infer(payload())
            with pytest.raises(oip.BackendResponseError, match="ConnectionRefusedError"):
                await oip.OipClient(session, "http://127.0.0.1:1", "m").infer_decoded(payload())
        assert not ok and error is not None and error[0] == "ConnectionRefusedError"

    run(loop_kind, main)


def test_a_stalled_response_times_out_and_its_connection_is_not_reused(loop_kind: str) -> None:
    async def main(server: RawServer) -> None:
        async with oip.make_session(1, 0.3) as session:
            latency, ok, error = await oip.OipClient(session, server.url, "stall").infer(payload())
            good = await oip.OipClient(session, server.url, "length").infer(payload())
        assert not ok and error == ("TimeoutError", "no complete response within 0.3 s")
        # The watchdog ticks every timeout/20: the request fails soon after its deadline.
        assert 0.3 <= latency < 0.45
        assert good[1:] == (True, None)
        assert server.connections == 2

    run(loop_kind, main)


def test_a_keep_alive_closed_by_the_server_as_the_request_left_is_retried_once(
    loop_kind: str,
) -> None:
    async def main(server: RawServer) -> None:
        async with oip.make_session(1, 10.0) as session:
            client = oip.OipClient(session, server.url, "stale")
            outcomes = [await client.infer(payload()) for _ in range(3)]
        assert [o[1:] for o in outcomes] == [(True, None)] * 3
        # Request 2 met the closing connection and went again on a fresh one, and so on.
        assert (server.connections, len(server.requests)) == (3, 5)

    run(loop_kind, main)


@pytest.mark.parametrize("pause_s", [0.0, 0.05], ids=["racing-the-fin", "after-the-fin"])
def test_an_idle_connection_closed_by_the_server_is_not_used_again(
    loop_kind: str, pause_s: float
) -> None:
    async def main(server: RawServer) -> None:
        async with oip.make_session(1, 10.0) as session:
            client = oip.OipClient(session, server.url, "closeidle")
            outcomes = []
            for _ in range(3):
                outcomes.append(await client.infer(payload()))
                await asyncio.sleep(pause_s)
        assert [o[1:] for o in outcomes] == [(True, None)] * 3
        assert len(server.requests) in (3, 4, 5)  # a request that met a FIN went again

    run(loop_kind, main)


def test_closing_the_session_closes_the_infer_connections(loop_kind: str) -> None:
    async def main(server: RawServer) -> None:
        async with oip.make_session(4, 10.0) as session:
            client = oip.OipClient(session, server.url, "length")
            await asyncio.gather(*(client.infer(payload()) for _ in range(4)))
            assert server.open_connections == 4
        await wait_until(lambda: server.open_connections == 0)

    run(loop_kind, main)


def test_a_cancelled_request_does_not_leave_its_connection_in_the_pool(loop_kind: str) -> None:
    async def main(server: RawServer) -> None:
        async with oip.make_session(1, 10.0) as session:
            stalled = asyncio.ensure_future(
                oip.OipClient(session, server.url, "stall").infer(payload())
            )
            await wait_until(lambda: len(server.requests) == 1)
            stalled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await stalled
            await wait_until(lambda: server.open_connections == 0)

    run(loop_kind, main)


def test_event_loop_factory_prefers_uvloop() -> None:
    loop = oip.event_loop_factory()()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


@pytest.mark.parametrize(
    ("head", "framing"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 12", (200, False, "length", 12)),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length:12\r\nconnection: keep-alive",
            (200, False, "length", 12),
        ),
        (b"HTTP/1.1 400 Bad\r\nCONTENT-LENGTH:  7 \r\nConnection: Close", (400, True, "length", 7)),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5",
            (200, False, "chunked", 0),
        ),
        (b"HTTP/1.1 200 OK", (200, True, "until-close", 0)),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 3", (200, True, "length", 3)),
        (
            b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive",
            (200, False, "length", 3),
        ),
        (b"HTTP/1.1 204 No Content\r\nContent-Length: 0", (204, False, "none", 0)),
        (b"HTTP/1.1 100 Continue", (100, False, "none", 0)),
    ],
)
def test_read_framing_follows_rfc_9112(head: bytes, framing: tuple[int, bool, str, int]) -> None:
    states = {
        http1._LENGTH: "length",
        http1._CHUNK_SIZE: "chunked",
        http1._UNTIL_CLOSE: "until-close",
        http1._HEAD: "none",
    }
    status, close, state, length = http1.read_framing(head)
    assert (status, close, states[state], length) == framing


@pytest.mark.parametrize(
    "head",
    [
        b"SPDY/3 200 OK",
        b"HTTP/1.1 2x0 OK",
        b"HTTP/1.1 101 Switching",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1",
    ],
)
def test_read_framing_rejects_what_it_cannot_frame(head: bytes) -> None:
    with pytest.raises((http1.BadHttpResponseError, ValueError)):
        http1.read_framing(head)
