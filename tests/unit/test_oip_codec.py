"""The KServe v2 codec (`bakeoff_serve.oip`): bytes in, numpy or OipError out; no server.

Request bodies come from tritonclient's own `generate_request_body` where it can make them,
and responses are read back with tritonclient's `InferResult`, so "interoperates with the
official client" is checked here too, not only in the protocol tier.
"""

from __future__ import annotations

import gzip
import zlib
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient

from bakeoff_serve import oip

# A small stand-in for the ViT signature: same rules, tiny tensors.
SIG = oip.ModelSignature(
    name="clip",
    version="1",
    platform="bakeoff_pytorch",
    backend="pytorch",
    max_batch_size=4,
    inputs=(oip.TensorSpec("pixel_values", "FP32", (-1, 3, 4, 4)),),
    outputs=(oip.TensorSpec("embedding", "FP32", (-1, 8)),),
)
HL = oip.HEADER_LENGTH


def pixels(batch: int = 2) -> np.ndarray[Any, Any]:
    return np.random.default_rng(batch).random((batch, 3, 4, 4), dtype=np.float32)


def client_body(
    array: np.ndarray[Any, Any],
    *,
    binary_in: bool,
    binary_out: bool | None,
    datatype: str = "FP32",
    name: str = "pixel_values",
) -> tuple[bytes, str | None]:
    """Body and Inference-Header-Content-Length exactly as tritonclient.http sends them."""
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary_in)
    outputs = (
        None if binary_out is None else [httpclient.InferRequestedOutput("embedding", binary_out)]
    )
    body, json_size = httpclient.InferenceServerClient.generate_request_body(
        [tensor], outputs=outputs, request_id="req-7"
    )
    return body, None if json_size is None else str(json_size)


def json_body(**request: Any) -> bytes:
    return orjson.dumps(request)


def json_input(shape: list[int], data: Any, datatype: str = "FP32", **extra: Any) -> Any:
    return {"name": "pixel_values", "datatype": datatype, "shape": shape, "data": data, **extra}


def binary_input(shape: list[int], size: int, datatype: str = "FP32") -> Any:
    return {
        "name": "pixel_values",
        "datatype": datatype,
        "shape": shape,
        "parameters": {"binary_data_size": size},
    }


def with_binary(header: dict[str, Any], payload: bytes) -> tuple[bytes, str]:
    encoded = orjson.dumps(header)
    return encoded + payload, str(len(encoded))


# --- good requests --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("binary_in", "binary_out"),
    [(True, True), (True, False), (False, True), (False, False), (True, None), (False, None)],
    ids=["bin-bin", "bin-json", "json-bin", "json-json", "bin-default", "json-default"],
)
def test_tritonclient_request_round_trips(binary_in: bool, binary_out: bool | None) -> None:
    array = pixels(3)
    body, header_length = client_body(array, binary_in=binary_in, binary_out=binary_out)
    request = oip.decode_http_infer(SIG, body, header_length)
    assert request.id == "req-7"
    assert request.batch_size == 3
    np.testing.assert_array_equal(request.inputs["pixel_values"], array)
    # tritonclient asks for binary_data_output when no outputs are named.
    want_binary = True if binary_out is None else binary_out
    assert request.outputs == (oip.RequestedOutput("embedding", want_binary),)


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate"])
def test_compressed_request_bodies_are_inflated(encoding: str) -> None:
    array = pixels(2)
    body, header_length = client_body(array, binary_in=True, binary_out=True)
    if encoding == "gzip":
        compressed = gzip.compress(body)
    elif encoding == "deflate":
        compressed = zlib.compress(body)
    else:
        squeezer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        compressed = squeezer.compress(body) + squeezer.flush()
    header = encoding.removeprefix("raw-")
    request = oip.decode_http_infer(SIG, compressed, header_length, header)
    np.testing.assert_array_equal(request.inputs["pixel_values"], array)


def test_nested_json_data_is_accepted() -> None:
    array = pixels(1)
    body = json_body(inputs=[json_input([1, 3, 4, 4], array.tolist())])
    request = oip.decode_http_infer(SIG, body, None)
    np.testing.assert_array_equal(request.inputs["pixel_values"], array)
    assert request.outputs == (oip.RequestedOutput("embedding", False),)


def test_output_binary_flag_overrides_request_default() -> None:
    body = json_body(
        inputs=[json_input([1, 3, 4, 4], [0.5] * 48)],
        outputs=[{"name": "embedding", "parameters": {"binary_data": False}}],
        parameters={"binary_data_output": True},
    )
    assert oip.decode_http_infer(SIG, body, None).outputs[0].binary is False


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_response_is_read_back_by_tritonclient(binary: bool) -> None:
    request = oip.InferRequest(
        id="req-7",
        inputs={"pixel_values": pixels(2)},
        outputs=(oip.RequestedOutput("embedding", binary),),
        batch_size=2,
    )
    embedding = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    body, headers = oip.encode_http_infer(SIG, request, {"embedding": embedding})
    assert (HL in headers) is binary
    result = httpclient.InferResult.from_response_body(body, header_length=headers.get(HL))
    np.testing.assert_array_equal(result.as_numpy("embedding"), embedding)  # bit-exact
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == (
        "clip",
        "1",
        "req-7",
    )
    assert response["outputs"][0]["shape"] == [2, 8]


def test_metadata_and_config_documents() -> None:
    assert oip.model_metadata(SIG) == {
        "name": "clip",
        "versions": ["1"],
        "platform": "bakeoff_pytorch",
        "inputs": [{"name": "pixel_values", "datatype": "FP32", "shape": [-1, 3, 4, 4]}],
        "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, 8]}],
    }
    config = oip.model_config(SIG, "KIND_CPU", {"runtime": "pytorch 2 cpu fp32"})
    assert config["max_batch_size"] == 4
    assert config["input"] == [
        {"name": "pixel_values", "data_type": "TYPE_FP32", "dims": [3, 4, 4]}
    ]
    assert config["parameters"] == {"runtime": {"string_value": "pytorch 2 cpu fp32"}}


# --- bad requests: status and message -------------------------------------------------

_GOOD_BYTES = pixels(1).tobytes()
_CASES: list[tuple[str, bytes, str | None, str | None, int, str]] = [
    # (id, body, header length, content-encoding, status, message substring)
    (
        "wrong-shape",
        json_body(inputs=[json_input([1, 3, 5, 5], [0.0] * 75)]),
        None,
        None,
        400,
        "has shape [1,3,5,5]; the model takes [-1,3,4,4]",
    ),
    (
        "wrong-rank",
        json_body(inputs=[json_input([3, 4, 4], [0.0] * 48)]),
        None,
        None,
        400,
        "has shape [3,4,4]",
    ),
    (
        "int32",
        json_body(inputs=[json_input([1, 3, 4, 4], [0] * 48, "INT32")]),
        None,
        None,
        400,
        "datatype INT32; the model takes FP32",
    ),
    (
        "fp16-binary",
        *with_binary({"inputs": [binary_input([1, 3, 4, 4], 96, "FP16")]}, b"\0" * 96),
        None,
        400,
        "datatype FP16",
    ),
    (
        "truncated-binary",
        *with_binary({"inputs": [binary_input([1, 3, 4, 4], 192)]}, _GOOD_BYTES[:100]),
        None,
        400,
        "binary_data_size 192 but only 100 bytes",
    ),
    (
        "binary-size-not-shape",
        *with_binary({"inputs": [binary_input([1, 3, 4, 4], 100)]}, _GOOD_BYTES[:100]),
        None,
        400,
        "has 100 bytes of data; shape [1,3,4,4] FP32 needs 192",
    ),
    (
        "unclaimed-binary",
        *with_binary({"inputs": [binary_input([1, 3, 4, 4], 192)]}, _GOOD_BYTES + b"xx"),
        None,
        400,
        "2 bytes of binary data that no input claims",
    ),
    (
        "json-count",
        json_body(inputs=[json_input([1, 3, 4, 4], [0.0] * 47)]),
        None,
        None,
        400,
        "has 47 values; shape [1,3,4,4] needs 48",
    ),
    (
        "ragged-json",
        json_body(inputs=[json_input([1, 3, 4, 4], [[0.0] * 24, [0.0] * 23])]),
        None,
        None,
        400,
        "not a (nested) list of FP32 numbers",
    ),
    (
        "non-numeric",
        json_body(inputs=[json_input([1, 3, 4, 4], ["x"] * 48)]),
        None,
        None,
        400,
        "not a (nested) list",
    ),
    (
        "unknown-input",
        json_body(inputs=[{**json_input([1, 3, 4, 4], [0.0] * 48), "name": "image"}]),
        None,
        None,
        400,
        "unknown input 'image'",
    ),
    (
        "duplicate-input",
        json_body(inputs=[json_input([1, 3, 4, 4], [0.0] * 48)] * 2),
        None,
        None,
        400,
        "more than once",
    ),
    (
        "no-inputs",
        json_body(inputs=[]),
        None,
        None,
        400,
        "non-empty 'inputs'",
    ),
    (
        "unknown-output",
        json_body(inputs=[json_input([1, 3, 4, 4], [0.0] * 48)], outputs=[{"name": "logits"}]),
        None,
        None,
        400,
        "unknown output 'logits'",
    ),
    (
        "batch-too-large",
        json_body(inputs=[json_input([5, 3, 4, 4], [0.0] * 240)]),
        None,
        None,
        400,
        "batch size 5, larger than the model's max_batch_size 4",
    ),
    (
        "batch-zero",
        json_body(inputs=[json_input([0, 3, 4, 4], [])]),
        None,
        None,
        400,
        "at least 1",
    ),
    (
        "negative-dim",
        json_body(inputs=[json_input([-1, 3, 4, 4], [0.0] * 48)]),
        None,
        None,
        400,
        "non-negative ints",
    ),
    ("malformed-json", b'{"inputs": [', None, None, 400, "malformed JSON"),
    ("json-not-object", b"[1, 2]", None, None, 400, "must be a JSON object"),
    (
        "binary-without-header-length",
        with_binary({"inputs": [binary_input([1, 3, 4, 4], 192)]}, _GOOD_BYTES)[0],
        None,
        None,
        400,
        "needs the Inference-Header-Content-Length header",
    ),
    (
        "binary-size-without-header-length",
        json_body(inputs=[binary_input([1, 3, 4, 4], 192)]),
        None,
        None,
        400,
        "has binary_data_size but the request has no Inference-Header-Content-Length",
    ),
    ("header-length-not-int", b"{}", "abc", None, 400, "'abc' is not an integer"),
    ("header-length-too-long", b"{}", "99", None, 400, "outside the request body of 2 bytes"),
    ("unknown-encoding", b"{}", None, "br", 415, "unsupported Content-Encoding 'br'"),
    ("corrupt-gzip", b"not gzip", None, "gzip", 400, "not valid gzip data"),
    ("truncated-gzip", gzip.compress(b"{}" * 100)[:20], None, "gzip", 400, "gzip request body"),
    (
        "classification",
        json_body(
            inputs=[json_input([1, 3, 4, 4], [0.0] * 48)],
            outputs=[{"name": "embedding", "parameters": {"classification": 3}}],
        ),
        None,
        None,
        400,
        "classification outputs are not supported",
    ),
    (
        "shared-memory",
        json_body(
            inputs=[
                {
                    "name": "pixel_values",
                    "datatype": "FP32",
                    "shape": [1, 3, 4, 4],
                    "parameters": {"shared_memory_region": "r"},
                }
            ]
        ),
        None,
        None,
        400,
        "shared-memory inputs are not supported",
    ),
    (
        "id-not-string",
        json_body(id=5, inputs=[json_input([1, 3, 4, 4], [0.0] * 48)]),
        None,
        None,
        400,
        "'id' must be a string",
    ),
]


@pytest.mark.parametrize(
    ("body", "header_length", "encoding", "status", "message"),
    [case[1:] for case in _CASES],
    ids=[case[0] for case in _CASES],
)
def test_bad_request_is_refused_with_status_and_message(
    body: bytes, header_length: str | None, encoding: str | None, status: int, message: str
) -> None:
    with pytest.raises(oip.OipError) as caught:
        oip.decode_http_infer(SIG, body, header_length, encoding)
    assert caught.value.status == status
    assert message in caught.value.message


def test_tritonclient_wrong_datatype_is_refused() -> None:
    body, header_length = client_body(
        np.zeros((1, 3, 4, 4), np.int32), binary_in=True, binary_out=True, datatype="INT32"
    )
    with pytest.raises(oip.OipError, match="datatype INT32"):
        oip.decode_http_infer(SIG, body, header_length)


@pytest.mark.parametrize(
    ("name", "version", "message"),
    [("other", "", "unknown model 'other'"), ("clip", "2", "has no version '2'")],
)
def test_unknown_model_or_version_is_404(name: str, version: str, message: str) -> None:
    with pytest.raises(oip.OipError) as caught:
        oip.resolve_model(SIG, name, version)
    assert (caught.value.status, message in caught.value.message) == (404, True)


def test_served_model_and_versions_resolve() -> None:
    for version in ("", "1"):
        assert oip.resolve_model(SIG, "clip", version) is None  # no OipError: it is served


def test_shared_validation_accepts_typed_grpc_contents() -> None:
    array = pixels(2)
    raw = oip.RawInput("pixel_values", "FP32", [2, 3, 4, 4], array.reshape(-1).astype(np.float32))
    inputs, batch = oip.validate_inputs(SIG, [raw])
    assert batch == 2
    np.testing.assert_array_equal(inputs["pixel_values"], array)


def test_missing_input_is_named() -> None:
    with pytest.raises(oip.OipError, match="missing input"):
        oip.validate_inputs(SIG, [])


def test_error_body_is_kserve_shape() -> None:
    assert orjson.loads(oip.error_body("nope")) == {"error": "nope"}
