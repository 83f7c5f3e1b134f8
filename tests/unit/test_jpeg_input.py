"""JPEG inputs: BYTES on the wire (Triton's length-prefixed layout), Pillow on CPU."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
import torch

from bakeoff_bench import payloads
from bakeoff_serve import device_runner, model, oip


def test_bytes_elements_are_split_by_their_length_prefixes() -> None:
    raw = b"".join(len(b).to_bytes(4, "little") + b for b in (b"ab", b"", b"xyz"))
    assert oip.split_bytes_elements("in", raw, 3) == [b"ab", b"", b"xyz"]


@pytest.mark.parametrize(
    ("raw", "count", "words"),
    [
        (b"\x05\x00\x00\x00abc", 1, "declares 5 bytes but 3 are left"),
        (b"\x01\x00", 1, "cut off"),
        (b"\x01\x00\x00\x00a", 2, "holds 1 BYTES elements; its shape needs 2"),
    ],
)
def test_malformed_bytes_tensors_are_a_client_error(raw: bytes, count: int, words: str) -> None:
    with pytest.raises(oip.OipError, match=words) as caught:
        oip.split_bytes_elements("in", raw, count)
    assert caught.value.status == 400


def test_seeded_jpegs_decode_to_the_seeded_pixels_within_a_level_or_two() -> None:
    pixels = payloads.seeded_pixels(3, [2, 3, 32, 32])
    files = payloads.seeded_input(3, [2, 3, 32, 32], "BYTES")
    assert files.shape == (2,) and all(f.startswith(b"\xff\xd8") for f in files)
    decoded = np.stack([device_runner.decode_jpeg_cpu(f, 32) for f in files])
    # Random pixels are JPEG's worst case; quality 100 without subsampling keeps them close.
    assert np.abs(decoded.astype(int) - pixels.astype(int)).mean() < 3


def test_bytes_request_is_encoded_with_length_prefixes() -> None:
    files = payloads.seeded_input(1, [2, 3, 16, 16], "BYTES")
    body, headers = payloads.encode_binary_infer_request("pixel_values", files, "embedding")
    length = int(headers["Inference-Header-Content-Length"])
    header = orjson.loads(body[:length])
    assert header["inputs"][0]["datatype"] == "BYTES" and header["inputs"][0]["shape"] == [2]
    assert oip.split_bytes_elements("pixel_values", body[length:], 2) == list(files)


@pytest.mark.parametrize(
    ("blob", "words"),
    [(b"not an image", "not a decodable JPEG"), (None, "is 16x16; the model takes 32x32")],
)
def test_bad_images_are_a_client_error(blob: bytes | None, words: str) -> None:
    if blob is None:
        blob = payloads.seeded_input(0, [1, 3, 16, 16], "BYTES")[0]
    with pytest.raises(oip.OipError, match=words):
        device_runner.decode_jpeg_cpu(blob, 32)


def test_cpu_runner_embeds_jpegs_like_the_decoded_pixels() -> None:
    net, _ = model.build_model("vit-tiny-clip", None, 0)
    runner = device_runner.DeviceRunner(
        net, device=torch.device("cpu"), precision="fp32", input_format="jpeg",
        max_batch_size=4, cuda_graphs=False,
    )  # fmt: skip
    files = payloads.seeded_input(2, [3, 3, 224, 224], "BYTES")
    out, _ = runner.execute([files[:1], files[1:]])
    pixels = np.stack([device_runner.decode_jpeg_cpu(f, 224) for f in files])
    reference, _ = model.build_model("vit-tiny-clip", None, 0)
    with torch.inference_mode():
        expected = reference(torch.from_numpy(pixels.astype(np.float32) / 255)).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-5)
