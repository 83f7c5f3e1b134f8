"""Seeded inputs and the OIP binary tensor wire format (pure: bytes and arrays in, out).

The runner encodes one request body per batch size *before* any timing starts, so the hot
path only hands a ready `bytes` object to the HTTP client. Every backend gets the very same
bytes: images come from a seeded generator of 8-bit pixels and are sent as raw little-endian
FP32 in [0, 1] (pixel / 255) or, to a model whose input is UINT8, as the pixels themselves, so
both formats carry the very same image; never as an image file that a backend might decode
differently (a pitfall of the manual study).

Wire format (Triton's binary tensor data extension, also spoken by Bakeoff's PyTorch server):
a JSON inference header, immediately followed by the raw tensor bytes; the HTTP header
`Inference-Header-Content-Length` says where the JSON ends.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson

HEADER_LENGTH: Final = "Inference-Header-Content-Length"

# Parity images come from a seed this far from the benchmark seed so that they never equal
# the images of the measured requests (a backend caching by content would otherwise shine).
# A prime, so that no small seed arithmetic lands on it by accident. Changing it changes
# every parity reference: keep it fixed.
PARITY_SEED_OFFSET: Final = 1_000_003

# OIP datatype -> little-endian numpy dtype. BF16 has no numpy dtype and is not supported.
_NUMPY_DTYPES: Final[dict[str, str]] = {
    "BOOL": "?",
    "UINT8": "<u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "<i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}


@dataclass(frozen=True)
class Payload:
    """One pre-encoded inference request, reused for every request of a scenario."""

    body: bytes
    headers: Mapping[str, str] = field(repr=False)
    batch_size: int


def seeded_pixels(seed: int, shape: Sequence[int]) -> npt.NDArray[np.uint8]:
    """8-bit pixel values from `seed`; identical on every machine and for every backend.

    The generator fills in C order, so the first k images of a batch of n equal the images
    of a batch of k with the same seed: batch sizes of a sweep share their leading images.
    """
    return np.random.default_rng(seed).integers(0, 256, tuple(shape), dtype=np.uint8)


def seeded_images(seed: int, shape: Sequence[int]) -> npt.NDArray[np.float32]:
    """The same pixels as `seeded_pixels`, as FP32 in [0, 1]: what an FP32 input is sent."""
    return seeded_pixels(seed, shape).astype(np.float32) / np.float32(255.0)


def jpeg_files(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.object_]:
    """One JPEG file per image of UINT8 [B, 3, S, S]: quality 100 without chroma subsampling,
    so a decoder gets the pixels back within a level or two (the parity gate allows that)."""
    from PIL import Image

    files = np.empty(pixels.shape[0], dtype=object)
    for index, image in enumerate(pixels):
        out = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image.transpose(1, 2, 0))).save(
            out, "JPEG", quality=100, subsampling=0
        )
        files[index] = out.getvalue()
    return files


def seeded_input(seed: int, shape: Sequence[int], datatype: str) -> npt.NDArray[Any]:
    """The seeded images [B, 3, S, S] in the model's input datatype: FP32, UINT8, or BYTES
    (one JPEG file per image)."""
    if datatype == "UINT8":
        return seeded_pixels(seed, shape)
    if datatype == "FP32":
        return seeded_images(seed, shape)
    if datatype == "BYTES":
        return jpeg_files(seeded_pixels(seed, shape))
    raise ValueError(f"inputs are sent as FP32, UINT8 or BYTES (JPEG), not {datatype}")


def batched_shape(metadata_shape: Sequence[int], batch_size: int) -> list[int]:
    """The shape of `batch_size` images, from a metadata shape like [-1, 3, 224, 224].

    Only the leading (batch) dimension may be dynamic: any other -1 would leave us guessing
    the image size, and a guess would send different tensors to different backends.
    """
    if not metadata_shape or metadata_shape[0] != -1:
        raise ValueError(
            f"input shape {list(metadata_shape)} has no dynamic batch dimension; "
            "Bakeoff needs a model whose input is [-1, ...]"
        )
    rest = list(metadata_shape[1:])
    if any(d < 0 for d in rest):
        raise ValueError(f"input shape {list(metadata_shape)} has a dynamic non-batch dimension")
    return [batch_size, *rest]


_WIRE_DATATYPES: Final[dict[np.dtype[Any], tuple[str, str]]] = {
    np.dtype(np.float32): ("FP32", "<f4"),
    np.dtype(np.uint8): ("UINT8", "<u1"),
}


def encode_binary_infer_request(
    input_name: str, array: npt.NDArray[Any], output_name: str
) -> tuple[bytes, dict[str, str]]:
    """Body and HTTP headers of an OIP infer request with binary input and binary output."""
    if array.dtype == object:  # BYTES: each element a 4-byte little-endian length, then it
        datatype = "BYTES"
        raw = b"".join(len(blob).to_bytes(4, "little") + blob for blob in array.reshape(-1))
    else:
        try:
            datatype, wire = _WIRE_DATATYPES[array.dtype]
        except KeyError:
            raise ValueError(f"inputs are sent as FP32 or UINT8, got {array.dtype}") from None
        raw = np.ascontiguousarray(array, dtype=wire).tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": input_name,
                    "shape": list(array.shape),
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": output_name, "parameters": {"binary_data": True}}],
        }
    )
    headers = {
        HEADER_LENGTH: str(len(header)),
        "Content-Type": "application/octet-stream",
    }
    return header + raw, headers


def build_payload(input_name: str, output_name: str, images: npt.NDArray[Any]) -> Payload:
    body, headers = encode_binary_infer_request(input_name, images, output_name)
    return Payload(body=body, headers=headers, batch_size=int(images.shape[0]))


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # aiohttp's headers are case-insensitive already; a plain dict (tests, other clients) isn't.
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    return next((v for k, v in headers.items() if k.lower() == lowered), None)


def _decode_bytes_tensor(raw: bytes) -> npt.NDArray[np.object_]:
    # OIP BYTES: each element is a 4-byte little-endian length followed by that many bytes.
    items: list[bytes] = []
    offset = 0
    while offset < len(raw):
        size = int.from_bytes(raw[offset : offset + 4], "little")
        offset += 4
        items.append(raw[offset : offset + size])
        offset += size
    return np.array(items, dtype=np.object_)


def _decode_tensor(output: Mapping[str, Any], raw: bytes | None) -> npt.NDArray[Any]:
    datatype = str(output["datatype"])
    shape = [int(d) for d in output["shape"]]
    if raw is not None:
        if datatype == "BYTES":
            return _decode_bytes_tensor(raw).reshape(shape)
        if datatype not in _NUMPY_DTYPES:
            raise ValueError(f"output {output['name']!r}: unsupported datatype {datatype}")
        return np.frombuffer(raw, dtype=_NUMPY_DTYPES[datatype]).reshape(shape)
    if "data" not in output:
        raise ValueError(f"output {output['name']!r} has neither binary data nor 'data'")
    dtype: str | type[np.object_] = (
        np.object_ if datatype == "BYTES" else _NUMPY_DTYPES.get(datatype, "")
    )
    if dtype == "":
        raise ValueError(f"output {output['name']!r}: unsupported datatype {datatype}")
    return np.asarray(output["data"], dtype=dtype).reshape(shape)


def decode_infer_response(body: bytes, headers: Mapping[str, str]) -> dict[str, npt.NDArray[Any]]:
    """Output name -> array, for both binary and JSON outputs (used for parity, not timing)."""
    header_length = _header(headers, HEADER_LENGTH)
    json_end = len(body) if header_length is None else int(header_length)
    if json_end > len(body):
        raise ValueError(f"{HEADER_LENGTH} is {json_end} but the body has {len(body)} bytes")
    document = orjson.loads(body[:json_end])
    offset = json_end
    arrays: dict[str, npt.NDArray[Any]] = {}
    # Binary outputs are concatenated after the JSON in the order the outputs are listed.
    for output in document.get("outputs", []):
        size = (output.get("parameters") or {}).get("binary_data_size")
        raw = None
        if size is not None:
            if offset + int(size) > len(body):
                raise ValueError(f"output {output['name']!r} is truncated")
            raw = body[offset : offset + int(size)]
            offset += int(size)
        arrays[str(output["name"])] = _decode_tensor(output, raw)
    if offset != len(body):
        raise ValueError(f"{len(body) - offset} trailing bytes after the last output")
    return arrays
