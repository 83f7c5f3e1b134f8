"""Runs the reference model for the PyTorch server: one instance per device, a scheduler in front.

`app.main`'s lifespan creates the engine and awaits `load`; the HTTP infer router and the
gRPC servicer await `infer`. Requests wait in one queue; a scheduler task on the event loop
forms batches (`batching`: one request each, or Triton-style dynamic batching with a queue
delay) and hands each batch to a free `DeviceRunner`, whose executions run in that runner's
own thread, so the event loop stays free to accept and decode requests. With several GPUs
there is one runner per GPU, like Triton's one instance per GPU. The timings it returns are
Triton's phases (queue, compute input, compute infer, compute output) so `server_metrics`
can publish them under Triton's names.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch

from bakeoff_serve import (
    batching,
    device_runner,
    model,
    oip,
    ort_runner,
    server_metrics,
    tritonserver,
)
from bakeoff_serve.options import Engine, ExecutionProvider

log = logging.getLogger(__name__)

# Engine -> (platform, backend) in the model's metadata and config, as Triton names them.
PLATFORMS: Final[dict[Engine, tuple[str, str]]] = {
    Engine.PYTORCH: ("bakeoff_pytorch", "pytorch"),
    Engine.ONNXRUNTIME: ("bakeoff_onnxruntime", "onnxruntime"),
}
MODEL_VERSION: Final = "1"
_JSON_HEADER_ROOM: Final = 64 * 1024


def build_signature(
    model_name: str,
    builtin: str,
    max_batch_size: int,
    input_format: str = "fp32",
    engine: Engine = Engine.PYTORCH,
) -> oip.ModelSignature:
    """The wire signature of a builtin model, known before its weights are loaded."""
    try:
        config = model.BUILTIN_MODELS[builtin]
    except KeyError:
        known = ", ".join(sorted(model.BUILTIN_MODELS))
        raise ValueError(f"unknown builtin model {builtin!r}; known: {known}") from None
    size = config.image_size
    datatype = device_runner.INPUT_DTYPES[input_format][0]
    # A JPEG input is one file per image; its size is in the config's image_size parameter.
    shape = (-1,) if datatype == "BYTES" else (-1, 3, size, size)
    platform, backend = PLATFORMS[engine]
    return oip.ModelSignature(
        name=model_name,
        version=MODEL_VERSION,
        platform=platform,
        backend=backend,
        max_batch_size=max_batch_size,
        inputs=(oip.TensorSpec(model.INPUT_NAME, datatype, shape),),
        outputs=(oip.TensorSpec(model.OUTPUT_NAME, "FP32", (-1, config.embed_dim)),),
    )


def engine_devices(device: str, gpu_indices: Sequence[int]) -> list[torch.device]:
    """cpu -> [cpu]; cuda -> the given CUDA devices (indices among the pod's visible GPUs)."""
    if device == "cpu":
        return [torch.device("cpu")]
    available = torch.cuda.device_count()
    missing = [index for index in gpu_indices if not 0 <= index < available]
    if missing:
        raise ValueError(f"GPU {missing[0]} requested but this machine shows {available}")
    return [torch.device("cuda", index) for index in gpu_indices]


@dataclass
class _Pending:
    array: np.ndarray[Any, Any]
    arrival_ns: int
    future: asyncio.Future[tuple[np.ndarray[Any, Any], server_metrics.ExecTimings]]


class InferenceEngine:
    """The model on its devices and precision, a request queue and the batch scheduler."""

    def __init__(
        self,
        *,
        builtin: str,
        device: str,
        precision: str,
        seed: int,
        weights: Path | None = None,
        input_format: str = "fp32",
        max_batch_size: int = 32,
        cuda_graphs: bool = False,
        dynamic_batching: bool = False,
        max_queue_delay_us: int = 0,
        gpu_indices: Sequence[int] = (0,),
        instances_per_device: int = 1,
        engine: Engine = Engine.PYTORCH,
        execution_provider: ExecutionProvider | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.engine = engine
        # ONNX Runtime's provider: by default the device's (cpu, or cuda on a GPU).
        self.execution_provider = execution_provider or (
            ExecutionProvider.CPU if device == "cpu" else ExecutionProvider.CUDA
        )
        self.cache_dir = cache_dir
        self.builtin = builtin
        self.device = torch.device(device)
        self.precision = precision
        self.seed = seed
        self.weights = weights
        self.input_format = input_format
        self.max_batch_size = max_batch_size
        self.cuda_graphs = cuda_graphs
        self.dynamic_batching = dynamic_batching
        self.max_queue_delay_ns = max_queue_delay_us * 1000
        self.gpu_indices = tuple(gpu_indices)
        # Several instances on one device overlap one batch's copies (and the event loop's
        # turn) with another's forward pass, like Triton's instance_group count.
        self.instances_per_device = instances_per_device
        self.provenance: model.ModelProvenance | None = None
        self.runners: list[device_runner.DeviceRunner] = []
        self._executors: list[ThreadPoolExecutor] = []
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bakeoff-load")
        self._ready = False
        image = model.BUILTIN_MODELS[builtin].image_size
        itemsize = device_runner.INPUT_DTYPES[input_format][1].itemsize
        # A full batch of tensor bytes, and room for the request's JSON header.
        self._max_body_bytes = max_batch_size * 3 * image * image * itemsize + _JSON_HEADER_ROOM
        self._queue: collections.deque[_Pending] = collections.deque()
        self._arrived = asyncio.Event()
        self._free: asyncio.Queue[int] = asyncio.Queue()
        self._scheduler: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    @property
    def ready(self) -> bool:
        """True once every runner is loaded and warm for every batch bucket."""
        return self._ready

    async def load(self, warmup_batch_sizes: Sequence[int]) -> float:
        """Build, move and warm the model on every device; returns the seconds it took."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._loader, self._load, tuple(warmup_batch_sizes))
        for index in range(len(self.runners)):
            self._free.put_nowait(index)
        self._scheduler = asyncio.create_task(self._schedule(), name="bakeoff-scheduler")
        self._ready = True
        return time.perf_counter() - started

    def _load(self, warmup_batch_sizes: tuple[int, ...]) -> None:
        devices = engine_devices(self.device.type, self.gpu_indices)
        make_runner = (
            self._onnxruntime_runners() if self.engine is Engine.ONNXRUNTIME else self._torch_runner
        )
        for device in [d for d in devices for _ in range(self.instances_per_device)]:
            runner = make_runner(device)
            # On CUDA every bucket, not only the requested warm-up sizes: a request of any
            # size must find its graph captured before the server says it is ready.
            runner.warm(warmup_batch_sizes)
            self.runners.append(runner)
            self._executors.append(
                ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"bakeoff-{device}")
            )
        log.info(
            "model ready on %s; batch buckets %s (warm-up sizes asked: %s)",
            ", ".join(str(d) for d in devices),
            self.runners[0].buckets,
            warmup_batch_sizes,
        )

    def _torch_runner(self, device: torch.device) -> device_runner.DeviceRunner:
        net, self.provenance = model.build_model(self.builtin, self.weights, self.seed)
        return device_runner.DeviceRunner(
            net,
            device=device,
            precision=self.precision,
            input_format=self.input_format,
            max_batch_size=self.max_batch_size,
            cuda_graphs=self.cuda_graphs,
        )

    def _onnxruntime_runners(self) -> Callable[[torch.device], device_runner.DeviceRunner]:
        """Export the model once (or find it in the cache); then one session set per runner."""
        provider = self.execution_provider
        ort_runner.check_provider(provider)  # before minutes of export and engine builds
        cache_dir = self.cache_dir or tritonserver.default_cache_dir()
        files = ort_runner.prepare_model_files(
            self.builtin, self.weights, self.seed, cache_dir,
            precision=self.precision, input_format=self.input_format,
            max_batch_size=self.max_batch_size, execution_provider=provider,
            cuda_graphs=self.cuda_graphs,
        )  # fmt: skip
        self.provenance = model.describe_source(self.builtin, self.weights, self.seed)
        config = model.BUILTIN_MODELS[self.builtin]

        def make(device: torch.device) -> device_runner.DeviceRunner:
            return ort_runner.OrtRunner(
                files, config, device=device, precision=self.precision,
                input_format=self.input_format, max_batch_size=self.max_batch_size,
                cuda_graphs=self.cuda_graphs, execution_provider=provider,
                trt_cache_dir=cache_dir / "tensorrt",
            )  # fmt: skip

        return make

    async def infer(
        self, pixels: np.ndarray[Any, Any]
    ) -> tuple[np.ndarray[Any, Any], server_metrics.ExecTimings]:
        """Embeddings [B, D] float32 for pixels [B, 3, S, S], and the phase timings."""
        if not self._ready:
            raise RuntimeError("the model is not loaded yet")
        future: asyncio.Future[tuple[np.ndarray[Any, Any], server_metrics.ExecTimings]]
        future = asyncio.get_running_loop().create_future()
        pending = _Pending(pixels, time.perf_counter_ns(), future)
        if not self._queue and not self._free.empty() and self.max_queue_delay_ns == 0:
            # Nothing waits and an instance is idle: no batch could form, so skip the
            # scheduler's hops (two event-loop turns, a measurable share of a 1 ms request).
            await self._run(self._free.get_nowait(), [pending])
        else:
            self._queue.append(pending)
            self._arrived.set()
        return await future

    async def _schedule(self) -> None:
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            runner_index = await self._free.get()
            if self.dynamic_batching:
                await self._wait_for_batch()
            rows = [pending.array.shape[0] for pending in self._queue]
            count = batching.batch_length(rows, self.max_batch_size, self.dynamic_batching)
            batch = [self._queue.popleft() for _ in range(count)]
            task = asyncio.create_task(self._run(runner_index, batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _wait_for_batch(self) -> None:
        """Until the batch is full or its oldest request has waited the queue delay."""
        deadline_ns = self._queue[0].arrival_ns + self.max_queue_delay_ns
        while not batching.batch_is_full(
            [p.array.shape[0] for p in self._queue], self.max_batch_size
        ):
            remaining_s = (deadline_ns - time.perf_counter_ns()) / 1e9
            if remaining_s <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining_s)
            except TimeoutError:
                return

    async def _run(self, runner_index: int, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        runner = self.runners[runner_index]
        try:
            arrays = [pending.array for pending in batch]
            # Only while every other instance is idle: the loop spins while the GPU works, and
            # it would hold the GIL against busy instances' worker threads (measured: it slows
            # them). A lone request on a several-instance server is launched like on one.
            others_idle = self._free.qsize() == len(self.runners) - 1
            if others_idle and runner.runs_inline(arrays):
                launched = runner.launch(arrays)
                # Yield to the loop until the GPU is done: other requests are read and
                # decoded meanwhile, and no thread wake-up sits between the GPU and the reply.
                try:
                    while not runner.done():
                        await asyncio.sleep(0)
                except asyncio.CancelledError:
                    runner.collect(launched)  # the GPU still reads its buffers: finish first
                    raise
                result, phases = runner.collect(launched)
            else:
                result, phases = await loop.run_in_executor(
                    self._executors[runner_index], runner.execute, arrays
                )
        except Exception as error:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(error)
            return
        finally:
            self._free.put_nowait(runner_index)
        ranges = batching.split_rows([pending.array.shape[0] for pending in batch])
        for index, (pending, (start, stop)) in enumerate(zip(batch, ranges, strict=True)):
            if pending.future.done():  # the client went away
                continue
            timings = server_metrics.ExecTimings(
                queue_ns=max(0, phases.start_ns - pending.arrival_ns),
                compute_input_ns=phases.input_ns,
                compute_infer_ns=phases.infer_ns,
                compute_output_ns=phases.output_ns,
                first_of_execution=index == 0,
            )
            pending.future.set_result((result[start:stop], timings))

    def allocate_body(self, size: int) -> memoryview | None:
        """A buffer for a request body of `size` bytes in page-locked memory, or None.

        On a GPU, the HTTP server receives large bodies here (`http_protocol`), so that a
        request's tensor reaches the device by DMA without a copy on the host. None, and the
        server uses ordinary memory: on CPU, for JPEG input (decoded, not copied), before the
        model is ready (the CUDA context may not exist yet), for small bodies (cheaper to
        copy), and past the largest valid request (a client cannot make the server pin memory
        it declares but never sends).
        """
        if not self._ready or self.device.type != "cuda" or self.input_format == "jpeg":
            return None
        if not device_runner.PINNED_BODY_MIN_BYTES <= size <= self._max_body_bytes:
            return None
        return device_runner.pinned_host_buffer(size)

    def runtime(self) -> str:
        """E.g. "pytorch 2.15.0 cuda fp16 cuda-graphs x2", reported in the model config;
        "onnxruntime 1.31.1 cuda fp16 cuda-graphs" (the provider in place of the device)."""
        runner = self.runners[0] if self.runners else None
        if isinstance(runner, ort_runner.OrtRunner):
            where = self.execution_provider.value
            parts = [f"onnxruntime {runner.runtime_version} {where} {self.precision}"]
            if runner.graphs_refused:
                parts.append("(cuda-graphs refused by onnxruntime)")
        else:
            version = torch.__version__.split("+")[0]
            parts = [f"pytorch {version} {self.device.type} {self.precision}"]
        if runner is not None and runner.cuda_graphs:
            parts.append("cuda-graphs")
        if self.input_format != "fp32":
            parts.append(f"{self.input_format}-input")
        if self.dynamic_batching:
            parts.append(f"dynamic-batching {self.max_queue_delay_ns // 1000}us")
        if len(self.gpu_indices) > 1 and self.device.type == "cuda":
            parts.append(f"x{len(self.gpu_indices)}")
        if self.instances_per_device > 1:
            parts.append(f"{self.instances_per_device} instances per device")
        return " ".join(parts)

    def close(self) -> None:
        if self._scheduler is not None:
            self._scheduler.cancel()
        self._loader.shutdown(wait=True, cancel_futures=True)
        for executor in self._executors:
            executor.shutdown(wait=True, cancel_futures=True)


def gpu_samples(indices: Iterable[int]) -> list[server_metrics.GpuSample]:
    """Memory and utilisation of these GPUs (a scrape reports the server's, every worker's)."""
    return [_gpu_sample(index) for index in indices]


def _gpu_sample(index: int) -> server_metrics.GpuSample:
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
    return server_metrics.GpuSample(
        uuid=f"GPU-{uuid}" if uuid else f"cuda:{index}",
        memory_used_bytes=used,
        memory_total_bytes=int(props.total_memory),
        utilization=utilization,
    )
