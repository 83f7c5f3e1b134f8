"""The OIP binary wire format and the seeded inputs: every backend must get the same bytes."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from bakeoff_bench import payloads

# A binary response exactly as Triton 2.51 wrote it for a [2, 2] FP32 output
# (captured from the tritonserver of the nvidia-pytriton wheel).
TRITON_BINARY_RESPONSE = (
    b'{"model_name":"emb","model_version":"1","outputs":[{"name":"embedding","datatype":"FP32",'
    b'"shape":[2,2],"parameters":{"binary_data_size":16}}]}'
    + np.array([1.0, 2.0, 3.0, 4.0], dtype="<f4").tobytes()
)
TRITON_BINARY_HEADERS = {
    "Content-Type": "application/octet-stream",
    "Inference-Header-Content-Length": "142",
    "Content-Length": "158",
}


def test_same_seed_gives_the_same_bytes() -> None:
    a = payloads.seeded_images(7, [2, 3, 4, 4])
    b = payloads.seeded_images(7, [2, 3, 4, 4])
    assert a.dtype == np.float32
    assert a.tobytes() == b.tobytes()
    assert payloads.seeded_images(8, [2, 3, 4, 4]).tobytes() != a.tobytes()


def test_seeded_values_are_in_unit_interval() -> None:
    images = payloads.seeded_images(0, [4, 3, 8, 8])
    assert images.min() >= 0.0
    assert images.max() <= 1.0


def test_fp32_and_uint8_inputs_carry_the_same_image() -> None:
    pixels = payloads.seeded_input(4, [2, 3, 8, 8], "UINT8")
    images = payloads.seeded_input(4, [2, 3, 8, 8], "FP32")
    assert pixels.dtype == np.uint8 and images.dtype == np.float32
    assert np.array_equal(np.rint(images * 255).astype(np.uint8), pixels)
    with pytest.raises(ValueError, match="FP32, UINT8 or BYTES"):
        payloads.seeded_input(4, [1, 3, 8, 8], "FP16")


def test_uint8_input_is_sent_as_uint8() -> None:
    pixels = payloads.seeded_pixels(2, [1, 3, 4, 4])
    body, headers = payloads.encode_binary_infer_request("images", pixels, "embedding")
    json_length = int(headers["Inference-Header-Content-Length"])
    header = orjson.loads(body[:json_length])
    assert header["inputs"][0]["datatype"] == "UINT8"
    assert body[json_length:] == pixels.tobytes()


def test_smaller_batch_is_a_prefix_of_a_larger_one() -> None:
    small = payloads.seeded_images(3, [2, 3, 4, 4])
    large = payloads.seeded_images(3, [5, 3, 4, 4])
    assert np.array_equal(large[:2], small)


def test_header_length_is_exactly_the_json_length() -> None:
    images = payloads.seeded_images(1, [2, 3, 4, 4])
    body, headers = payloads.encode_binary_infer_request("images", images, "embedding")
    json_length = int(headers["Inference-Header-Content-Length"])
    assert headers["Content-Type"] == "application/octet-stream"
    assert len(body) == json_length + images.nbytes
    header = orjson.loads(body[:json_length])
    assert header == {
        "inputs": [
            {
                "name": "images",
                "shape": [2, 3, 4, 4],
                "datatype": "FP32",
                "parameters": {"binary_data_size": images.nbytes},
            }
        ],
        "outputs": [{"name": "embedding", "parameters": {"binary_data": True}}],
    }
    assert body[json_length:] == images.astype("<f4").tobytes()


def test_encoded_tensor_bytes_round_trip() -> None:
    images = payloads.seeded_images(11, [3, 3, 2, 2])
    body, headers = payloads.encode_binary_infer_request("in", images, "out")
    start = int(headers["Inference-Header-Content-Length"])
    decoded = np.frombuffer(body[start:], dtype="<f4").reshape(images.shape)
    assert np.array_equal(decoded, images)


def test_non_fp32_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="FP32"):
        payloads.encode_binary_infer_request("in", np.zeros((1, 2), dtype=np.float64), "out")


def test_decodes_tritons_binary_response() -> None:
    arrays = payloads.decode_infer_response(TRITON_BINARY_RESPONSE, TRITON_BINARY_HEADERS)
    assert list(arrays) == ["embedding"]
    assert arrays["embedding"].dtype == np.float32
    assert arrays["embedding"].tolist() == [[1.0, 2.0], [3.0, 4.0]]


def test_header_lookup_ignores_case() -> None:
    headers = {"inference-header-content-length": "142"}
    arrays = payloads.decode_infer_response(TRITON_BINARY_RESPONSE, headers)
    assert arrays["embedding"].shape == (2, 2)


def test_decodes_json_outputs() -> None:
    body = (
        b'{"model_name":"emb","model_version":"1","outputs":[{"name":"embedding",'
        b'"datatype":"FP32","shape":[2,2],"data":[0.5,1.5,2.5,3.5]}]}'
    )
    arrays = payloads.decode_infer_response(body, {"Content-Type": "application/json"})
    assert arrays["embedding"].tolist() == [[0.5, 1.5], [2.5, 3.5]]


def test_decodes_mixed_binary_and_json_outputs_in_order() -> None:
    first = np.arange(6, dtype="<i8")
    second = np.array([0.25, 0.75], dtype="<f2")
    header = orjson.dumps(
        {
            "outputs": [
                {"name": "ids", "datatype": "INT64", "shape": [2, 3],
                 "parameters": {"binary_data_size": first.nbytes}},
                {"name": "label", "datatype": "INT32", "shape": [1], "data": [7]},
                {"name": "half", "datatype": "FP16", "shape": [2],
                 "parameters": {"binary_data_size": second.nbytes}},
            ]
        }
    )  # fmt: skip
    body = header + first.tobytes() + second.tobytes()
    arrays = payloads.decode_infer_response(
        body, {"Inference-Header-Content-Length": str(len(header))}
    )
    assert arrays["ids"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert arrays["label"].tolist() == [7]
    assert arrays["half"].tolist() == [0.25, 0.75]


def test_decodes_bytes_tensors() -> None:
    raw = b"".join(len(s).to_bytes(4, "little") + s for s in (b"cat", b"", b"dog!"))
    header = orjson.dumps(
        {"outputs": [{"name": "s", "datatype": "BYTES", "shape": [3],
                      "parameters": {"binary_data_size": len(raw)}}]}
    )  # fmt: skip
    arrays = payloads.decode_infer_response(
        header + raw, {"Inference-Header-Content-Length": str(len(header))}
    )
    assert arrays["s"].tolist() == [b"cat", b"", b"dog!"]


def test_encode_decode_round_trip_through_an_echo() -> None:
    # An echo server answers the input tensor back as a binary output: decode must return
    # exactly the array that was encoded.
    images = payloads.seeded_images(5, [2, 3, 4, 4])
    body, headers = payloads.encode_binary_infer_request("images", images, "images")
    start = int(headers["Inference-Header-Content-Length"])
    request = orjson.loads(body[:start])
    reply_header = orjson.dumps(
        {"outputs": [{"name": "images", "datatype": "FP32", "shape": request["inputs"][0]["shape"],
                      "parameters": {"binary_data_size": len(body) - start}}]}
    )  # fmt: skip
    arrays = payloads.decode_infer_response(
        reply_header + body[start:], {"Inference-Header-Content-Length": str(len(reply_header))}
    )
    assert np.array_equal(arrays["images"], images)


def test_truncated_binary_output_is_an_error() -> None:
    with pytest.raises(ValueError, match="truncated"):
        payloads.decode_infer_response(TRITON_BINARY_RESPONSE[:-4], TRITON_BINARY_HEADERS)


def test_trailing_bytes_are_an_error() -> None:
    with pytest.raises(ValueError, match="trailing"):
        payloads.decode_infer_response(TRITON_BINARY_RESPONSE + b"\0", TRITON_BINARY_HEADERS)


@pytest.mark.parametrize(
    ("shape", "batch", "expected"),
    [([-1, 3, 224, 224], 8, [8, 3, 224, 224]), ([-1, 16], 1, [1, 16])],
    ids=["image-batch", "vector"],
)
def test_batched_shape_fills_the_batch_dimension(
    shape: list[int], batch: int, expected: list[int]
) -> None:
    assert payloads.batched_shape(shape, batch) == expected


@pytest.mark.parametrize(
    "shape", [[3, 224, 224], [-1, 3, -1, -1], []], ids=["no-batch-dim", "dynamic-hw", "empty"]
)
def test_batched_shape_rejects_shapes_it_would_have_to_guess(shape: list[int]) -> None:
    with pytest.raises(ValueError, match="dimension"):
        payloads.batched_shape(shape, 1)


def test_build_payload_reuses_one_bytes_object() -> None:
    images = payloads.seeded_images(0, [4, 3, 2, 2])
    payload = payloads.build_payload("images", "embedding", images)
    assert payload.batch_size == 4
    body, headers = payloads.encode_binary_infer_request("images", images, "embedding")
    assert payload.body == body
    assert dict(payload.headers) == headers
