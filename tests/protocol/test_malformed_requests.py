"""Malformed inference requests never crash Bakeoff's PyTorch server (hypothesis).

Random JSON bodies, infer requests with wrong names, shapes, datatypes and data, truncated
binary sections, bad `Inference-Header-Content-Length` values, huge declared sizes, garbage
compressed bodies; over gRPC, random ModelInferRequests and undecodable bytes. Every HTTP answer
must be a 4xx with KServe's `{"error": message}` body (never a 5xx, never a hung connection),
every gRPC answer a client-error status, and the server must still answer a valid request after
each run. The server has no OpenAPI document (KServe v2 is the contract), so the requests are
generated here rather than by schemathesis.
"""

from __future__ import annotations

import http.client
import json
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
from fuzz_strategies import json_values
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2, service_pb2_grpc

from bakeoff_serve import model

if TYPE_CHECKING:
    from conftest import PytorchServer

pytestmark = pytest.mark.protocol

IN = model.INPUT_NAME
GOOD_SHAPE = [1, 3, 224, 224]
GOOD_BYTES = 1 * 3 * 224 * 224 * 4
TIMEOUT_S = 30  # a hung connection fails the test instead of hanging it
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNIMPLEMENTED,
}

datatypes = st.sampled_from(["FP32", "FP16", "INT32", "BYTES", "BOOL", "fp32", ""]) | st.text(
    max_size=8
)
shapes = st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=6) | json_values


def post(
    server: PytorchServer, body: bytes, headers: dict[str, str], path: str | None = None
) -> tuple[int, bytes]:
    """One raw POST on a fresh connection; a socket timeout fails the test."""
    connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=TIMEOUT_S)
    try:
        connection.request("POST", path or f"/v2/models/{server.model_name}/infer", body, headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def assert_kserve_client_error(status: int, body: bytes) -> None:
    assert 400 <= status < 500, (status, body[:300])
    document = orjson.loads(body)
    assert isinstance(document, dict) and isinstance(document.get("error"), str), body[:300]
    assert document["error"]


def assert_still_serving(server: PytorchServer) -> None:
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=60.0)
    try:
        pixels = np.random.default_rng(0).random(GOOD_SHAPE, dtype=np.float32)
        tensor = httpclient.InferInput(IN, GOOD_SHAPE, "FP32")
        tensor.set_data_from_numpy(pixels, binary_data=True)
        result = client.infer(server.model_name, [tensor])
        assert result.as_numpy(model.OUTPUT_NAME).shape == (1, 512)
    finally:
        client.close()


@pytest.fixture
def server(pytorch_server: PytorchServer) -> PytorchServer:
    """The session's server; checked to serve a valid request once the fuzz is done."""
    yield pytorch_server  # type: ignore[misc]
    assert_still_serving(pytorch_server)


# ----- HTTP -----------------------------------------------------------------------------------


@FUZZ
@given(body=json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()) | st.binary())
def test_random_body_is_a_4xx_with_an_error(server: PytorchServer, body: bytes) -> None:
    assert_kserve_client_error(*post(server, body, {"Content-Type": "application/json"}))


@st.composite
def wrong_inputs(draw: st.DrawFn) -> dict[str, Any]:
    """An infer request whose one input is wrong in name, datatype, shape or data."""
    item: dict[str, Any] = {
        "name": draw(st.sampled_from([IN]) | json_values),
        "datatype": draw(st.sampled_from(["FP32"]) | datatypes | json_values),
        "shape": draw(st.sampled_from([GOOD_SHAPE]) | shapes),
        "data": draw(json_values | st.lists(st.floats(), max_size=50)),
    }
    if draw(st.booleans()):
        item["parameters"] = draw(json_values)
    request: dict[str, Any] = {"inputs": draw(st.sampled_from([[item], [item, item], item]))}
    for key in ("id", "outputs", "parameters"):
        if draw(st.booleans()):
            request[key] = draw(json_values)
    return request


@FUZZ
@given(request=wrong_inputs())
def test_wrong_input_is_a_4xx_with_an_error(server: PytorchServer, request: Any) -> None:
    body = json.dumps(request, allow_nan=True).encode()
    assert_kserve_client_error(*post(server, body, {}))


@st.composite
def bad_binary_requests(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """JSON header + binary tensor data, with the sizes or the header length wrong."""
    declared = draw(st.sampled_from([GOOD_BYTES]) | st.integers(-(2**64), 2**64))
    tensor = {"name": IN, "datatype": "FP32", "shape": GOOD_SHAPE,
              "parameters": {"binary_data_size": declared}}  # fmt: skip
    header = json.dumps({"inputs": [tensor]}).encode()  # json: sizes past 64 bits too
    sent = draw(st.integers(0, GOOD_BYTES + 16))
    length = draw(
        st.sampled_from([str(len(header))])
        | st.integers(-(2**64), 2**64).map(str)
        | st.text(max_size=12).filter(lambda t: t.isprintable() and t.isascii())
    )
    # Never the one valid combination: everything declared and sent, and the length right.
    if declared == sent == GOOD_BYTES and length.strip() == str(len(header)):
        sent -= 1
    return header + bytes(sent), {"Inference-Header-Content-Length": length}


@FUZZ
@given(request=bad_binary_requests())
def test_bad_binary_section_is_a_4xx_with_an_error(
    server: PytorchServer, request: tuple[bytes, dict[str, str]]
) -> None:
    assert_kserve_client_error(*post(server, *request))


@FUZZ
@given(body=st.binary(max_size=256), encoding=st.sampled_from(["gzip", "deflate", "br", "x"]))
def test_garbage_compressed_body_is_a_4xx_with_an_error(
    server: PytorchServer, body: bytes, encoding: str
) -> None:
    assert_kserve_client_error(*post(server, body, {"Content-Encoding": encoding}))


# ----- gRPC -----------------------------------------------------------------------------------


@st.composite
def infer_requests(draw: st.DrawFn) -> Any:
    request = service_pb2.ModelInferRequest(
        model_name=draw(st.sampled_from(["clip-tiny", "", "x"])),
        model_version=draw(st.sampled_from(["", "1", "7"])),
        id=draw(st.text(max_size=8)),
    )
    for _ in range(draw(st.integers(0, 3))):
        tensor = request.inputs.add(
            name=draw(st.sampled_from([IN, "", "image"])),
            datatype=draw(st.sampled_from(["FP32", "INT32", "BYTES", ""])),
            shape=draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=5)),
        )
        tensor.contents.fp32_contents.extend(draw(st.lists(st.floats(width=32), max_size=20)))
    for _ in range(draw(st.integers(0, 3))):
        request.raw_input_contents.append(draw(st.binary(max_size=64)))
    for name in draw(st.lists(st.sampled_from(["embedding", "logits", ""]), max_size=2)):
        request.outputs.add(name=name)
    return request


@pytest.fixture(scope="module")
def grpc_channel(pytorch_server: PytorchServer) -> Any:
    with grpc.insecure_channel(pytorch_server.grpc_url) as channel:
        yield channel


@FUZZ
@given(request=infer_requests())
def test_wrong_grpc_request_is_refused_as_a_client_error(
    server: PytorchServer, grpc_channel: Any, request: Any
) -> None:
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc_channel)
    with pytest.raises(grpc.RpcError) as refused:
        stub.ModelInfer(request, timeout=TIMEOUT_S)
    assert refused.value.code() in CLIENT_ERRORS, (refused.value.code(), refused.value.details())
    assert refused.value.details()


@FUZZ
@given(message=st.binary(min_size=1, max_size=256))
def test_undecodable_grpc_message_is_refused_and_the_server_lives_on(
    server: PytorchServer, grpc_channel: Any, message: bytes
) -> None:
    infer = grpc_channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=None,  # the bytes go out as they are
        response_deserializer=service_pb2.ModelInferResponse.FromString,
    )
    try:
        infer(message, timeout=TIMEOUT_S)
    except grpc.RpcError as refused:
        assert refused.code() != grpc.StatusCode.DEADLINE_EXCEEDED, refused.details()
        assert refused.code() != grpc.StatusCode.UNAVAILABLE, refused.details()
