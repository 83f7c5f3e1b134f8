"""`make gpu-bench`: Bakeoff's PyTorch backend and load generator on a real GPU, in one run.

Run it on the GPU machine (it needs CUDA; it refuses to run without). It measures:

(a) the ceilings: the model in-process, through the very `DeviceRunner` the server uses (the
    request's tensor in page-locked memory, where the server receives it -> GPU -> forward ->
    host), per precision, eager or CUDA graphs, FP32, UINT8 or JPEG input, at batch 1, 8 and
    32 — no HTTP, no event loop; and fp16 graphs through torch.compile (inductor), which the
    server does not offer unless these rows show it helps. Beside each CUDA-graph row, the
    bare forward pass: the graph replayed back to back with its input already on the GPU (no
    copy, no wait), the most the GPU itself can do;
(b) the served numbers: `python -m bakeoff_serve pytorch` on loopback with 1 to 4 worker
    processes on the GPU, driven by Bakeoff's load generator (the code a benchmark Job runs):
    single-image p50 with one request in flight, images/s at batch 32 at the best of a few
    concurrency levels, and at batch 32 from several client processes (`saturate`: one
    process cannot send FP32 batches as fast as several workers take them);
(c) the ratio of (b) to (a) at the same precision, graph mode and input format, and to the
    bare forward pass; then the scaling table (one worker per GPU on 1, 2, 4, ... GPUs, up to
    `--gpus` or every GPU present) and the issue's targets, met or missed;
(d) Triton as a peer: the bundled `tritonserver` (nvidia-pytriton wheel) serving the same
    module through its Python backend with PyTorch on CUDA, measured the same way; and a
    check of how its Python backend passes tensors (the `binary_data_size: 0` finding).

Parity: every in-process configuration's outputs are compared with fp32 eager on the same
seeded images, with the parity gate's rule (worst-row cosine >= 0.999).

It prints tables and writes JSON; it asserts nothing. The weights are a seeded random init
(no model hub here): right for speed, said in the output.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import torch
from saturate import Saturation, saturate

from bakeoff import analysis
from bakeoff_bench import payloads, runner
from bakeoff_bench.config import BenchConfig, ConcurrencySweepScenario, Target
from bakeoff_serve import device_runner, launch, model, process, triton_repo
from bakeoff_serve.options import Precision

MIN_COSINE: Final = 0.999  # the parity gate's default (api.Parity.min_cosine)
MAX_BATCH: Final = 32
BATCHES: Final = (1, 8, 32)
PARITY_ROWS: Final = 8
SEED: Final = 0
MODEL_NAME: Final = "vit"
# (precision, CUDA graphs, input format, dynamic batching, instances per worker, workers
# per GPU).
ServedConfig = tuple[str, bool, str, bool, int, int]
SERVED_CONFIGS: Final[tuple[ServedConfig, ...]] = (
    ("fp16", True, "uint8", False, 1, 1),
    ("fp16", True, "uint8", False, 1, 2),
    ("fp16", True, "jpeg", False, 1, 1),
    ("fp16", True, "uint8", False, 2, 1),
    ("fp16", True, "fp32", False, 1, 1),
    ("fp16", True, "fp32", False, 1, 2),
    ("fp16", True, "fp32", False, 1, 4),
    ("fp16", False, "fp32", False, 1, 1),
    ("fp16", True, "uint8", True, 2, 1),
)
SATURATION_CLIENTS: Final = 4  # client processes per GPU for the batch-32 saturation
SATURATION_IN_FLIGHT: Final = 2  # requests outstanding per client process
# The targets (UINT8 fp16 CUDA graphs unless noted).
TARGET_BARE_RATIO: Final = 0.85
TARGET_FP32_RATIO: Final = 0.8
TARGET_ADDED_MS: Final = 0.4
TARGET_SCALING: Final = {2: 1.8, 4: 3.5}


@dataclass
class InProcess:
    precision: str
    cuda_graphs: bool
    input_format: str
    batch: int
    p50_ms: float
    mean_ms: float
    forward_p50_ms: float  # the forward pass alone (graph replay or eager), synced
    images_per_s: float
    parity_min_cosine: float
    parity_max_abs: float
    parity_passed: bool
    model: str = ""
    torch_compile: bool = False
    bare_forward_ms: float | None = None  # the graph replay alone, input resident on the GPU

    @property
    def bare_images_per_s(self) -> float | None:
        return self.batch / self.bare_forward_ms * 1000.0 if self.bare_forward_ms else None


@dataclass
class Served:
    server: str
    precision: str
    cuda_graphs: bool
    input_format: str
    single_p50_ms: float
    single_p99_ms: float
    batch32_images_per_s: float
    batch32_concurrency: int
    batch32_p50_ms: float
    single_c8_images_per_s: float  # batch-1 requests, 8 in flight: what dynamic batching lifts
    ceiling_single_p50_ms: float | None
    ceiling_batch32_images_per_s: float | None
    parity_min_cosine: float | None
    workers_per_gpu: int = 1
    gpus: int = 1
    loadgen_batch32_images_per_s: float = 0.0  # one client process (the load generator)
    saturation: Saturation | None = None  # several client processes
    bare_batch32_images_per_s: float | None = None

    @property
    def bare_ratio(self) -> float | None:
        if not self.bare_batch32_images_per_s:
            return None
        return self.batch32_images_per_s / self.bare_batch32_images_per_s

    @property
    def added_single_ms(self) -> float | None:
        if self.ceiling_single_p50_ms is None:
            return None
        return self.single_p50_ms - self.ceiling_single_p50_ms

    @property
    def throughput_ratio(self) -> float | None:
        if not self.ceiling_batch32_images_per_s:
            return None
        return self.batch32_images_per_s / self.ceiling_batch32_images_per_s


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--builtin", default="vit-b32-clip")
    parser.add_argument("--out", type=Path, default=Path("results/bench/gpu.json"))
    parser.add_argument("--iterations", type=int, default=300, help="timed passes per point")
    parser.add_argument("--skip-triton", action="store_true")
    parser.add_argument("--skip-tiny", action="store_true", help=f"no {TINY} runs")
    parser.add_argument("--skip-compile", action="store_true", help="no torch.compile rows")
    parser.add_argument(
        "--gpus", type=int, default=None,
        help="the scaling table's largest GPU count (default: every GPU present)",
    )  # fmt: skip
    parser.add_argument(
        "--scaling-only", action="store_true",
        help="only the fp16 UINT8 graph ceilings, the scaling table and the targets",
    )  # fmt: skip
    parser.add_argument("--log-dir", type=Path, default=None, help="server logs (default: tmp)")
    return parser.parse_args()


def _parity_input(fmt: str, shape: list[int]) -> np.ndarray[Any, Any]:
    datatype = device_runner.INPUT_DTYPES[fmt][0]
    return payloads.seeded_input(SEED + payloads.PARITY_SEED_OFFSET, shape, datatype)


def _as_received(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The request's tensor where the server receives it: in page-locked memory from
    PINNED_BODY_MIN_BYTES on (JPEG files, an object array, are decoded, not copied)."""
    if array.dtype == object or array.nbytes < device_runner.PINNED_BODY_MIN_BYTES:
        return array
    buffer = device_runner.pinned_host_buffer(array.nbytes)
    received = np.frombuffer(buffer, dtype=array.dtype).reshape(array.shape)
    received[...] = array
    return received


def _parity(reference: np.ndarray[Any, Any], other: np.ndarray[Any, Any]) -> tuple[float, float]:
    cosines = analysis.cosine_rows(reference.tolist(), other.tolist())
    return min(cosines), float(np.max(np.abs(reference - other)))


IN_PROCESS_CONFIGS: Final = tuple(
    (precision, graphs, fmt)
    for precision in ("fp32", "fp16", "bf16")
    for graphs in (False, True)
    for fmt in ("fp32", "uint8", "jpeg")
    if fmt == "fp32" or (precision == "fp16" and graphs) or (fmt == "uint8" and precision != "fp32")
)
# A model of about 1/100 of ViT-B/32's compute: its served numbers are the server's own cost.
TINY: Final = "vit-tiny-clip"
LEVELS: Final = [1, 2, 4, 8]
TINY_CONFIG: Final[ServedConfig] = ("fp16", True, "uint8", False, 1, 1)
# torch.compile is measured where it could help most: fp16 under CUDA graphs, UINT8 input.
COMPILE_CONFIG: Final = ("fp16", True, "uint8")


def measure_in_process(
    builtin: str,
    iterations: int,
    configs: tuple[tuple[str, bool, str], ...] = IN_PROCESS_CONFIGS,
    compile_mode: str | None = None,
) -> tuple[list[InProcess], list[list[float]]]:
    """The table (a), and fp32 eager's outputs for the parity images (the reference).

    With `compile_mode`, the configurations run through torch.compile (the reference not).
    """
    size = model.BUILTIN_MODELS[builtin].image_size
    shape = [PARITY_ROWS, 3, size, size]
    device = torch.device("cuda", 0)

    def make(
        precision: str, graphs: bool, fmt: str, compiled: str | None = None
    ) -> device_runner.DeviceRunner:
        net, _ = model.build_model(builtin, None, SEED)
        made = device_runner.DeviceRunner(
            net, device=device, precision=precision, input_format=fmt,
            max_batch_size=MAX_BATCH, cuda_graphs=graphs, compile_mode=compiled,
        )  # fmt: skip
        made.warm([])
        return made

    reference_runner = make("fp32", False, "fp32")
    reference, _ = reference_runner.execute([_parity_input("fp32", shape)])
    del reference_runner
    rows: list[InProcess] = []
    for precision, graphs, fmt in configs:
        engine = make(precision, graphs, fmt, compile_mode)
        outputs, _ = engine.execute([_parity_input(fmt, shape)])
        cosine, max_abs = _parity(reference, outputs)
        for batch in BATCHES:
            inputs = _as_received(_parity_input(fmt, [batch, 3, size, size]))
            for _ in range(20):
                engine.execute([inputs])
            totals, forwards = [], []
            count = iterations if batch == 1 else max(50, iterations // 3)
            bare = engine.time_forward(batch, count) if graphs else None
            for _ in range(count):
                started = time.perf_counter_ns()
                _, phases = engine.execute([inputs])
                totals.append((time.perf_counter_ns() - started) / 1e6)
                forwards.append(phases.infer_ns / 1e6)
            mean = statistics.fmean(totals)
            rows.append(
                InProcess(
                    precision, graphs, fmt, batch,
                    p50_ms=statistics.median(totals), mean_ms=mean,
                    forward_p50_ms=statistics.median(forwards),
                    images_per_s=batch / mean * 1000.0,
                    parity_min_cosine=cosine, parity_max_abs=max_abs,
                    parity_passed=cosine >= MIN_COSINE, model=builtin,
                    torch_compile=compile_mode is not None, bare_forward_ms=bare,
                )
            )  # fmt: skip
        print(
            f"  in-process {precision} graphs={graphs} input={fmt}: "
            + ", ".join(
                f"b{r.batch} p50 {r.p50_ms:.3f} ms ({r.images_per_s:,.0f} img/s)"
                for r in rows[-len(BATCHES) :]
            )
            + f"; parity cosine {cosine:.6f}",
            flush=True,
        )
        del engine
        torch.cuda.empty_cache()
    return rows, reference.tolist()


def _bench_config(
    http_url: str, metrics_url: str | None, iterations: int, levels: list[int]
) -> BenchConfig:
    return BenchConfig(
        suite="gpu-bench", backend="served", pool="local",
        target=Target(http_url=http_url, metrics_url=metrics_url, model_name=MODEL_NAME),
        concurrency_sweep=ConcurrencySweepScenario(
            levels=levels, batch_sizes=[1, 32], requests=iterations, warmup=30
        ),
        seed=SEED, parity_batch=PARITY_ROWS,
    )  # fmt: skip


def run_load(
    http_url: str, metrics_url: str | None, iterations: int, levels: list[int] = LEVELS
) -> dict[str, Any]:
    config = _bench_config(http_url, metrics_url, iterations, levels)
    result = asyncio.run(runner.run_bench(config, progress=lambda message: None))
    points = result.concurrency_sweep
    single = next(p for p in points if p.batch_size == 1 and p.concurrency == 1)
    best32 = max((p for p in points if p.batch_size == 32), key=lambda p: p.inferences_per_s)
    return {
        "single": single,
        "best32": best32,
        "single_c8": next(p for p in points if p.batch_size == 1 and p.concurrency == 8),
        "parity": result.parity_outputs,
        "points": [
            {
                "batch": p.batch_size,
                "concurrency": p.concurrency,
                "p50_ms": p.latency.p50_ms,
                "p99_ms": p.latency.p99_ms,
                "images_per_s": p.inferences_per_s,
                "server": p.server.model_dump() if p.server else None,
                "client": p.client.model_dump() if p.client else None,
            }
            for p in points
        ],
    }


def _ceiling(
    rows: list[InProcess], precision: str, graphs: bool, fmt: str, batch: int
) -> InProcess | None:
    for row in rows:
        if row.torch_compile:
            continue  # the server does not compile: its ceiling is the uncompiled runner
        if (row.precision, row.cuda_graphs, row.input_format, row.batch) == (
            precision,
            graphs,
            fmt,
            batch,
        ):
            return row
    return None


def _saturation_payload(builtin: str, fmt: str) -> payloads.Payload:
    size = model.BUILTIN_MODELS[builtin].image_size
    images = _parity_input(fmt, [MAX_BATCH, 3, size, size])
    return payloads.build_payload(model.INPUT_NAME, model.OUTPUT_NAME, images)


def measure_served_pytorch(
    builtin: str,
    rows: list[InProcess],
    iterations: int,
    log_dir: Path,
    reference: list[list[float]],
    configs: tuple[ServedConfig, ...] = SERVED_CONFIGS,
    gpus: int = 1,
    levels: list[int] = LEVELS,
) -> list[tuple[Served, dict[str, Any]]]:
    out = []
    for precision, graphs, fmt, dynamic, instances, workers in configs:
        http, grpc = process.free_port(), process.free_port()
        options = [
            f"--input-format={fmt}",
            "--cuda-graphs" if graphs else "--no-cuda-graphs",
            f"--instances-per-device={instances}",
            f"--workers-per-device={workers}",
            f"--gpus={gpus}",
        ]
        if dynamic:
            options += ["--dynamic-batching", "--max-queue-delay-us=100"]
        command = launch.pytorch_server_command(
            MODEL_NAME, builtin, "cuda", precision, http, grpc, MAX_BATCH, [1], SEED,
            options=options,
        )  # fmt: skip
        mode = "graphs" if graphs else "eager"
        label = (
            f"{precision}-{mode}-{fmt}{'-dynamic' if dynamic else ''}-x{instances}"
            f"-w{workers}-g{gpus}"
        )
        log = log_dir / f"pytorch-{builtin}-{label}.log"
        with process.running_server(command, log, ready_timeout_s=600):
            base = f"http://127.0.0.1:{http}"
            load = run_load(base, f"{base}/metrics", iterations, levels)
            saturation = saturate(
                base, MODEL_NAME, _saturation_payload(builtin, fmt),
                clients=SATURATION_CLIENTS * gpus, in_flight=SATURATION_IN_FLIGHT,
            )  # fmt: skip
        single_ceiling = _ceiling(rows, precision, graphs, fmt, 1)
        batch_ceiling = _ceiling(rows, precision, graphs, fmt, 32)
        server = "bakeoff-pytorch" + (" dynamic-batching 100us" if dynamic else "")
        server += f" {instances} inst" + f" {workers} worker{'s' if workers > 1 else ''}"
        if builtin == TINY:
            server += f" {TINY}"
        if gpus > 1:
            server += f" on {gpus} GPUs"
        served = _served(
            server, precision, graphs, fmt, load, single_ceiling, batch_ceiling, reference
        )
        served.workers_per_gpu, served.gpus, served.saturation = workers, gpus, saturation
        served.loadgen_batch32_images_per_s = served.batch32_images_per_s
        served.batch32_images_per_s = max(served.batch32_images_per_s, saturation.images_per_s)
        if batch_ceiling is not None and batch_ceiling.bare_images_per_s is not None:
            served.bare_batch32_images_per_s = batch_ceiling.bare_images_per_s * gpus
        if batch_ceiling is not None and served.ceiling_batch32_images_per_s is not None:
            served.ceiling_batch32_images_per_s *= gpus
        _print_served(served)
        out.append((served, load))
    return out


def _served(
    server: str, precision: str, graphs: bool, fmt: str, load: dict[str, Any],
    single_ceiling: InProcess | None, batch_ceiling: InProcess | None,
    reference: list[list[float]],
) -> Served:  # fmt: skip
    single, best, c8 = load["single"], load["best32"], load["single_c8"]
    parity = load["parity"]
    cosine = min(analysis.cosine_rows(reference, parity)) if parity else None
    return Served(
        server, precision, graphs, fmt,
        single_p50_ms=single.latency.p50_ms, single_p99_ms=single.latency.p99_ms,
        batch32_images_per_s=best.inferences_per_s, batch32_concurrency=best.concurrency,
        batch32_p50_ms=best.latency.p50_ms, single_c8_images_per_s=c8.inferences_per_s,
        ceiling_single_p50_ms=single_ceiling.p50_ms if single_ceiling else None,
        ceiling_batch32_images_per_s=batch_ceiling.images_per_s if batch_ceiling else None,
        parity_min_cosine=cosine,
    )  # fmt: skip


def _ratio_text(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "n/a"


def _print_served(s: Served) -> None:
    added = f"{s.added_single_ms:+.3f} ms" if s.added_single_ms is not None else "n/a"
    saturation = (
        f"; b32 from {s.saturation.clients} client processes "
        f"{s.saturation.images_per_s:,.0f} img/s (p50 {s.saturation.p50_ms:.2f} ms)"
        if s.saturation
        else ""
    )
    print(
        f"  served {s.server} {s.precision} graphs={s.cuda_graphs} input={s.input_format}: "
        f"b1 p50 {s.single_p50_ms:.3f} ms (in-process {s.ceiling_single_p50_ms}, added {added}); "
        f"b32 {s.loadgen_batch32_images_per_s or s.batch32_images_per_s:,.0f} img/s at "
        f"c={s.batch32_concurrency} (load generator){saturation}; ratio to ceiling "
        f"{_ratio_text(s.throughput_ratio)}, to bare forward {_ratio_text(s.bare_ratio)}; "
        f"b1 at c=8 {s.single_c8_images_per_s:,.0f} img/s; parity cosine {s.parity_min_cosine}",
        flush=True,
    )


# --- Triton ------------------------------------------------------------------------------------

_DIAGNOSE_MODEL: Final = """
import json
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        self.mode = json.loads(args["model_config"])["parameters"]["mode"]["string_value"]

    def execute(self, requests):
        responses = []
        for request in requests:
            tensor = pb_utils.get_input_tensor_by_name(request, "x")
            if self.mode == "numpy":  # the stub's NumPy API both ways
                values = tensor.as_numpy()
                out = pb_utils.Tensor("y", (values * 2).astype(np.float32))
            else:  # DLPack both ways
                values = np.from_dlpack(tensor)
                out = pb_utils.Tensor.from_dlpack("y", (values * 2).astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
"""


def _write_diagnose_models(repo: Path) -> None:
    for mode in ("numpy", "dlpack"):
        directory = repo / f"diagnose-{mode}"
        (directory / "1").mkdir(parents=True)
        (directory / "1" / "model.py").write_text(_DIAGNOSE_MODEL)
        (directory / "config.pbtxt").write_text(
            f'name: "diagnose-{mode}"\nbackend: "python"\nmax_batch_size: 4\n'
            'input [ { name: "x" data_type: TYPE_FP32 dims: [ 3 ] } ]\n'
            'output [ { name: "y" data_type: TYPE_FP32 dims: [ 3 ] } ]\n'
            "instance_group [ { kind: KIND_GPU count: 1 } ]\n"
            f'parameters [ {{ key: "mode" value: {{ string_value: "{mode}" }} }} ]\n'
        )


def diagnose_tensor_passing(base: str) -> dict[str, Any]:
    """What each way of passing tensors returns, with binary output as the load generator asks."""
    found: dict[str, Any] = {}
    values = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    for mode in ("numpy", "dlpack"):
        body, headers = payloads.encode_binary_infer_request("x", values, "y")
        request = urllib.request.Request(
            f"{base}/v2/models/diagnose-{mode}/infer", data=body, headers=headers, method="POST"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            length_header = response.headers["Inference-Header-Content-Length"]
        if length_header is None:  # a JSON answer: an error, or outputs without binary data
            found[mode] = {"response": raw.decode(errors="replace")[:500]}
            print(f"  triton python backend, {mode} tensors: answered {found[mode]['response']}")
            continue
        length = int(length_header)
        header = json.loads(raw[:length])
        size = header["outputs"][0]["parameters"].get("binary_data_size")
        data = np.frombuffer(raw[length:], dtype="<f4").tolist()
        found[mode] = {"binary_data_size": size, "values": data, "expected": [2.0, 4.0, 6.0]}
        print(f"  triton python backend, {mode} tensors: binary_data_size={size}, values={data}")
    found["numpy_version"] = np.__version__
    return found


def measure_served_triton(
    builtin: str,
    rows: list[InProcess],
    iterations: int,
    log_dir: Path,
    reference: list[list[float]],
) -> tuple[Served, dict[str, Any], dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="bakeoff-triton-") as tmp:
        repo = Path(tmp) / "repo"
        serve_dir = Path(__file__).resolve().parents[1] / "images" / "serve"
        triton_repo.write_pytorch_backend_repository(
            repo, MODEL_NAME, builtin=builtin, seed=SEED, weights=None,
            max_batch_size=MAX_BATCH, precision=Precision.FP16, gpus=[0],
            preferred_batch_sizes=[], max_queue_delay_us=0, python_path=[str(serve_dir)],
            warmup_batch_sizes=[1, 8, 32],
        )  # fmt: skip
        _write_diagnose_models(repo)
        http, grpc, metrics = process.free_port(), process.free_port(), process.free_port()
        command = launch.triton_server_command(
            repo, http, grpc, metrics, cache_dir=Path(tmp) / "cache"
        )
        with process.running_server(command, log_dir / "tritonserver.log"):
            base = f"http://127.0.0.1:{http}"
            diagnosis = diagnose_tensor_passing(base)
            load = run_load(base, f"http://127.0.0.1:{metrics}/metrics", iterations)
    served = _served(
        "tritonserver python-backend pytorch", "fp16", False, "fp32", load,
        _ceiling(rows, "fp16", False, "fp32", 1), _ceiling(rows, "fp16", False, "fp32", 32),
        reference,
    )  # fmt: skip
    _print_served(served)
    return served, load, diagnosis


def _environment() -> dict[str, Any]:
    smi = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return {
        "gpu": torch.cuda.get_device_name(0),
        "gpus": torch.cuda.device_count(),
        "nvidia_smi": smi.stdout.strip(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": sys.version.split()[0],
        "weights": "seeded random init (no model hub): right for speed, not for accuracy",
    }


def _print_tables(rows: list[InProcess], served: list[Served]) -> None:
    print("\n(a) in-process ceiling (DeviceRunner: host -> GPU -> forward -> host), ms and img/s;")
    print("    bare: the CUDA graph replayed alone, its input already on the GPU")
    print(
        f"{'precision':9} {'graphs':6} {'input':5} {'batch':>5} {'p50':>8} {'forward':>8} "
        f"{'img/s':>9} {'bare ms':>8} {'bare img/s':>10} {'cosine':>9} parity"
    )
    for r in rows:
        graphs = ("yes" if r.cuda_graphs else "no") + ("+tc" if r.torch_compile else "")
        bare_ms = f"{r.bare_forward_ms:8.3f}" if r.bare_forward_ms else f"{'-':>8}"
        bare_rate = f"{r.bare_images_per_s:10,.0f}" if r.bare_images_per_s else f"{'-':>10}"
        print(
            f"{r.precision:9} {graphs:6} {r.input_format:5} {r.batch:5d} "
            f"{r.p50_ms:8.3f} {r.forward_p50_ms:8.3f} {r.images_per_s:9,.0f} {bare_ms} "
            f"{bare_rate} {r.parity_min_cosine:9.6f} {'pass' if r.parity_passed else 'FAIL'} "
            f"{r.model}"
        )
    print("\n(b)/(c) served on loopback vs the ceilings (b32: best of the load generator and")
    print(f"    {SATURATION_CLIENTS} client processes per GPU; ratios to the in-process and bare)")
    print(
        f"{'server':44} {'prec':4} {'graphs':6} {'input':5} {'b1 p50':>8} {'ceiling':>8} "
        f"{'added':>7} {'b32 img/s':>10} {'ceiling':>9} {'ratio':>5} {'bare':>9} {'ratio':>5}"
    )
    nan = float("nan")
    for s in served:
        print(
            f"{s.server:44} {s.precision:4} {'yes' if s.cuda_graphs else 'no':6} "
            f"{s.input_format:5} "
            f"{s.single_p50_ms:8.3f} {s.ceiling_single_p50_ms or nan:8.3f} "
            f"{s.added_single_ms if s.added_single_ms is not None else nan:7.3f} "
            f"{s.batch32_images_per_s:10,.0f} "
            f"{s.ceiling_batch32_images_per_s or nan:9,.0f} "
            f"{s.throughput_ratio if s.throughput_ratio is not None else nan:5.2f} "
            f"{s.bare_batch32_images_per_s or nan:9,.0f} "
            f"{s.bare_ratio if s.bare_ratio is not None else nan:5.2f}"
        )


@dataclass
class Goal:
    name: str
    measured: str
    goal: str
    met: bool | None  # None: not measured on this machine

    @property
    def verdict(self) -> str:
        return {True: "met", False: "MISSED", None: "not measured"}[self.met]


def _best(served: list[Served], fmt: str, gpus: int = 1) -> Served | None:
    """The best batch-32 server of fp16 graphs with this input (no dynamic batching)."""
    candidates = [
        s for s in served
        if (s.precision, s.cuda_graphs, s.input_format, s.gpus) == ("fp16", True, fmt, gpus)
        and "dynamic" not in s.server and TINY not in s.server
    ]  # fmt: skip
    return max(candidates, key=lambda s: s.batch32_images_per_s, default=None)


def targets(served: list[Served], scaling: dict[int, Served], gpus_present: int) -> list[Goal]:
    """The issue's targets from this run's numbers (pure)."""
    found: list[Goal] = []
    best = _best(served, "uint8")
    ratio = best.bare_ratio if best else None
    found.append(Goal(
        "b32 served / bare forward (uint8)",
        f"{ratio:.2f} ({best.batch32_images_per_s:,.0f} vs {best.bare_batch32_images_per_s:,.0f} "
        f"img/s, {best.server})" if best and ratio is not None else "n/a",
        f">= {TARGET_BARE_RATIO}", None if ratio is None else ratio >= TARGET_BARE_RATIO,
    ))  # fmt: skip
    fp32 = _best(served, "fp32")
    ratio = fp32.throughput_ratio if fp32 else None
    found.append(Goal(
        "b32 FP32 input served / in-process ceiling",
        f"{ratio:.2f} ({fp32.batch32_images_per_s:,.0f} vs "
        f"{fp32.ceiling_batch32_images_per_s:,.0f} img/s, {fp32.server})"
        if fp32 and ratio is not None else "n/a",
        f">= {TARGET_FP32_RATIO}", None if ratio is None else ratio >= TARGET_FP32_RATIO,
    ))  # fmt: skip
    single = next(
        (s for s in served if s.server.startswith("bakeoff-pytorch 1 inst 1 worker")
         and (s.precision, s.cuda_graphs, s.input_format, s.gpus) == ("fp16", True, "uint8", 1)),
        None,
    )  # fmt: skip
    added = single.added_single_ms if single else None
    found.append(Goal(
        "b1 p50 served - in-process (uint8, 1 worker)",
        f"{added:+.3f} ms ({single.single_p50_ms:.3f} vs {single.ceiling_single_p50_ms:.3f})"
        if single and added is not None and single.ceiling_single_p50_ms is not None else "n/a",
        f"<= {TARGET_ADDED_MS} ms", None if added is None else added <= TARGET_ADDED_MS,
    ))  # fmt: skip
    one = scaling.get(1)
    for count, goal in TARGET_SCALING.items():
        many = scaling.get(count)
        if one is None or many is None:
            why = f"this machine has {gpus_present} GPU(s)" if count > gpus_present else "not run"
            found.append(Goal(f"scaling to {count} GPUs (b32)", why, f">= {goal}x", None))
            continue
        factor = many.batch32_images_per_s / one.batch32_images_per_s
        found.append(Goal(
            f"scaling to {count} GPUs (b32)",
            f"{factor:.2f}x ({one.batch32_images_per_s:,.0f} -> "
            f"{many.batch32_images_per_s:,.0f} img/s)",
            f">= {goal}x", factor >= goal,
        ))  # fmt: skip
    return found


def _print_targets(found: list[Goal]) -> None:
    print("\ntargets (fp16, CUDA graphs, UINT8 unless noted)")
    print(f"{'target':46} {'goal':>10} {'verdict':>12}  measured")
    for target in found:
        print(f"{target.name:46} {target.goal:>10} {target.verdict:>12}  {target.measured}")


def gpu_counts(present: int, limit: int | None) -> list[int]:
    """1, 2, 4, ... up to the GPUs present (or `limit`), and that count itself."""
    top = min(present, limit or present)
    counts = [1]
    while counts[-1] * 2 <= top:
        counts.append(counts[-1] * 2)
    if counts[-1] != top:
        counts.append(top)
    return counts


def measure_scaling(
    args: argparse.Namespace,
    env: dict[str, Any],
    rows: list[InProcess],
    reference: list[list[float]],
    log_dir: Path,
    one_gpu: Served | None,
) -> dict[int, Served]:
    """One worker per GPU, fp16 graphs, UINT8: batch 32 on 1, 2, 4, ... GPUs."""
    config: ServedConfig = ("fp16", True, "uint8", False, 1, 1)
    scaling: dict[int, Served] = {}
    for count in gpu_counts(env["gpus"], args.gpus):
        if count == 1 and one_gpu is not None:
            scaling[1] = one_gpu  # the same server as (b)'s first row: not measured twice
            continue
        [(served, _)] = measure_served_pytorch(
            args.builtin, rows, args.iterations, log_dir, reference, (config,), count,
            [1, 2, 4, 8, 16, 32],
        )  # fmt: skip
        scaling[count] = served
    print("\nscaling: one worker per GPU, fp16 graphs, UINT8, batch 32")
    print(f"{'GPUs':>4} {'b32 img/s':>10} {'x one GPU':>9} {'bare x GPUs':>11} {'ratio':>5}")
    for count, served in scaling.items():
        factor = served.batch32_images_per_s / scaling[1].batch32_images_per_s
        print(
            f"{count:4d} {served.batch32_images_per_s:10,.0f} {factor:9.2f} "
            f"{served.bare_batch32_images_per_s or float('nan'):11,.0f} "
            f"{served.bare_ratio if served.bare_ratio is not None else float('nan'):5.2f}"
        )
    return scaling


def _write_report(args: argparse.Namespace, report: dict[str, Any], served: list[Served]) -> None:
    report["served"] = [
        {
            **asdict(s),
            "added_single_ms": s.added_single_ms,
            "throughput_ratio": s.throughput_ratio,
            "bare_ratio": s.bare_ratio,
        }
        for s in served
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {args.out}")


def main() -> int:
    args = _parse_args()
    if not torch.cuda.is_available():
        print("gpu-bench needs a CUDA GPU; this machine has none (run it on the GPU machine)")
        return 2
    env = _environment()
    print(
        f"GPU: {env['gpu']} x{env['gpus']} ({env['nvidia_smi']}); torch {env['torch']}; "
        f"{env['weights']}"
    )
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="bakeoff-gpu-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    print("(a) in-process", flush=True)
    configs = (("fp16", True, "uint8"),) if args.scaling_only else IN_PROCESS_CONFIGS
    rows, reference = measure_in_process(args.builtin, args.iterations, configs)
    if not args.skip_compile and not args.scaling_only:
        print("(a') in-process through torch.compile (inductor) under the graphs", flush=True)
        rows += measure_in_process(
            args.builtin, args.iterations, (COMPILE_CONFIG,), compile_mode="default"
        )[0]
    print("(b) served: Bakeoff's PyTorch server", flush=True)
    served_configs = SERVED_CONFIGS[:1] if args.scaling_only else SERVED_CONFIGS
    served_pairs = measure_served_pytorch(
        args.builtin, rows, args.iterations, log_dir, reference, served_configs
    )
    if not args.skip_tiny and not args.scaling_only:
        print(f"(b') served: the same server with {TINY}: what the server itself costs", flush=True)
        tiny_rows, tiny_reference = measure_in_process(TINY, args.iterations, (TINY_CONFIG[:3],))
        rows += tiny_rows
        served_pairs += measure_served_pytorch(
            TINY, tiny_rows, args.iterations, log_dir, tiny_reference, (TINY_CONFIG,)
        )
    served = [s for s, _ in served_pairs]
    loads = {
        f"{s.server} {s.precision} graphs={s.cuda_graphs} {s.input_format}": load["points"]
        for s, load in served_pairs
    }
    diagnosis = None
    if not args.skip_triton and not args.scaling_only:
        print("(d) served: tritonserver, Python backend, PyTorch on CUDA", flush=True)
        try:
            triton, load, diagnosis = measure_served_triton(
                args.builtin, rows, args.iterations, log_dir, reference
            )
            served.append(triton)
            loads[triton.server] = load["points"]
        except process.ServerStartError as error:
            print(f"  tritonserver did not start: {error}")
    _print_tables(rows, served)
    scaling = measure_scaling(args, env, rows, reference, log_dir, served[0])
    found = targets(served + [s for n, s in scaling.items() if n > 1], scaling, env["gpus"])
    _print_targets(found)
    report = {
        "environment": env,
        "in_process": [{**asdict(r), "bare_images_per_s": r.bare_images_per_s} for r in rows],
        "served_points": loads,
        "scaling": {str(n): asdict(s) for n, s in scaling.items()},
        "targets": [{**asdict(t), "verdict": t.verdict} for t in found],
        "triton_tensor_passing": diagnosis,
        "logs": str(log_dir),
    }
    _write_report(args, report, served)
    return 0


if __name__ == "__main__":
    sys.exit(main())
