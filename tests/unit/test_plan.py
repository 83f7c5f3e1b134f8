"""Planning a suite: cells, warm-up sizes, the load generator's config, local device choice."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bakeoff import api, local, plan, validation
from bakeoff.backends.base import warmup_batch_sizes
from bakeoff.local import LocalRunError, choose_device, choose_pool
from bakeoff_bench.config import Target

EXAMPLES = Path(__file__).parents[2] / "examples"
STUDY = validation.load_suite(EXAMPLES / "rtx4080-vs-a100.yaml")
MOCK = validation.load_suite(EXAMPLES / "cpu-mock.yaml")


def test_cells_are_every_backend_on_every_pool_in_order() -> None:
    keys = [c.key for c in plan.plan_cells(STUDY.spec)]
    assert keys == [
        "pytorch-rtx4080",
        "triton-onnx-cuda-rtx4080",
        "triton-onnx-trt-rtx4080",
        "pytorch-a100",
        "triton-onnx-cuda-a100",
        "triton-onnx-trt-a100",
    ]


def test_warmup_covers_every_batch_size_the_suite_sends() -> None:
    backend = STUDY.spec.backends[0]
    assert warmup_batch_sizes(STUDY.spec, backend.max_batch_size) == [1, 4, 8, 16, 32]
    assert warmup_batch_sizes(STUDY.spec, 8) == [1, 4, 8]


def test_bench_config_carries_the_suite_scenarios_and_seed() -> None:
    cell = plan.plan_cells(MOCK.spec)[1]
    target = Target(http_url="http://127.0.0.1:1", model_name="openclip-vit-b32")
    config = plan.build_bench_config(MOCK, cell, target)
    assert (config.suite, config.backend, config.pool) == (
        "cpu-mock",
        "triton-onnx-cpu",
        "cpu-mock",
    )
    assert config.single is not None and config.single.requests == 100
    assert config.batch_sweep is not None and config.batch_sweep.batch_sizes == [1, 4, 8]
    assert config.seed == MOCK.spec.model.seed
    # The suite's readySeconds is how long the load generator waits for a backend (external
    # ones above all: nothing else waits for them).
    assert config.ready_timeout_s == MOCK.spec.timeouts.ready_seconds


def test_every_scenario_of_the_suite_reaches_the_load_generator() -> None:
    cell = plan.plan_cells(STUDY.spec)[0]
    target = Target(http_url="http://127.0.0.1:1", model_name="openclip-vit-b32")
    config = plan.build_bench_config(STUDY, cell, target)
    assert config.concurrency_sweep is not None and config.concurrency_sweep.levels == [1, 4, 16]
    assert config.rate is not None and config.rate.requests_per_second == [50, 100]
    assert config.rate.arrival.value == "poisson"
    assert config.rate.slo_p99_ms == 50 and config.rate.max_rate_search is not None


def test_a_rate_without_an_slo_runs_its_rates_and_searches_nothing() -> None:
    document = yaml.safe_load((EXAMPLES / "rtx4080-vs-a100.yaml").read_text())
    del document["spec"]["scenarios"]["rate"]["sloP99Ms"]
    suite = validation.parse_suite(document)
    target = Target(http_url="http://127.0.0.1:1", model_name="openclip-vit-b32")
    config = plan.build_bench_config(suite, plan.plan_cells(suite.spec)[0], target)
    assert config.rate is not None and config.rate.requests_per_second == [50, 100]
    assert config.rate.max_rate_search is None


def test_a_backend_limited_to_some_pools_gets_cells_there_only() -> None:
    backends = [b.model_copy(update={"pools": ["a100"]}) if b.name == "triton-onnx-trt" else b
                for b in STUDY.spec.backends]  # fmt: skip
    spec = STUDY.spec.model_copy(update={"backends": backends})
    keys = [c.key for c in plan.plan_cells(spec)]
    assert "triton-onnx-trt-a100" in keys and "triton-onnx-trt-rtx4080" not in keys
    assert len(keys) == 5


@pytest.mark.parametrize(
    ("pool_index", "requested", "cuda", "expected"),
    [
        (0, "auto", False, "cpu"),
        (0, "cpu", True, "cpu"),
        (0, "cuda", True, "cuda"),
    ],
    ids=["cpu-pool-auto", "forced-cpu", "forced-cuda"],
)
def test_device_choice_for_cpu_pool(
    pool_index: int, requested: str, cuda: bool, expected: str
) -> None:
    pool = MOCK.spec.node_pools[pool_index]
    assert choose_device(pool, requested, cuda) == expected  # type: ignore[arg-type]


def test_gpu_pool_on_a_machine_without_gpu_is_refused_with_the_fix() -> None:
    with pytest.raises(LocalRunError, match="pass --device cpu"):
        choose_device(STUDY.spec.node_pools[0], "auto", cuda_available=False)
    assert choose_device(STUDY.spec.node_pools[0], "auto", cuda_available=True) == "cuda"


def test_unknown_pool_lists_the_pools() -> None:
    with pytest.raises(LocalRunError, match="pools: rtx4080, a100"):
        choose_pool(STUDY.spec, "h100")
    assert choose_pool(STUDY.spec, "a100").name == "a100"
    assert choose_pool(STUDY.spec, None).name == "rtx4080"


def test_local_vram_is_read_on_a_gpu_only_and_never_fails_without_nvml() -> None:
    assert local.device_memory_used(0) is None
    # This machine has no GPU (or no NVML): the caller falls back to host memory, no error.
    found = local.device_memory_used(1)
    assert found is None or found > 0


def test_local_run_serves_on_the_pools_gpus_as_far_as_the_machine_has_them() -> None:
    pool = api.NodePool(name="h200x4", gpus=4, cost_per_hour=1.0)
    assert local.local_gpus(pool, "cuda", visible=8) == 4
    assert local.local_gpus(pool, "cuda", visible=1) == 1
    assert local.local_gpus(pool, "cpu", visible=8) == 0
    cpu_pool = api.NodePool(name="cpu", gpus=0, cost_per_hour=1.0)
    assert local.local_gpus(cpu_pool, "cuda", visible=2) == 1
    assert local.served_on(pool, 4) == "served on 4 GPUs (local run)"
    assert local.served_on(pool, 1) == (
        "served on cuda:0 (local run; pool 'h200x4' asks for 4, this machine has 1)"
    )
    assert local.served_on(pool, 0) == "served on cpu (local run)"
