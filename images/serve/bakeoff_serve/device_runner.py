"""The model on one device: the only code that touches tensors on the request path.

A `DeviceRunner` is one model instance, like one Triton instance: `execute` runs one batch
(rows from one or more requests) and is called from one thread at a time. What makes it fast
on a GPU:

- batch-size buckets: a batch of n rows runs in the smallest bucket >= n, so a bounded set of
  shapes exists and each is warmed (and captured) before the server says it is ready;
- CUDA graphs, one per bucket: a replay launches the whole forward pass at once, which is what
  single-image latency is made of on a fast GPU (kernel launches, not FLOPs);
- page-locked host memory: a request the server received into pinned memory goes to the GPU
  from there by DMA; a batch of several requests is copied once into the bucket's pinned
  buffer first; outputs come back the same way;
- uint8 input: a quarter of fp32's bytes on the wire and over PCIe, scaled to [0, 1] on the GPU.

On CPU the same code runs eagerly in the model's dtype, without graphs or pinned memory.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import torch

from bakeoff_serve import model, oip

log = logging.getLogger(__name__)

PRECISIONS: Final[dict[str, torch.dtype]] = {
    "fp32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
INPUT_DTYPES: Final[dict[str, tuple[str, np.dtype[Any], torch.dtype]]] = {
    # input format -> (KServe datatype, wire dtype, host tensor dtype)
    "fp32": ("FP32", np.dtype(np.float32), torch.float32),
    "uint8": ("UINT8", np.dtype(np.uint8), torch.uint8),
    # One JPEG file per image (BYTES), decoded by nvJPEG on the GPU when torchvision has it,
    # else on the CPU by Pillow, into the same UINT8 buffers.
    "jpeg": ("BYTES", np.dtype(object), torch.uint8),
}
# Eager passes before a capture, on the capture stream: cuBLAS/cuDNN pick their kernels and
# allocate workspaces outside the graph (what torch.cuda.graphs' documentation asks for).
_CAPTURE_WARMUP_PASSES: Final = 3
# Batches up to this many input bytes are launched from the event loop (see runs_inline):
# a UINT8 batch of 6 images or an FP32 one of 1, about.
INLINE_MAX_BYTES: Final = 1 << 20
# Request bodies from this size on are received into page-locked memory (`pinned_host_buffer`)
# on a GPU. Smaller ones are not: taking a pinned block from torch's allocator and giving it
# back costs more than copying them (measured on an H200: +0.15 ms at batch 1).
PINNED_BODY_MIN_BYTES: Final = 1 << 20


def gpu_jpeg_decoder() -> Any | None:
    """torchvision's batched nvJPEG decode, when torchvision is installed (else None)."""
    try:
        from torchvision.io import decode_jpeg  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    return decode_jpeg


def decode_jpeg_cpu(blob: bytes, size: int) -> np.ndarray[Any, Any]:
    """One JPEG -> UINT8 [3, size, size] with Pillow; a 400 for anything else."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(blob)) as image:
            if image.format != "JPEG":
                raise oip.OipError(400, f"an image is {image.format}, not JPEG")
            rgb = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise oip.OipError(400, f"an image is not a decodable JPEG: {error}") from None
    if rgb.shape[:2] != (size, size):
        raise oip.OipError(
            400, f"an image is {rgb.shape[1]}x{rgb.shape[0]}; the model takes {size}x{size}"
        )
    return rgb.transpose(2, 0, 1)


def batch_buckets(max_batch_size: int) -> tuple[int, ...]:
    """Powers of two below max_batch_size, and max_batch_size itself: 1, 2, 4, ..., max."""
    buckets = []
    size = 1
    while size < max_batch_size:
        buckets.append(size)
        size *= 2
    buckets.append(max_batch_size)
    return tuple(buckets)


def bucket_for(rows: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds `rows` rows."""
    for bucket in buckets:
        if rows <= bucket:
            return bucket
    raise ValueError(f"{rows} rows exceed the largest batch bucket ({buckets[-1]})")


@dataclass(frozen=True)
class PhaseTimes:
    """Where one execution's time went, in Triton's phases (nanoseconds)."""

    start_ns: int  # perf_counter_ns when the batch started (its requests stopped queueing)
    input_ns: int  # request bytes -> host buffers -> device
    infer_ns: int  # the forward pass (a graph replay or eager)
    output_ns: int  # device -> host


class WireToModel(torch.nn.Module):
    """Wire dtype -> model dtype (uint8 scaled to [0, 1]) inside the graph, then the model."""

    def __init__(self, net: torch.nn.Module, dtype: torch.dtype, scale_uint8: bool) -> None:
        super().__init__()
        self.net = net
        self.dtype = dtype
        self.scale_uint8 = scale_uint8

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.to(self.dtype)
        if self.scale_uint8:
            x = x * (1.0 / 255.0)
        # Embeddings leave as float32 whatever the compute dtype, so the wire stays FP32.
        out: torch.Tensor = self.net(x).float()
        return out


class DeviceRunner:
    """One model instance on one device, with its buffers and (on CUDA) its graphs.

    The buffers, staging, phase timing and launch/collect live here; what runs a bucket's
    forward pass is PyTorch here and ONNX Runtime in `ort_runner.OrtRunner`, which overrides
    `warm` and `_forward` only.
    """

    def __init__(
        self,
        net: model.ClipVisionTower,
        *,
        device: torch.device,
        precision: str,
        input_format: str,
        max_batch_size: int,
        cuda_graphs: bool,
        compile_mode: str | None = None,
    ) -> None:
        self._setup_buffers(
            net.config, device=device, precision=precision, input_format=input_format,
            max_batch_size=max_batch_size, cuda_graphs=cuda_graphs,
        )  # fmt: skip
        dtype = PRECISIONS[precision]
        module = WireToModel(
            net.to(device=device, dtype=dtype), dtype, input_format in ("uint8", "jpeg")
        ).eval()
        # torch.compile (inductor), under the CUDA graphs when they are on. Only gpu-bench
        # asks for it: on ViT-B/32 fp16 on an H200 it gained 1-4% (forward 0.90 -> 0.86 ms at
        # batch 1, 1.52 -> 1.46 ms at 32; graphs already remove the launch cost) for 15 s more
        # start-up, so the server does not offer it.
        self._module: Callable[[torch.Tensor], torch.Tensor] = (
            torch.compile(module, mode=compile_mode, dynamic=False) if compile_mode else module
        )
        self._graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._graph_out: dict[int, torch.Tensor] = {}

    def _setup_buffers(
        self,
        config: model.ClipVisionConfig,
        *,
        device: torch.device,
        precision: str,
        input_format: str,
        max_batch_size: int,
        cuda_graphs: bool,
    ) -> None:
        if cuda_graphs and device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.device = device
        self.precision = precision
        self.input_format = input_format
        self.cuda_graphs = cuda_graphs
        self.buckets = batch_buckets(max_batch_size)
        host_dtype = INPUT_DTYPES[input_format][2]
        size = self._size = config.image_size
        self._gpu_decode = (
            gpu_jpeg_decoder() if input_format == "jpeg" and device.type == "cuda" else None
        )
        on_gpu = device.type == "cuda"
        self._stream = torch.cuda.Stream(device) if on_gpu else None  # type: ignore[no-untyped-call]
        # One host and one device input buffer per bucket: a batch is assembled in place and
        # the graph of its bucket reads the device buffer it was captured with.
        self._host_in = {
            b: torch.empty((b, 3, size, size), dtype=host_dtype, pin_memory=on_gpu)
            for b in self.buckets
        }
        self._device_in = {
            b: torch.zeros((b, 3, size, size), dtype=host_dtype, device=device)
            for b in self.buckets
        }
        self._host_out = torch.empty(
            (max_batch_size, config.embed_dim), dtype=torch.float32, pin_memory=on_gpu
        )
        self._events: list[torch.cuda.Event] = []
        if on_gpu:
            self._events = [_timing_event() for _ in range(4)]

    def warm(self, batch_sizes: Sequence[int]) -> None:
        """Run (and on CUDA capture) every bucket once; afterwards no request meets a cold path.

        On CPU only `batch_sizes` run: eager CPU kernels have no per-shape compilation to do,
        and a pass of a large bucket there costs seconds.
        """
        if self.device.type == "cuda":
            sizes = set(self.buckets)
        else:
            sizes = {bucket_for(b, self.buckets) for b in batch_sizes}
        with torch.inference_mode():
            # Largest first: later (smaller) graphs reuse the first one's memory pool.
            pool = None
            for bucket in sorted(sizes, reverse=True):
                started = time.perf_counter()
                if self.cuda_graphs:
                    pool = self._capture(bucket, pool)
                else:
                    with self._on_stream():
                        self._forward(bucket)
                    self._sync()
                log.info(
                    "warmed batch bucket %d on %s (%s%s) in %.3f s",
                    bucket,
                    self.device,
                    self.precision,
                    ", CUDA graph" if self.cuda_graphs else "",
                    time.perf_counter() - started,
                )

    def _capture(self, bucket: int, pool: Any) -> Any:
        assert self._stream is not None
        inputs = self._device_in[bucket]
        self._stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._stream):
            for _ in range(_CAPTURE_WARMUP_PASSES):
                self._module(inputs)
        torch.cuda.current_stream(self.device).wait_stream(self._stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, stream=self._stream):
            self._graph_out[bucket] = self._module(inputs)
        self._graphs[bucket] = graph
        graph.replay()
        self._sync()
        return graph.pool()

    def _forward(self, bucket: int) -> torch.Tensor:
        if self.cuda_graphs:
            self._graphs[bucket].replay()
            return self._graph_out[bucket]
        out: torch.Tensor = self._module(self._device_in[bucket])
        return out

    def time_forward(self, batch: int, repeats: int) -> float:
        """Milliseconds per forward pass of `batch`'s bucket, its input already on the GPU:
        the graph replay (or eager module) alone, back to back, timed by CUDA events.

        gpu-bench's bare ceiling: no request, no copy, no host wait between passes.
        """
        if self._stream is None:
            raise ValueError("the bare forward pass is timed on a CUDA device")
        bucket = bucket_for(batch, self.buckets)
        with torch.inference_mode(), self._on_stream():
            for _ in range(10):
                self._forward(bucket)
            start, end = _timing_event(), _timing_event()
            start.record(self._stream)
            for _ in range(repeats):
                self._forward(bucket)
            end.record(self._stream)
        self._sync()
        return _event_ns(start, end) / 1e6 / repeats

    def _on_stream(self) -> contextlib.AbstractContextManager[Any]:
        return torch.cuda.stream(self._stream) if self._stream else contextlib.nullcontext()

    def _sync(self) -> None:
        # Kernels run asynchronously: without a sync the phase times would be launch times.
        if self._stream is not None:
            self._stream.synchronize()

    def runs_inline(self, arrays: Sequence[np.ndarray[Any, Any]]) -> bool:
        """Whether this batch may be launched from the event loop's own thread.

        A graph replay is one launch (tens of microseconds of CPU) and a small batch's
        staging copy is as short; handing them to a worker thread and back costs more than
        that (two thread wake-ups). Large batches stay in the worker, where their staging
        copy runs beside the event loop instead of stalling it, unless they need none.
        """
        if not self.cuda_graphs:
            return False
        if self.input_format == "jpeg":  # nvJPEG is launched too; Pillow would block the loop
            return self._gpu_decode is not None and sum(a.shape[0] for a in arrays) <= 8
        if sum(a.nbytes for a in arrays) <= INLINE_MAX_BYTES:
            return True
        # A request received into pinned memory has no staging copy: its launch is as short
        # (on an H200, batch 32 served went from 0.80 to 0.90-0.91 of the ceiling: no thread
        # hops between batches).
        return self._pinned_source(arrays) is not None

    def launch(self, arrays: Sequence[np.ndarray[Any, Any]]) -> Launched:
        """Stage the requests' inputs and start the batch; on CUDA it returns before the end."""
        rows = sum(a.shape[0] for a in arrays)
        bucket = bucket_for(rows, self.buckets)
        start_ns = time.perf_counter_ns()
        source = self._stage(arrays, bucket, rows)
        staged_ns = time.perf_counter_ns()
        with torch.inference_mode(), self._on_stream():
            if self._stream is None:  # CPU: each step is done when its call returns
                if source is not None:
                    _as_bytes(self._device_in[bucket])[: source.numel()].copy_(source)
                input_ns = time.perf_counter_ns()
                out = self._forward(bucket)
                infer_ns = time.perf_counter_ns()
                self._host_out[:rows].copy_(out[:rows])
                return Launched(rows, start_ns, (input_ns - start_ns, infer_ns - input_ns))
            # One sync for the whole batch; CUDA events time the phases on the GPU, so timing
            # them costs no extra round trip (a sync per phase would).
            marks = self._events
            marks[0].record(self._stream)
            if source is not None:
                device_bytes = _as_bytes(self._device_in[bucket])[: source.numel()]
                device_bytes.copy_(source, non_blocking=True)
            marks[1].record(self._stream)
            out = self._forward(bucket)
            marks[2].record(self._stream)
            self._host_out[:rows].copy_(out[:rows], non_blocking=True)
            marks[3].record(self._stream)
        return Launched(rows, start_ns, None, staged_ns - start_ns)

    def _stage(
        self, arrays: Sequence[np.ndarray[Any, Any]], bucket: int, rows: int
    ) -> torch.Tensor | None:
        """The batch's input bytes on the host, to copy to the device; None if already there.

        Tensors: a single request received into page-locked memory (`pinned_host_buffer`) is
        copied to the GPU from where it lies; otherwise the one copy of the requests' bytes,
        wire buffer -> this bucket's (pinned) host buffer. Device rows past `rows` keep stale
        data; each row's embedding depends on that row alone.
        """
        if self.input_format != "jpeg":
            pinned = self._pinned_source(arrays)
            if pinned is not None:
                return pinned
            host = self._host_in[bucket].numpy()
            offset = 0
            for array in arrays:
                host[offset : offset + array.shape[0]] = array
                offset += array.shape[0]
            return _as_bytes(self._host_in[bucket])[: host[:rows].nbytes]
        blobs = [bytes(blob) for array in arrays for blob in array.reshape(-1)]
        if self._gpu_decode is not None:
            with self._on_stream():
                try:
                    decoded = self._gpu_decode(
                        [torch.frombuffer(bytearray(blob), dtype=torch.uint8) for blob in blobs],
                        device=self.device,
                    )
                except RuntimeError as error:
                    raise oip.OipError(400, f"an image is not a decodable JPEG: {error}") from None
                for index, image in enumerate(decoded):
                    if tuple(image.shape) != (3, self._size, self._size):
                        raise oip.OipError(
                            400,
                            f"an image decodes to {list(image.shape)}; the model takes "
                            f"[3, {self._size}, {self._size}] (RGB)",
                        )
                    self._device_in[bucket][index].copy_(image)
            return None
        host = self._host_in[bucket].numpy()
        for index, blob in enumerate(blobs):
            host[index] = decode_jpeg_cpu(blob, self._size)
        return _as_bytes(self._host_in[bucket])[: host[:rows].nbytes]

    def _pinned_source(self, arrays: Sequence[np.ndarray[Any, Any]]) -> torch.Tensor | None:
        """One request's tensor bytes, if they lie in page-locked memory (else None)."""
        if self._stream is None or len(arrays) != 1:
            return None
        array = arrays[0]
        # Bytes-backed arrays are read-only and never pinned (torch warns on wrapping them);
        # as bytes, an FP32 tensor at an odd offset after the JSON header is fine too.
        if array.nbytes < PINNED_BODY_MIN_BYTES:
            return None  # never received into pinned memory: skip asking the driver
        if not (array.flags.writeable and array.flags.c_contiguous):
            return None
        source = torch.from_numpy(array.reshape(-1).view(np.uint8))
        return source if source.is_pinned() else None

    def done(self) -> bool:
        """True once the last launched batch has finished (never blocks)."""
        return self._stream is None or bool(self._events[3].query())  # type: ignore[no-untyped-call]

    def collect(self, launched: Launched) -> tuple[np.ndarray[Any, Any], PhaseTimes]:
        """The launched batch's embeddings [rows, D] float32, waiting for it if needed."""
        if launched.cpu_phases is not None:
            input_ns, infer_ns = launched.cpu_phases
        else:
            marks = self._events
            marks[3].synchronize()
            input_ns = launched.staging_ns + _event_ns(marks[0], marks[1])
            infer_ns = _event_ns(marks[1], marks[2])
        # The host buffer is reused by the next batch: hand out a copy (rows x D, small).
        result = self._host_out[: launched.rows].numpy().copy()
        total_ns = time.perf_counter_ns() - launched.start_ns
        return result, PhaseTimes(
            launched.start_ns, input_ns, infer_ns, max(0, total_ns - input_ns - infer_ns)
        )

    def execute(
        self, arrays: Sequence[np.ndarray[Any, Any]]
    ) -> tuple[np.ndarray[Any, Any], PhaseTimes]:
        """Embeddings [sum of rows, D] float32 for the requests' inputs, in order (blocking)."""
        return self.collect(self.launch(arrays))


def _as_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor's memory as a flat uint8 tensor (a view, no copy)."""
    return tensor.view(-1).view(torch.uint8)


def pinned_host_buffer(size: int) -> memoryview:
    """`size` bytes of page-locked host memory, from torch's caching host allocator.

    The HTTP server receives large request bodies into such buffers (`ServerState`'s body
    allocator), so that a request's tensor goes socket -> pinned memory -> GPU with no copy
    on the host; the allocator caches freed blocks, so steady traffic reuses them.
    """
    return torch.empty(size, dtype=torch.uint8, pin_memory=True).numpy().data


@dataclass(frozen=True)
class Launched:
    """A batch on its way: what `collect` needs to finish it."""

    rows: int
    start_ns: int
    cpu_phases: tuple[int, int] | None  # (input, infer) ns, measured on CPU; None on CUDA
    staging_ns: int = 0  # request bytes -> pinned buffer, on CUDA


def _timing_event() -> torch.cuda.Event:
    return torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]


def _event_ns(start: torch.cuda.Event, end: torch.cuda.Event) -> int:
    return int(start.elapsed_time(end) * 1e6)  # elapsed_time is in milliseconds
