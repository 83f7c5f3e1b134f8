"""`make gpu-bench`: Bakeoff's PyTorch backend and load generator on a real GPU, in one run.

Run it on the GPU machine (it needs CUDA; it refuses to run without). It measures:

(a) the ceiling: the model in-process, through the very `DeviceRunner` the server uses (the
    request's tensor in page-locked memory, where the server receives it -> GPU -> forward ->
    host), per precision, eager or CUDA graphs, FP32, UINT8 or JPEG input, at batch 1, 8 and
    32 — no HTTP, no event loop; and fp16 graphs through torch.compile (inductor), which the
    server does not offer unless these rows show it helps;
(b) the served numbers: `python -m bakeoff_serve pytorch` on loopback, driven by Bakeoff's
    load generator (the code a benchmark Job runs): single-image p50 with one request in
    flight, images/s at batch 32 at the best of a few concurrency levels;
(c) the ratio of (b) to (a) at the same precision, graph mode and input format;
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
# (precision, CUDA graphs, input format, dynamic batching, instances on the GPU).
SERVED_CONFIGS: Final = (
    ("fp16", True, "uint8", False, 1),
    ("fp16", True, "jpeg", False, 1),
    ("fp16", True, "uint8", False, 2),
    ("fp16", True, "fp32", False, 1),
    ("fp16", False, "fp32", False, 1),
    ("fp16", True, "uint8", True, 2),
)


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
        "--multi-gpu", action="store_true",
        help="only: one server on 1 GPU vs on every GPU (fp16, CUDA graphs, UINT8)",
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
TINY_CONFIG: Final = ("fp16", True, "uint8", False, 1)
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
                    torch_compile=compile_mode is not None,
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


def measure_served_pytorch(
    builtin: str,
    rows: list[InProcess],
    iterations: int,
    log_dir: Path,
    reference: list[list[float]],
    configs: tuple[tuple[str, bool, str, bool, int], ...] = SERVED_CONFIGS,
    gpus: int = 1,
    levels: list[int] = LEVELS,
) -> list[tuple[Served, dict[str, Any]]]:
    out = []
    for precision, graphs, fmt, dynamic, instances in configs:
        http, grpc = process.free_port(), process.free_port()
        options = [
            f"--input-format={fmt}",
            "--cuda-graphs" if graphs else "--no-cuda-graphs",
            f"--instances-per-device={instances}",
            f"--gpus={gpus}",
        ]
        if dynamic:
            options += ["--dynamic-batching", "--max-queue-delay-us=100"]
        command = launch.pytorch_server_command(
            MODEL_NAME, builtin, "cuda", precision, http, grpc, MAX_BATCH, [1], SEED,
            options=options,
        )  # fmt: skip
        mode = "graphs" if graphs else "eager"
        label = f"{precision}-{mode}-{fmt}{'-dynamic' if dynamic else ''}-x{instances}-g{gpus}"
        log = log_dir / f"pytorch-{builtin}-{label}.log"
        with process.running_server(command, log):
            base = f"http://127.0.0.1:{http}"
            load = run_load(base, f"{base}/metrics", iterations, levels)
        single_ceiling = _ceiling(rows, precision, graphs, fmt, 1)
        batch_ceiling = _ceiling(rows, precision, graphs, fmt, 32)
        server = "bakeoff-pytorch" + (" dynamic-batching 100us" if dynamic else "")
        server += f" {instances} instance{'s' if instances > 1 else ''}"
        if builtin == TINY:
            server += f" {TINY}"
        if gpus > 1:
            server += f" on {gpus} GPUs"
        served = _served(
            server,
            precision,
            graphs,
            fmt,
            load,
            single_ceiling,
            batch_ceiling,
            reference,
        )
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


def _print_served(s: Served) -> None:
    added = f"{s.added_single_ms:+.3f} ms" if s.added_single_ms is not None else "n/a"
    ratio = f"{s.throughput_ratio:.2f}" if s.throughput_ratio is not None else "n/a"
    print(
        f"  served {s.server} {s.precision} graphs={s.cuda_graphs} input={s.input_format}: "
        f"b1 p50 {s.single_p50_ms:.3f} ms (in-process {s.ceiling_single_p50_ms}, added {added}); "
        f"b32 {s.batch32_images_per_s:,.0f} img/s at c={s.batch32_concurrency} "
        f"(ratio to ceiling {ratio}); b1 at c=8 {s.single_c8_images_per_s:,.0f} img/s; "
        f"parity cosine {s.parity_min_cosine}",
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
    print("\n(a) in-process ceiling (DeviceRunner: host -> GPU -> forward -> host), ms and img/s")
    print(
        f"{'precision':9} {'graphs':6} {'input':5} {'batch':>5} {'p50':>8} {'forward':>8} "
        f"{'img/s':>9} {'cosine':>9} parity"
    )
    for r in rows:
        graphs = ("yes" if r.cuda_graphs else "no") + ("+tc" if r.torch_compile else "")
        print(
            f"{r.precision:9} {graphs:6} {r.input_format:5} {r.batch:5d} "
            f"{r.p50_ms:8.3f} {r.forward_p50_ms:8.3f} {r.images_per_s:9,.0f} "
            f"{r.parity_min_cosine:9.6f} {'pass' if r.parity_passed else 'FAIL'} {r.model}"
        )
    print("\n(b)/(c) served on loopback by Bakeoff's load generator vs the ceiling")
    print(
        f"{'server':38} {'prec':4} {'graphs':6} {'input':5} {'b1 p50':>8} {'ceiling':>8} "
        f"{'added':>7} {'b32 img/s':>10} {'ceiling':>9} {'ratio':>5}"
    )
    for s in served:
        print(
            f"{s.server:38} {s.precision:4} {'yes' if s.cuda_graphs else 'no':6} "
            f"{s.input_format:5} "
            f"{s.single_p50_ms:8.3f} {s.ceiling_single_p50_ms or float('nan'):8.3f} "
            f"{s.added_single_ms if s.added_single_ms is not None else float('nan'):7.3f} "
            f"{s.batch32_images_per_s:10,.0f} "
            f"{s.ceiling_batch32_images_per_s or float('nan'):9,.0f} "
            f"{s.throughput_ratio if s.throughput_ratio is not None else float('nan'):5.2f}"
        )


def multi_gpu(args: argparse.Namespace, env: dict[str, Any], log_dir: Path) -> int:
    """One server with one instance per GPU, on 1 GPU and on all: how serving scales."""
    config = ("fp16", True, "uint8", False, 1)
    rows, reference = measure_in_process(args.builtin, args.iterations, (config[:3],))
    levels = [1, 2, 4, 8, 16, 32]
    pairs = []
    for gpus in sorted({1, env["gpus"]}):
        pairs += measure_served_pytorch(
            args.builtin, rows, args.iterations, log_dir, reference, (config,), gpus, levels
        )
    served = [s for s, _ in pairs]
    _print_tables(rows, served)
    one, most = served[0], served[-1]
    factor = most.batch32_images_per_s / one.batch32_images_per_s
    print(
        f"\nscaling 1 -> {env['gpus']} GPUs: batch 32 {one.batch32_images_per_s:,.0f} -> "
        f"{most.batch32_images_per_s:,.0f} img/s (x{factor:.2f}); "
        f"batch 1 at 8 in flight {one.single_c8_images_per_s:,.0f} -> "
        f"{most.single_c8_images_per_s:,.0f} img/s"
    )
    report = {
        "environment": env,
        "in_process": [asdict(r) for r in rows],
        "served": [asdict(s) for s in served],
        "served_points": {s.server: load["points"] for s, load in pairs},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


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
    if args.multi_gpu:
        return multi_gpu(args, env, log_dir)
    print("(a) in-process", flush=True)
    rows, reference = measure_in_process(args.builtin, args.iterations)
    if not args.skip_compile:
        print("(a') in-process through torch.compile (inductor) under the graphs", flush=True)
        rows += measure_in_process(
            args.builtin, args.iterations, (COMPILE_CONFIG,), compile_mode="default"
        )[0]
    print("(b) served: Bakeoff's PyTorch server", flush=True)
    served_pairs = measure_served_pytorch(args.builtin, rows, args.iterations, log_dir, reference)
    if not args.skip_tiny:
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
    if not args.skip_triton:
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
    report = {
        "environment": env,
        "in_process": [asdict(r) for r in rows],
        "served": [
            {
                **asdict(s),
                "added_single_ms": s.added_single_ms,
                "throughput_ratio": s.throughput_ratio,
            }
            for s in served
        ],
        "served_points": loads,
        "triton_tensor_passing": diagnosis,
        "logs": str(log_dir),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
