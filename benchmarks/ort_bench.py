"""`make gpu-bench-onnxruntime`: the `onnxruntime` kind served vs in-process, one table.

Run it on the GPU machine (CUDA and onnxruntime-gpu needed; hack/gpu-wheels.sh brings the
latter to the lent one). Per configuration (precision, input format, CUDA graphs):

- in-process: the very `OrtRunner` the server uses, the request's tensor in page-locked
  memory where the server receives it -> GPU -> ONNX Runtime -> host, batch 1 and 32;
- served: `python -m bakeoff_serve onnxruntime` on loopback, driven by Bakeoff's load
  generator: single-image p50 with one request in flight, images/s at batch 32 at the best
  of a few concurrency levels;
- the ratios the issue asks for: batch-32 throughput served / in-process, and the batch-1
  p50 the server adds; and parity against PyTorch fp32 eager (worst-row cosine).

Prints one table and writes JSON; asserts nothing. Weights: a seeded random init.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import gpu_bench

from bakeoff_serve import launch, model, ort_runner, process, tritonserver
from bakeoff_serve.options import ExecutionProvider

# (precision, input format, CUDA graphs)
CONFIGS: Final = (
    ("fp16", "uint8", True),
    ("fp32", "fp32", True),
    ("fp16", "fp32", True),
    ("fp16", "uint8", False),
)


@dataclass
class Row:
    precision: str
    input_format: str
    cuda_graphs: bool
    in_process_b1_p50_ms: float
    in_process_b32_images_per_s: float
    served_b1_p50_ms: float
    served_b32_images_per_s: float
    parity_min_cosine: float
    runtime: str

    @property
    def added_b1_ms(self) -> float:
        return self.served_b1_p50_ms - self.in_process_b1_p50_ms

    @property
    def b32_ratio(self) -> float:
        return self.served_b32_images_per_s / self.in_process_b32_images_per_s


def in_process(
    builtin: str, cache: Path, precision: str, fmt: str, graphs: bool, iterations: int,
    reference: np.ndarray,
) -> tuple[float, float, float, str]:  # fmt: skip
    """(batch-1 p50 ms, batch-32 images/s, parity cosine, refused graphs note)."""
    size = model.BUILTIN_MODELS[builtin].image_size
    files = ort_runner.prepare_model_files(
        builtin, None, gpu_bench.SEED, cache, precision=precision, input_format=fmt,
        max_batch_size=gpu_bench.MAX_BATCH, execution_provider=ExecutionProvider.CUDA,
        cuda_graphs=graphs,
    )  # fmt: skip
    runner = ort_runner.OrtRunner(
        files, model.BUILTIN_MODELS[builtin], device=torch.device("cuda", 0),
        precision=precision, input_format=fmt, max_batch_size=gpu_bench.MAX_BATCH,
        cuda_graphs=graphs, execution_provider=ExecutionProvider.CUDA,
    )  # fmt: skip
    runner.warm([])
    parity_shape = [gpu_bench.PARITY_ROWS, 3, size, size]
    outputs, _ = runner.execute([gpu_bench._parity_input(fmt, parity_shape)])
    cosine, _ = gpu_bench._parity(reference, outputs)
    results = []
    for batch in (1, 32):
        inputs = gpu_bench._as_received(gpu_bench._parity_input(fmt, [batch, 3, size, size]))
        for _ in range(20):
            runner.execute([inputs])
        totals = []
        for _ in range(iterations if batch == 1 else max(50, iterations // 3)):
            started = time.perf_counter_ns()
            runner.execute([inputs])
            totals.append((time.perf_counter_ns() - started) / 1e6)
        results.append((statistics.median(totals), batch / statistics.fmean(totals) * 1000))
    note = f"graphs refused: {runner.graphs_refused}" if runner.graphs_refused else ""
    del runner
    torch.cuda.empty_cache()
    return results[0][0], results[1][1], cosine, note


def served(
    builtin: str, cache: Path, precision: str, fmt: str, graphs: bool, iterations: int,
    log_dir: Path,
) -> tuple[float, float, str]:  # fmt: skip
    """(batch-1 p50 ms, best batch-32 images/s, the server's runtime line)."""
    http, grpc = process.free_port(), process.free_port()
    command = launch.pytorch_server_command(
        gpu_bench.MODEL_NAME, builtin, "cuda", precision, http, grpc, gpu_bench.MAX_BATCH, [1],
        gpu_bench.SEED, engine="onnxruntime",
        options=[f"--input-format={fmt}", "--cuda-graphs" if graphs else "--no-cuda-graphs",
                 f"--cache-dir={cache}"],
    )  # fmt: skip
    label = f"{precision}-{fmt}-{'graphs' if graphs else 'eager'}"
    with process.running_server(command, log_dir / f"onnxruntime-{label}.log", 900):
        base = f"http://127.0.0.1:{http}"
        load = gpu_bench.run_load(base, f"{base}/metrics", iterations)
        with urllib.request.urlopen(f"{base}/v2/models/{gpu_bench.MODEL_NAME}/config") as reply:
            runtime = json.loads(reply.read())["parameters"]["runtime"]["string_value"]
    return load["single"].latency.p50_ms, load["best32"].inferences_per_s, runtime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--builtin", default="vit-b32-clip")
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("results/bench/gpu-onnxruntime.json"))
    parser.add_argument("--log-dir", type=Path, default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu-bench-onnxruntime needs a CUDA device", file=sys.stderr)
        return 2
    try:
        ort_runner.check_provider(ExecutionProvider.CUDA)
    except ort_runner.ProviderUnavailableError as error:
        print(error, file=sys.stderr)
        return 2
    card = torch.cuda.get_device_name(0)
    print(f"card: {card}; {args.builtin}, seeded random init (no pretrained weights)", flush=True)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="bakeoff-ort-bench-"))
    cache = tritonserver.default_cache_dir()  # the exports the study and the tests made
    reference_rows, reference = gpu_bench.measure_in_process(
        args.builtin, 50, configs=(("fp32", False, "fp32"),)
    )
    reference_array = np.asarray(reference, dtype=np.float32)
    pytorch_eager_b1 = reference_rows[0].p50_ms
    rows: list[Row] = []
    for precision, fmt, graphs in CONFIGS:
        b1, b32, cosine, note = in_process(
            args.builtin, cache, precision, fmt, graphs, args.iterations, reference_array
        )
        s1, s32, runtime = served(
            args.builtin, cache, precision, fmt, graphs, args.iterations, log_dir
        )
        rows.append(Row(precision, fmt, graphs, b1, b32, s1, s32, cosine, note or runtime))
        row = rows[-1]
        print(
            f"  {precision} {fmt} graphs={graphs}: in-process b1 {b1:.3f} ms, b32 {b32:,.0f} "
            f"img/s; served b1 {s1:.3f} ms (+{row.added_b1_ms:.3f}), b32 {s32:,.0f} img/s "
            f"({row.b32_ratio:.2f}); cosine {cosine:.5f} {note}",
            flush=True,
        )
    print(f"\nONNX Runtime (CUDA EP) served vs in-process on {card}, {args.builtin}")
    print(f"(PyTorch fp32 eager in-process, batch 1: {pytorch_eager_b1:.3f} ms)")
    header = (
        "| precision | input | CUDA graphs | in-process b1 p50 ms | served b1 p50 ms | added ms "
        "| in-process b32 img/s | served b32 img/s | served/in-process | cosine vs PyTorch fp32 |"
    )
    print(header)
    print("|" + " --- |" * 10)
    for r in rows:
        print(
            f"| {r.precision} | {r.input_format} | {'yes' if r.cuda_graphs else 'no'} "
            f"| {r.in_process_b1_p50_ms:.3f} | {r.served_b1_p50_ms:.3f} | {r.added_b1_ms:+.3f} "
            f"| {r.in_process_b32_images_per_s:,.0f} | {r.served_b32_images_per_s:,.0f} "
            f"| {r.b32_ratio:.2f} | {r.parity_min_cosine:.5f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "card": card,
        "builtin": args.builtin,
        "pytorch_fp32_eager_b1_p50_ms": pytorch_eager_b1,
        "rows": [
            {**asdict(r), "added_b1_ms": r.added_b1_ms, "b32_ratio": r.b32_ratio} for r in rows
        ],
    }
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
