"""Large infer bodies received straight into one buffer (`app.http_protocol`), over raw sockets.

The PyTorch server reads an infer body of 64 KiB or more past uvicorn's parser, into one
buffer. These tests send such bodies the ways a network delivers them (all at once, dribbled
in pieces split inside the head, pipelined behind one another, gzip-compressed, abandoned half
way, answered with an error before the body is read) and check the answers against the same
pixels sent over gRPC, which never touches the HTTP path. The request bodies are built by the
official `tritonclient`.
"""

from __future__ import annotations

import gzip
import socket
import time
from typing import TYPE_CHECKING

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from bakeoff_serve import model
from bakeoff_serve.app import http_protocol

if TYPE_CHECKING:
    from conftest import PytorchServer

pytestmark = pytest.mark.protocol

TIMEOUT_S = 30.0
BATCH = 4  # 4 x 3 x 224 x 224 FP32: 2.4 MB, far past DIRECT_MIN_BYTES


def _pixels(seed: int, batch: int = BATCH) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, 3, 224, 224), dtype=np.float32)


def _request(server: PytorchServer, pixels: np.ndarray, *, model_name: str | None = None,
             gzipped: bool = False) -> bytes:  # fmt: skip
    """One whole HTTP/1.1 request: head and body, the body encoded by tritonclient."""
    tensor = httpclient.InferInput(model.INPUT_NAME, list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels, binary_data=True)
    output = httpclient.InferRequestedOutput(model.OUTPUT_NAME, binary_data=True)
    body, json_size = httpclient.InferenceServerClient.generate_request_body([tensor], [output])
    headers = [f"Inference-Header-Content-Length: {json_size}"]
    if gzipped:
        body = gzip.compress(body, compresslevel=1)
        headers.append("Content-Encoding: gzip")
    assert len(body) >= http_protocol.DIRECT_MIN_BYTES
    head = (
        f"POST /v2/models/{model_name or server.model_name}/infer HTTP/1.1\r\n"
        f"Host: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {len(body)}\r\n" + "".join(f"{h}\r\n" for h in headers) + "\r\n"
    )
    return head.encode() + body


class _Responses:
    """Reads HTTP/1.1 responses off one socket in order, keeping what follows each one."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> None:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("the server closed the connection")
        self.buffer += data

    def next(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
        length = int(headers["content-length"])
        while len(self.buffer) < length:
            self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return int(status_line.split()[1]), headers, body


def _embeddings(headers: dict[str, str], body: bytes) -> np.ndarray:
    result = httpclient.InferenceServerClient.parse_response_body(
        body, header_length=int(headers["inference-header-content-length"])
    )
    return result.as_numpy(model.OUTPUT_NAME)


def _over_grpc(server: PytorchServer, pixels: np.ndarray) -> np.ndarray:
    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        tensor = grpcclient.InferInput(model.INPUT_NAME, list(pixels.shape), "FP32")
        tensor.set_data_from_numpy(pixels)
        return client.infer(server.model_name, [tensor]).as_numpy(model.OUTPUT_NAME)
    finally:
        client.close()


def _connect(server: PytorchServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape == (len(want), 512)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_large_body_sent_at_once_answers_like_grpc(pytorch_server: PytorchServer) -> None:
    pixels = _pixels(1)
    with _connect(pytorch_server) as sock:
        sock.sendall(_request(pytorch_server, pixels))
        status, headers, body = _Responses(sock).next()
    assert status == 200, body[:300]
    _assert_same(_embeddings(headers, body), _over_grpc(pytorch_server, pixels))


def test_a_body_dribbled_in_uneven_pieces_split_inside_the_head(
    pytorch_server: PytorchServer,
) -> None:
    pixels = _pixels(2)
    request = _request(pytorch_server, pixels)
    head_end = request.index(b"\r\n\r\n") + 4
    # Cuts inside the head, just past it (a few body bytes come with the head), then pieces
    # of prime sizes that never line up with the server's read size.
    cuts = [17, head_end + 5]
    rng = np.random.default_rng(3)
    while cuts[-1] < len(request):
        cuts.append(cuts[-1] + int(rng.choice([1, 7, 4093, 65537, 300007])))
    with _connect(pytorch_server) as sock:
        start = 0
        for cut in cuts:
            sock.sendall(request[start:cut])
            start = cut
            time.sleep(0.0005)
        status, headers, body = _Responses(sock).next()
    assert status == 200, body[:300]
    _assert_same(_embeddings(headers, body), _over_grpc(pytorch_server, pixels))


def test_pipelined_requests_on_one_connection_answer_in_order(
    pytorch_server: PytorchServer,
) -> None:
    first, second = _pixels(4), _pixels(5, batch=2)
    small = b"GET /v2/health/ready HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with _connect(pytorch_server) as sock:
        sock.sendall(_request(pytorch_server, first) + _request(pytorch_server, second) + small)
        responses = _Responses(sock)
        answers = [responses.next() for _ in range(3)]
    assert [status for status, _, _ in answers] == [200, 200, 200]
    _assert_same(_embeddings(*answers[0][1:]), _over_grpc(pytorch_server, first))
    _assert_same(_embeddings(*answers[1][1:]), _over_grpc(pytorch_server, second))


def test_a_gzip_body_is_received_whole_then_inflated(pytorch_server: PytorchServer) -> None:
    pixels = _pixels(6)
    with _connect(pytorch_server) as sock:
        sock.sendall(_request(pytorch_server, pixels, gzipped=True))
        status, headers, body = _Responses(sock).next()
    assert status == 200, body[:300]
    _assert_same(_embeddings(headers, body), _over_grpc(pytorch_server, pixels))


def test_an_error_answered_before_the_body_keeps_the_connection_usable(
    pytorch_server: PytorchServer,
) -> None:
    # An unknown model is refused from the head alone; the body that follows must still be
    # read to its end, or the next request on the connection would start inside it.
    pixels = _pixels(7)
    with _connect(pytorch_server) as sock:
        responses = _Responses(sock)
        sock.sendall(_request(pytorch_server, pixels, model_name="no-such-model"))
        status, _, body = responses.next()
        assert status == 404, body[:300]
        assert b"no-such-model" in body
        sock.sendall(_request(pytorch_server, pixels))
        status, headers, body = responses.next()
    assert status == 200, body[:300]
    _assert_same(_embeddings(headers, body), _over_grpc(pytorch_server, pixels))


def test_a_client_gone_half_way_through_a_body_leaves_the_server_serving(
    pytorch_server: PytorchServer,
) -> None:
    pixels = _pixels(8)
    request = _request(pytorch_server, pixels)
    for _ in range(3):
        with _connect(pytorch_server) as sock:
            sock.sendall(request[: len(request) // 2])
    with _connect(pytorch_server) as sock:
        sock.sendall(request)
        status, headers, body = _Responses(sock).next()
    assert status == 200, body[:300]
    _assert_same(_embeddings(headers, body), _over_grpc(pytorch_server, pixels))
