"""Runs the reference model for the PyTorch server: one model instance, one worker thread.

`app.main`'s lifespan creates the engine and awaits `load`; the HTTP infer router and the
gRPC servicer await `infer`. Every forward pass runs in a single dedicated thread, so the
event loop stays free to accept and decode requests while executions are serialised, like
one Triton model instance without dynamic batching. The timings it returns are Triton's
phases (queue, compute input, compute infer, compute output) so `server_metrics` can
publish them under Triton's names.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

from bakeoff_serve import model, oip, server_metrics

log = logging.getLogger(__name__)

PRECISIONS: Final[dict[str, torch.dtype]] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
PLATFORM: Final = "bakeoff_pytorch"
BACKEND: Final = "pytorch"
MODEL_VERSION: Final = "1"


def build_signature(model_name: str, builtin: str, max_batch_size: int) -> oip.ModelSignature:
    """The wire signature of a builtin model, known before its weights are loaded."""
    try:
        config = model.BUILTIN_MODELS[builtin]
    except KeyError:
        known = ", ".join(sorted(model.BUILTIN_MODELS))
        raise ValueError(f"unknown builtin model {builtin!r}; known: {known}") from None
    size = config.image_size
    return oip.ModelSignature(
        name=model_name,
        version=MODEL_VERSION,
        platform=PLATFORM,
        backend=BACKEND,
        max_batch_size=max_batch_size,
        inputs=(oip.TensorSpec(model.INPUT_NAME, "FP32", (-1, 3, size, size)),),
        outputs=(oip.TensorSpec(model.OUTPUT_NAME, "FP32", (-1, config.embed_dim)),),
    )


class InferenceEngine:
    """The model on its device and precision, behind a one-thread executor."""

    def __init__(
        self,
        *,
        builtin: str,
        device: str,
        precision: str,
        seed: int,
        weights: Path | None = None,
    ) -> None:
        self.builtin = builtin
        self.device = torch.device(device)
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        self.seed = seed
        self.weights = weights
        self.provenance: model.ModelProvenance | None = None
        self._model: model.ClipVisionTower | None = None
        self._ready = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bakeoff-infer")

    @property
    def ready(self) -> bool:
        """True once the model is loaded and warmed up for every warm-up batch size."""
        return self._ready

    async def load(self, warmup_batch_sizes: Sequence[int]) -> float:
        """Build, move and warm the model in the worker thread; returns the seconds it took."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._load, tuple(warmup_batch_sizes))
        self._ready = True
        return time.perf_counter() - started

    def _load(self, warmup_batch_sizes: tuple[int, ...]) -> None:
        built, self.provenance = model.build_model(self.builtin, self.weights, self.seed)
        self._model = built.to(device=self.device, dtype=self.dtype)
        size = built.config.image_size
        rng = np.random.default_rng(self.seed)
        for batch in warmup_batch_sizes:
            # Same path as a real request, so lazy allocator and kernel selection happen here.
            pixels = rng.random((batch, 3, size, size), dtype=np.float32)
            started = time.perf_counter()
            self._execute(pixels, time.perf_counter_ns())
            log.info("warm-up batch %d took %.3f s", batch, time.perf_counter() - started)

    async def infer(
        self, pixels: np.ndarray[Any, Any]
    ) -> tuple[np.ndarray[Any, Any], server_metrics.ExecTimings]:
        """Embeddings [B, D] float32 for pixels [B, 3, S, S] float32, and the phase timings."""
        if self._model is None:
            raise RuntimeError("the model is not loaded yet")
        arrival_ns = time.perf_counter_ns()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._execute, pixels, arrival_ns)

    def _sync(self) -> None:
        # CUDA kernels run asynchronously; without a sync the phase times would be launch times.
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _execute(
        self, pixels: np.ndarray[Any, Any], arrival_ns: int
    ) -> tuple[np.ndarray[Any, Any], server_metrics.ExecTimings]:
        assert self._model is not None  # load() ran first: the executor is FIFO
        start_ns = time.perf_counter_ns()
        with torch.inference_mode():
            # Decoded wire buffers are read-only; torch wants a writable array (it copies anyway
            # when it moves the tensor to the GPU).
            host = pixels if pixels.flags.writeable else pixels.copy()
            tensor = torch.from_numpy(host).to(self.device).to(self.dtype)
            self._sync()
            input_ns = time.perf_counter_ns()
            embeddings = self._model(tensor)
            self._sync()
            infer_ns = time.perf_counter_ns()
            result = embeddings.float().cpu().numpy()
            output_ns = time.perf_counter_ns()
        return result, server_metrics.ExecTimings(
            queue_ns=start_ns - arrival_ns,
            compute_input_ns=input_ns - start_ns,
            compute_infer_ns=infer_ns - input_ns,
            compute_output_ns=output_ns - infer_ns,
        )

    def runtime(self) -> str:
        """E.g. "pytorch 2.15.0 cpu fp32", reported in the model config."""
        version = torch.__version__.split("+")[0]
        return f"pytorch {version} {self.device.type} {self.precision}"

    def gpu_samples(self) -> list[server_metrics.GpuSample]:
        """Memory and utilisation of the GPU in use; empty on CPU."""
        if self.device.type != "cuda":
            return []
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        uuid = getattr(props, "uuid", None)
        # NVML (through torch, which needs pynvml) sees the whole device, like Triton's DCGM;
        # without it only this process's caching allocator is known.
        try:
            used = int(torch.cuda.device_memory_used(index))
        except Exception:  # pynvml missing, or NVML unusable in this container
            used = int(torch.cuda.memory_reserved(index))
        try:
            utilization: float | None = torch.cuda.utilization(index) / 100.0
        except Exception:
            utilization = None
        return [
            server_metrics.GpuSample(
                uuid=f"GPU-{uuid}" if uuid else f"cuda:{index}",
                memory_used_bytes=used,
                memory_total_bytes=int(props.total_memory),
                utilization=utilization,
            )
        ]

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
