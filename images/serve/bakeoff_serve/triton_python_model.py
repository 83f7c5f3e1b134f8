"""Triton Python-backend model: the exported ONNX file in ONNX Runtime, or the PyTorch module.

`triton_repo.write_python_backend_repository` copies this file to `<repo>/<model>/1/model.py`;
it runs inside Triton's `triton_python_backend_stub`, never inside Bakeoff itself, so it
imports nothing from `bakeoff_serve`. Everything it needs comes from config.pbtxt's
`parameters` (written by `triton_repo.build_python_backend_config`).

`parameters.model_runtime` picks what runs the model: "onnxruntime" (default) or "pytorch",
which imports `bakeoff_serve.model` (from `parameters.python_path` when not installed) and
runs it eagerly on the instance's GPU in `parameters.precision`.

Two things make this more than a demo:
- `execute` runs every request Triton hands it as ONE ONNX Runtime call (concatenate the
  inputs, split the outputs back), so Triton's dynamic batching really batches.
- The requested execution provider is required, never a preference: if ONNX Runtime does
  not have it, or silently falls back to CPU, `initialize` fails and the model never loads.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np

# Exists only inside Triton's Python-backend stub (or on sys.path from the pytriton wheel).
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found,unused-ignore]

ORT_PROVIDERS: Final[Mapping[str, str]] = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}

ProviderSpec = tuple[str, dict[str, str]]


def config_parameters(model_config: Mapping[str, Any]) -> dict[str, str]:
    """config.pbtxt `parameters` as plain strings (Triton hands them over as JSON)."""
    raw: Mapping[str, Mapping[str, str]] = model_config.get("parameters", {})
    return {key: value.get("string_value", "") for key, value in raw.items()}


def session_providers(
    execution_provider: str,
    *,
    device_id: int,
    input_name: str,
    sample_dims: Sequence[int],
    max_batch_size: int,
    opt_batch_size: int,
    precision: str,
) -> list[ProviderSpec]:
    """The ONNX Runtime provider list for the requested execution provider.

    CPUExecutionProvider is never appended as a fallback: ORT still runs the few nodes a GPU
    provider lacks on CPU by itself, but an unavailable GPU provider must fail, not degrade.
    """
    if execution_provider == "cpu":
        return [("CPUExecutionProvider", {})]
    cuda: ProviderSpec = ("CUDAExecutionProvider", {"device_id": str(device_id)})
    if execution_provider == "cuda":
        return [cuda]
    if execution_provider == "tensorrt":
        shape = "x".join(str(d) for d in sample_dims)

        def profile(batch: int) -> str:
            return f"{input_name}:{batch}x{shape}"

        tensorrt: ProviderSpec = (
            "TensorrtExecutionProvider",
            {
                "device_id": str(device_id),
                "trt_fp16_enable": "True" if precision == "fp16" else "False",
                # One optimisation profile covering every batch Triton may form, so the
                # engine is built once (during warm-up), not again per new batch size.
                "trt_profile_min_shapes": profile(1),
                "trt_profile_opt_shapes": profile(opt_batch_size),
                "trt_profile_max_shapes": profile(max_batch_size),
            },
        )
        # TensorRT leaves unsupported subgraphs to CUDA, as ORT's documentation prescribes.
        return [tensorrt, cuda]
    known = ", ".join(sorted(ORT_PROVIDERS))
    raise ValueError(f"unknown execution provider {execution_provider!r}; known: {known}")


def missing_providers_message(
    execution_provider: str, requested: Sequence[str], available: Sequence[str], version: str
) -> str | None:
    """Why this ORT cannot serve the request, or None when every provider is available."""
    missing = [name for name in requested if name not in available]
    if not missing:
        return None
    return (
        f"executionProvider {execution_provider!r} needs {', '.join(missing)}, which this "
        f"onnxruntime {version} does not provide (available: {', '.join(available)}); "
        "refusing to fall back to CPU. Install onnxruntime-gpu with CUDA/TensorRT on a GPU "
        "node, or request executionProvider 'cpu'."
    )


def default_intra_op_threads(instance_count: int) -> int:
    """Share the CPUs this process may use between the model's instances."""
    try:
        cpus = len(os.sched_getaffinity(0))  # honours cpusets (Kubernetes CPU manager)
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, cpus // max(1, instance_count))


def split_points(batch_sizes: Sequence[int]) -> list[tuple[int, int]]:
    """[start, stop) row ranges of each request inside the concatenated batch."""
    ranges = []
    start = 0
    for size in batch_sizes:
        ranges.append((start, start + size))
        start += size
    return ranges


# --- NumPy <-> Triton tensors through DLPack -------------------------------------------------
# Triton 2.51's stub was built with a pybind11 that predates NumPy 2's dtype layout: with
# NumPy 2, `Tensor.as_numpy()` returns an array of the right shape but NOT the request's data,
# and `pb_utils.Tensor(name, array)` sends an empty tensor. DLPack avoids that code path in
# both directions and works with NumPy 1 too.
_DLTENSOR: Final = b"dltensor"  # module constants: a capsule keeps a pointer to its name
_USED_DLTENSOR: Final = b"used_dltensor"
_capsule_get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_get_pointer.restype = ctypes.c_void_p
_capsule_get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_capsule_set_name = ctypes.pythonapi.PyCapsule_SetName
_capsule_set_name.restype = ctypes.c_int
_capsule_set_name.argtypes = [ctypes.py_object, ctypes.c_char_p]
_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]


def input_array(request: Any, name: str) -> np.ndarray:
    """A request's input as a NumPy view of Triton's shared memory (valid during execute)."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise ValueError(f"request has no input {name!r}")
    return np.from_dlpack(tensor)


def output_tensor(name: str, array: np.ndarray) -> Any:
    """`pb_utils.Tensor` holding `array`'s data, handed over through a DLPack capsule.

    The stub marks a consumed capsule "used_dlpack", a name NumPy's capsule destructor does
    not recognise, so NumPy would later raise "PyCapsule_GetPointer called with incorrect
    name". Instead we mark NumPy's capsule consumed ourselves and give the stub a second,
    destructor-less capsule around the same DLManagedTensor; the stub then owns it and calls
    its deleter (which releases `array`) when the response is sent.
    """
    array = np.ascontiguousarray(array)
    numpy_capsule = array.__dlpack__()
    pointer = _capsule_get_pointer(numpy_capsule, _DLTENSOR)
    _capsule_set_name(numpy_capsule, _USED_DLTENSOR)
    handoff = _capsule_new(pointer, _DLTENSOR, None)
    return pb_utils.Tensor.from_dlpack(name, handoff)


def use_python_path(params: Mapping[str, str]) -> None:
    """Put config.pbtxt's `python_path` first on sys.path: the stub ignores PYTHONPATH."""
    for entry in reversed(params.get("python_path", "").split(os.pathsep)):
        if entry and entry not in sys.path:
            sys.path.insert(0, entry)


def import_onnxruntime(execution_provider: str) -> Any:
    """onnxruntime from the environment the repository was written for; on a GPU provider
    after torch, when there is one, whose NVIDIA packages load the CUDA libraries
    (cuBLAS, cuDNN) that onnxruntime-gpu's CUDA provider links."""
    if execution_provider != "cpu":
        with contextlib.suppress(ImportError):
            import torch  # noqa: F401
    import onnxruntime

    return onnxruntime


class OrtModel:
    """The exported ONNX file in an ONNX Runtime session on the requested provider."""

    def __init__(self, args: Mapping[str, str], config: Mapping[str, Any]) -> None:
        params = config_parameters(config)
        use_python_path(params)
        ort = import_onnxruntime(params.get("execution_provider", "cpu"))
        # The config's "runtime" parameter is what results report; make sure it is true.
        claimed = params.get("onnxruntime_version", "")
        if claimed and claimed != ort.__version__:
            raise RuntimeError(
                f"config.pbtxt says onnxruntime {claimed}, but this Python environment has "
                f"onnxruntime {ort.__version__} ({ort.__file__}); regenerate the repository "
                "with the serving environment's onnxruntime"
            )
        self._input_name = str(config["input"][0]["name"])
        self._output_name = str(config["output"][0]["name"])
        # Triton's JSON renders int64 fields (dims) as strings: convert everything.
        sample_dims = [int(d) for d in config["input"][0]["dims"]]
        max_batch_size = int(config["max_batch_size"])
        preferred = config.get("dynamic_batching", {}).get("preferred_batch_size", [])
        execution_provider = params.get("execution_provider", "cpu")

        providers = session_providers(
            execution_provider,
            device_id=int(args.get("model_instance_device_id", "0")),
            input_name=self._input_name,
            sample_dims=sample_dims,
            max_batch_size=max_batch_size,
            opt_batch_size=max((int(b) for b in preferred), default=max_batch_size),
            precision=params.get("precision", "fp32"),
        )
        requested = [name for name, _ in providers]
        problem = missing_providers_message(
            execution_provider, requested, ort.get_available_providers(), ort.__version__
        )
        if problem:
            raise RuntimeError(problem)

        instances = sum(int(group.get("count", 1)) for group in config["instance_group"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(
            params.get("intra_op_threads") or default_intra_op_threads(instances)
        )
        options.inter_op_num_threads = 1  # the graph is a chain; parallelism is intra-op
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL

        model_path = os.path.join(
            args["model_repository"], args["model_version"], params.get("onnx_model", "")
        )
        self._session: Any = ort.InferenceSession(model_path, options, providers=providers)
        # ORT logs and falls back to CPU when a GPU provider fails to initialise (missing
        # CUDA/cuDNN libraries): the provider it actually bound is what counts.
        if requested[0] not in self._session.get_providers():
            raise RuntimeError(
                f"onnxruntime did not enable {requested[0]} for {model_path} (session "
                f"providers: {', '.join(self._session.get_providers())}); see the log above "
                "for ORT's reason. Refusing to serve on a fallback provider."
            )

    def run(self, pixels: np.ndarray) -> np.ndarray:
        (embeddings,) = self._session.run([self._output_name], {self._input_name: pixels})
        return np.asarray(embeddings)

    def close(self) -> None:
        self._session = None  # release the ORT session (and GPU memory) before the stub exits


class TorchModel:
    """Bakeoff's PyTorch module, eager, on the instance's GPU (Triton's device id)."""

    def __init__(self, args: Mapping[str, str], config: Mapping[str, Any]) -> None:
        params = config_parameters(config)
        # The stub ignores PYTHONPATH: the config says where bakeoff_serve lives if needed.
        use_python_path(params)
        import torch

        from bakeoff_serve import model as model_lib  # type: ignore[import-not-found,unused-ignore]

        self._torch = torch
        kind = args.get("model_instance_kind", "")
        if kind != "GPU":
            raise RuntimeError(f"the pytorch runtime needs a KIND_GPU instance, got {kind!r}")
        self._device = torch.device("cuda", int(args.get("model_instance_device_id", "0")))
        dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
        self._dtype = dtypes[params.get("precision", "fp32")]
        weights = params.get("weights") or None
        net, _ = model_lib.build_model(
            params["builtin"], None if weights is None else Path(weights),
            int(params.get("seed", "0")),
        )  # fmt: skip
        self._net = net.to(device=self._device, dtype=self._dtype)

    def run(self, pixels: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            # Request views of Triton's shared memory are read-only; torch wants writable.
            host = pixels if pixels.flags.writeable else pixels.copy()
            batch = torch.from_numpy(host).to(self._device)
            out = self._net(batch.to(self._dtype)).float().cpu()
        return np.asarray(out.numpy())

    def close(self) -> None:
        del self._net  # frees the weights on the GPU before the stub exits


class TritonPythonModel:
    """The entry points Triton's Python backend calls."""

    def initialize(self, args: dict[str, str]) -> None:
        config: dict[str, Any] = json.loads(args["model_config"])
        params = config_parameters(config)
        self._input_name = str(config["input"][0]["name"])
        self._output_name = str(config["output"][0]["name"])
        runtime = params.get("model_runtime", "onnxruntime")
        if runtime == "onnxruntime":
            self._model: OrtModel | TorchModel = OrtModel(args, config)
        elif runtime == "pytorch":
            self._model = TorchModel(args, config)
        else:
            raise RuntimeError(f"unknown model_runtime {runtime!r}; known: onnxruntime, pytorch")
        self._runtime = runtime

    def execute(self, requests: list[Any]) -> list[Any]:
        """One model run for all requests Triton batched together; one response per request."""
        arrays: list[np.ndarray] = []
        try:
            arrays = [input_array(request, self._input_name) for request in requests]
            pixels = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
            embeddings = self._model.run(pixels)
        except Exception as error:
            # Answer every request with the reason; raising here would only log it.
            rows = sum(array.shape[0] for array in arrays)
            message = f"{self._runtime} failed on {rows} rows from {len(requests)} requests: "
            return [
                pb_utils.InferenceResponse(error=pb_utils.TritonError(message + str(error)))
                for _ in requests
            ]
        ranges = split_points([array.shape[0] for array in arrays])
        return [
            pb_utils.InferenceResponse(
                output_tensors=[output_tensor(self._output_name, embeddings[start:stop])]
            )
            for start, stop in ranges
        ]

    def finalize(self) -> None:
        self._model.close()
