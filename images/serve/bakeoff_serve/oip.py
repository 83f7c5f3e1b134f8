"""Open Inference Protocol (KServe v2) codec: pure functions, no web framework, no torch.

The HTTP routers (`app.routers.models`) and the gRPC servicer (`grpc_service`) both call
`validate_inputs` and `resolve_outputs`, so the shape, datatype and batch rules live in one
place. The HTTP edge additionally uses `decode_http_infer` / `encode_http_infer` for the JSON
body and the binary tensor data extension (JSON header + raw little-endian tensors, split by
the `Inference-Header-Content-Length` header). Every client mistake raises `OipError` with
an HTTP status; the edges turn it into `{"error": message}` or a gRPC status.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import orjson

HEADER_LENGTH: Final = "Inference-Header-Content-Length"
# Decompressed request bodies are capped so a small gzip bomb cannot exhaust memory;
# the largest honest request (32 images as JSON text) is about 120 MB.
MAX_BODY_BYTES: Final = 1 << 30
# A request body as the HTTP edge hands it over: `bytes`, or a view of one receive buffer.
Buffer = bytes | bytearray | memoryview

# Bytes per element of every fixed-size KServe v2 datatype. FP32 and UINT8 are served; knowing
# the others lets an error say "INT32" instead of "unknown datatype".
_ITEM_SIZE: Final[dict[str, int]] = {
    "BOOL": 1,
    "UINT8": 1,
    "UINT16": 2,
    "UINT32": 4,
    "UINT64": 8,
    "INT8": 1,
    "INT16": 2,
    "INT32": 4,
    "INT64": 8,
    "FP16": 2,
    "BF16": 2,
    "FP32": 4,
    "FP64": 8,
}
_NUMPY_DTYPE: Final[dict[str, str]] = {"FP32": "<f4", "FP64": "<f8", "UINT8": "<u1"}


class OipError(Exception):
    """A request the server refuses; `status` is the HTTP status the edge answers with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 marks the batch dimension


@dataclass(frozen=True)
class ModelSignature:
    """What the served model looks like from the wire; built once at start-up."""

    name: str
    version: str
    platform: str
    backend: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


@dataclass(frozen=True)
class RawInput:
    """One input as it arrived, before validation.

    `data` is the raw little-endian bytes (binary extension, gRPC raw_input_contents), a
    JSON list (flat or nested), or an array of typed gRPC contents.
    """

    name: str
    datatype: str
    shape: Any  # unvalidated: whatever the client sent
    data: Buffer | list[Any] | np.ndarray[Any, Any]


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool  # HTTP only: raw bytes after the JSON header instead of a JSON list


@dataclass(frozen=True)
class InferRequest:
    id: str
    inputs: Mapping[str, np.ndarray[Any, Any]]
    outputs: tuple[RequestedOutput, ...]
    batch_size: int


def _fmt_shape(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def resolve_model(signature: ModelSignature, name: str, version: str = "") -> None:
    """404 unless `name` (and `version`, when given) is the served model."""
    if name != signature.name:
        raise OipError(404, f"unknown model '{name}'; this server serves '{signature.name}'")
    if version not in ("", signature.version):
        raise OipError(
            404, f"model '{name}' has no version '{version}'; available: {signature.version}"
        )


def _check_shape(spec: TensorSpec, shape: Any, max_batch_size: int) -> tuple[int, ...]:
    if not isinstance(shape, list | tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise OipError(400, f"input '{spec.name}' shape must be a list of non-negative ints")
    dims = tuple(int(d) for d in shape)
    fixed_ok = len(dims) == len(spec.shape) and all(
        want in (-1, got) for want, got in zip(spec.shape, dims, strict=True)
    )
    if not fixed_ok:
        raise OipError(
            400,
            f"input '{spec.name}' has shape {_fmt_shape(dims)}; "
            f"the model takes {_fmt_shape(spec.shape)}",
        )
    batch = dims[0]
    if batch < 1:
        raise OipError(400, f"input '{spec.name}' has batch size {batch}; it must be at least 1")
    if batch > max_batch_size:
        raise OipError(
            400,
            f"input '{spec.name}' has batch size {batch}, "
            f"larger than the model's max_batch_size {max_batch_size}",
        )
    return dims


def split_bytes_elements(
    name: str, data: bytes | bytearray | memoryview, count: int
) -> list[bytes]:
    """A BYTES tensor's elements from its binary form: each a 4-byte little-endian length, then
    that many bytes (Triton's layout); exactly `count` of them, nothing left over."""
    view = memoryview(data)
    elements: list[bytes] = []
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise OipError(400, f"input '{name}': BYTES element {len(elements)} is cut off")
        length = int.from_bytes(view[offset : offset + 4], "little")
        offset += 4
        if offset + length > len(view):
            raise OipError(
                400,
                f"input '{name}': BYTES element {len(elements)} declares {length} bytes but "
                f"{len(view) - offset} are left",
            )
        elements.append(bytes(view[offset : offset + length]))
        offset += length
    if len(elements) != count:
        raise OipError(
            400, f"input '{name}' holds {len(elements)} BYTES elements; its shape needs {count}"
        )
    return elements


def _decode_data(spec: TensorSpec, dims: tuple[int, ...], raw: RawInput) -> np.ndarray[Any, Any]:
    count = math.prod(dims)
    if spec.datatype == "BYTES":
        if not isinstance(raw.data, Buffer):
            raise OipError(
                400, f"input '{spec.name}' is BYTES: send it as binary data (binary_data_size)"
            )
        elements = np.empty(count, dtype=object)
        elements[:] = split_bytes_elements(spec.name, raw.data, count)
        return elements.reshape(dims)
    dtype = np.dtype(_NUMPY_DTYPE[spec.datatype])
    if isinstance(raw.data, Buffer):
        want = count * dtype.itemsize
        if len(raw.data) != want:
            raise OipError(
                400,
                f"input '{spec.name}' has {len(raw.data)} bytes of data; "
                f"shape {_fmt_shape(dims)} {spec.datatype} needs {want}",
            )
        return np.frombuffer(raw.data, dtype=dtype).reshape(dims)
    if not isinstance(raw.data, list | np.ndarray):
        raise OipError(400, f"input '{spec.name}' data must be a list of numbers")
    try:
        array = np.asarray(raw.data, dtype=dtype)
    except (ValueError, TypeError, OverflowError):
        raise OipError(
            400, f"input '{spec.name}' data is not a (nested) list of {spec.datatype} numbers"
        ) from None
    if array.size != count:
        raise OipError(
            400,
            f"input '{spec.name}' has {array.size} values; shape {_fmt_shape(dims)} needs {count}",
        )
    return array.reshape(dims)


def validate_inputs(
    signature: ModelSignature, raw_inputs: Sequence[RawInput]
) -> tuple[dict[str, np.ndarray[Any, Any]], int]:
    """Check names, datatypes, shapes, batch limit and data sizes; decode to numpy.

    Returns the inputs by name and the batch size. Shared by HTTP and gRPC.
    """
    specs = {spec.name: spec for spec in signature.inputs}
    decoded: dict[str, np.ndarray[Any, Any]] = {}
    batch_sizes: set[int] = set()
    for raw in raw_inputs:
        spec = specs.get(raw.name)
        if spec is None:
            raise OipError(
                400, f"unknown input '{raw.name}'; the model's inputs: {', '.join(specs)}"
            )
        if raw.name in decoded:
            raise OipError(400, f"input '{raw.name}' is given more than once")
        if raw.datatype != spec.datatype:
            raise OipError(
                400,
                f"input '{raw.name}' has datatype {raw.datatype}; the model takes {spec.datatype}",
            )
        dims = _check_shape(spec, raw.shape, signature.max_batch_size)
        decoded[raw.name] = _decode_data(spec, dims, raw)
        batch_sizes.add(dims[0])
    missing = [name for name in specs if name not in decoded]
    if missing:
        raise OipError(400, f"missing input(s): {', '.join(missing)}")
    if len(batch_sizes) != 1:
        raise OipError(400, "all inputs must have the same batch size")
    return decoded, batch_sizes.pop()


def resolve_outputs(
    signature: ModelSignature, requested: Sequence[tuple[str, bool]], default_binary: bool
) -> tuple[RequestedOutput, ...]:
    """The outputs to return: those requested (name, binary), or all of them when none are."""
    known = {spec.name for spec in signature.outputs}
    if not requested:
        return tuple(RequestedOutput(spec.name, default_binary) for spec in signature.outputs)
    seen: set[str] = set()
    for name, _ in requested:
        if name not in known:
            raise OipError(
                400, f"unknown output '{name}'; the model's outputs: {', '.join(sorted(known))}"
            )
        if name in seen:
            raise OipError(400, f"output '{name}' is requested more than once")
        seen.add(name)
    return tuple(RequestedOutput(name, binary) for name, binary in requested)


# --- HTTP: JSON header + binary tensor data ---------------------------------------------


def _inflate(body: Buffer, wbits: int, encoding: str) -> bytes:
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, MAX_BODY_BYTES)
    except zlib.error as exc:
        raise OipError(400, f"request body is not valid {encoding} data: {exc}") from None
    if inflater.unconsumed_tail:
        raise OipError(413, f"decompressed request body exceeds {MAX_BODY_BYTES} bytes")
    if not inflater.eof:
        raise OipError(400, f"{encoding} request body is truncated")
    return data


def decompress(body: Buffer, content_encoding: str | None) -> Buffer:
    """Undo `Content-Encoding: gzip|deflate` (tritonclient's request_compression_algorithm)."""
    encoding = (content_encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding == "gzip":
        return _inflate(body, 16 + zlib.MAX_WBITS, encoding)
    if encoding == "deflate":
        # "deflate" means zlib-wrapped per RFC 9110, but some clients send raw deflate.
        try:
            return _inflate(body, zlib.MAX_WBITS, encoding)
        except OipError:
            return _inflate(body, -zlib.MAX_WBITS, encoding)
    raise OipError(415, f"unsupported Content-Encoding '{content_encoding}'; use gzip or deflate")


def _split_body(body: Buffer, header_length: str | None) -> tuple[memoryview, memoryview]:
    # Views, not slices: a batch's tensor bytes are megabytes, and slicing `bytes` copies.
    view = memoryview(body)
    if header_length is None:
        return view, view[:0]
    try:
        length = int(header_length)
    except ValueError:
        raise OipError(400, f"{HEADER_LENGTH} '{header_length}' is not an integer") from None
    if not 0 <= length <= len(body):
        raise OipError(
            400, f"{HEADER_LENGTH} {length} is outside the request body of {len(body)} bytes"
        )
    return view[:length], view[length:]


def _parse_json_header(header: Buffer, has_length: bool) -> dict[str, Any]:
    try:
        parsed = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        hint = "" if has_length else f" (binary tensor data needs the {HEADER_LENGTH} header)"
        raise OipError(400, f"malformed JSON in inference request: {exc}{hint}") from None
    if not isinstance(parsed, dict):
        raise OipError(400, "inference request must be a JSON object")
    return parsed


def _parameters(obj: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    params = obj.get("parameters", {})
    if not isinstance(params, dict):
        raise OipError(400, f"{where} parameters must be a JSON object")
    return params


def _flag(params: Mapping[str, Any], key: str, where: str) -> bool | None:
    value = params.get(key)
    if value is not None and not isinstance(value, bool):
        raise OipError(400, f"{where} parameter '{key}' must be true or false")
    return value


def _raw_inputs(request: Mapping[str, Any], binary: memoryview, has_length: bool) -> list[RawInput]:
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise OipError(400, "inference request needs a non-empty 'inputs' list")
    raws: list[RawInput] = []
    offset = 0
    for item in inputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise OipError(400, "every input needs a 'name'")
        name: str = item["name"]
        params = _parameters(item, f"input '{name}'")
        if "shared_memory_region" in params:
            raise OipError(400, "shared-memory inputs are not supported by this server")
        size = params.get("binary_data_size")
        data: memoryview | list[Any]
        if size is not None:
            if not has_length:
                raise OipError(
                    400,
                    f"input '{name}' has binary_data_size but the request has no "
                    f"{HEADER_LENGTH} header",
                )
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise OipError(400, f"input '{name}' binary_data_size must be a non-negative int")
            if offset + size > len(binary):
                raise OipError(
                    400,
                    f"input '{name}' declares binary_data_size {size} but only "
                    f"{len(binary) - offset} bytes of binary data are left (truncated body?)",
                )
            data = binary[offset : offset + size]
            offset += size
        elif "data" in item:
            data = item["data"]
        else:
            raise OipError(400, f"input '{name}' has neither 'data' nor binary_data_size")
        raws.append(RawInput(name, str(item.get("datatype", "")), item.get("shape"), data))
    if offset != len(binary):
        raise OipError(
            400, f"request has {len(binary) - offset} bytes of binary data that no input claims"
        )
    return raws


def _requested(request: Mapping[str, Any]) -> tuple[list[tuple[str, bool]], bool]:
    """Requested (name, binary) pairs, and the request-level binary_data_output default."""
    outputs = request.get("outputs", [])
    if not isinstance(outputs, list):
        raise OipError(400, "'outputs' must be a list")
    default_binary = bool(_flag(_parameters(request, "request"), "binary_data_output", "request"))
    requested: list[tuple[str, bool]] = []
    for item in outputs:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise OipError(400, "every requested output needs a 'name'")
        where = f"output '{item['name']}'"
        params = _parameters(item, where)
        if params.get("classification"):
            raise OipError(400, "classification outputs are not supported by this server")
        if "shared_memory_region" in params:
            raise OipError(400, "shared-memory outputs are not supported by this server")
        binary = _flag(params, "binary_data", where)
        requested.append((item["name"], default_binary if binary is None else binary))
    return requested, default_binary


def decode_http_infer(
    signature: ModelSignature,
    body: Buffer,
    header_length: str | None,
    content_encoding: str | None = None,
) -> InferRequest:
    """Decode and validate an HTTP infer request body (JSON, or JSON + binary tensors)."""
    plain = decompress(body, content_encoding)
    header, binary = _split_body(plain, header_length)
    request = _parse_json_header(header, header_length is not None)
    request_id = request.get("id", "")
    if not isinstance(request_id, str):
        raise OipError(400, "request 'id' must be a string")
    inputs, batch = validate_inputs(
        signature, _raw_inputs(request, binary, header_length is not None)
    )
    requested, default_binary = _requested(request)
    outputs = resolve_outputs(signature, requested, default_binary)
    return InferRequest(request_id, inputs, outputs, batch)


def encode_http_infer(
    signature: ModelSignature,
    request: InferRequest,
    results: Mapping[str, np.ndarray[Any, Any]],
) -> tuple[bytes, dict[str, str]]:
    """Response body and headers; binary outputs follow the JSON header as raw bytes."""
    datatypes = {spec.name: spec.datatype for spec in signature.outputs}
    entries: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for wanted in request.outputs:
        array = np.ascontiguousarray(results[wanted.name], dtype=np.dtype("<f4"))
        entry: dict[str, Any] = {
            "name": wanted.name,
            "datatype": datatypes[wanted.name],
            "shape": list(array.shape),
        }
        if wanted.binary:
            raw = array.tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = array.reshape(-1)  # flat, row-major, as Triton answers
        entries.append(entry)
    response: dict[str, Any] = {
        "model_name": signature.name,
        "model_version": signature.version,
        "outputs": entries,
    }
    if request.id:
        response["id"] = request.id
    header = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, {"content-type": "application/json"}
    return header + b"".join(blobs), {
        "content-type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }


def error_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


# --- metadata documents (HTTP JSON; gRPC builds its protos from the same dicts) -----------


def model_metadata(signature: ModelSignature) -> dict[str, Any]:
    def tensors(specs: Sequence[TensorSpec]) -> list[dict[str, Any]]:
        return [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]

    return {
        "name": signature.name,
        "versions": [signature.version],
        "platform": signature.platform,
        "inputs": tensors(signature.inputs),
        "outputs": tensors(signature.outputs),
    }


def model_config(
    signature: ModelSignature, instance_kind: str, parameters: Mapping[str, str]
) -> dict[str, Any]:
    """Triton-style model configuration (the JSON form of model_config.proto's ModelConfig)."""

    def tensors(specs: Sequence[TensorSpec]) -> list[dict[str, Any]]:
        # Triton's dims leave out the batch dimension when max_batch_size > 0.
        return [
            {"name": s.name, "data_type": f"TYPE_{s.datatype}", "dims": list(s.shape[1:])}
            for s in specs
        ]

    return {
        "name": signature.name,
        "platform": signature.platform,
        "backend": signature.backend,
        "max_batch_size": signature.max_batch_size,
        "input": tensors(signature.inputs),
        "output": tensors(signature.outputs),
        "instance_group": [{"name": signature.name, "count": 1, "kind": instance_kind}],
        "parameters": {key: {"string_value": value} for key, value in parameters.items()},
    }
