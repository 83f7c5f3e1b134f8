"""`make gpu-bench`'s pure parts: which GPU counts the scaling table runs, and how the
targets table reads a run's numbers (met, missed, or not measured with the reason)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import gpu_bench


def served(
    server: str, fmt: str, rate: float, *, gpus: int = 1, **extra: float
) -> gpu_bench.Served:
    made = gpu_bench.Served(
        server, "fp16", True, fmt,
        single_p50_ms=extra.get("single", 1.3), single_p99_ms=2.0,
        batch32_images_per_s=rate, batch32_concurrency=8, batch32_p50_ms=10.0,
        single_c8_images_per_s=900.0, ceiling_single_p50_ms=1.0,
        ceiling_batch32_images_per_s=extra.get("ceiling", 16_000.0), parity_min_cosine=1.0,
        gpus=gpus, bare_batch32_images_per_s=extra.get("bare", 20_000.0) * gpus,
    )  # fmt: skip
    return made


def test_scaling_table_doubles_up_to_the_gpus_present() -> None:
    assert gpu_bench.gpu_counts(1, None) == [1]
    assert gpu_bench.gpu_counts(8, None) == [1, 2, 4, 8]
    assert gpu_bench.gpu_counts(6, None) == [1, 2, 4, 6]
    assert gpu_bench.gpu_counts(8, 2) == [1, 2]


def test_targets_pick_the_best_server_and_say_what_was_not_measured() -> None:
    runs = [
        served("bakeoff-pytorch 1 inst 1 worker", "uint8", 16_000.0, single=1.5),
        served("bakeoff-pytorch 2 inst 1 worker", "uint8", 19_000.0),
        served("bakeoff-pytorch 1 inst 4 workers", "fp32", 13_600.0),
    ]
    found = {goal.name: goal for goal in gpu_bench.targets(runs, {1: runs[0]}, gpus_present=1)}
    bare = found["b32 served / bare forward (uint8)"]
    assert bare.met is True and bare.measured.startswith("0.95 (19,000")
    assert found["b32 FP32 input served / in-process ceiling"].met is True  # 0.85
    single = found["b1 p50 served - in-process (uint8, 1 worker)"]
    assert single.met is False and single.verdict == "MISSED"
    scaling = found["scaling to 2 GPUs (b32)"]
    assert scaling.met is None and scaling.measured == "this machine has 1 GPU(s)"


def test_scaling_targets_from_a_two_gpu_run() -> None:
    one = served("bakeoff-pytorch 1 inst 1 worker", "uint8", 17_000.0)
    two = served("bakeoff-pytorch 1 inst 1 worker on 2 GPUs", "uint8", 30_000.0, gpus=2)
    found = {g.name: g for g in gpu_bench.targets([one, two], {1: one, 2: two}, gpus_present=2)}
    assert found["scaling to 2 GPUs (b32)"].met is False  # 1.76x < 1.8x
    assert found["scaling to 2 GPUs (b32)"].measured.startswith("1.76x")
    assert found["scaling to 4 GPUs (b32)"].measured == "this machine has 2 GPU(s)"
