"""The PyTorch server's batch rule and its CPU execution path (GPU numbers: `make gpu-bench`)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from bakeoff_serve import batching, device_runner, engine, model


def test_without_dynamic_batching_each_request_runs_alone() -> None:
    assert batching.batch_length([1, 1, 1], max_batch_size=8, dynamic=False) == 1
    assert batching.batch_length([], max_batch_size=8, dynamic=False) == 0


def test_dynamic_batch_takes_requests_in_order_while_their_rows_fit() -> None:
    assert batching.batch_length([2, 3, 3, 1], max_batch_size=8, dynamic=True) == 3
    assert batching.batch_length([4, 4, 1], max_batch_size=8, dynamic=True) == 2


def test_a_request_is_never_split_and_an_oversized_head_still_runs() -> None:
    assert batching.batch_length([8, 1], max_batch_size=8, dynamic=True) == 1
    assert batching.batch_length([5, 4], max_batch_size=8, dynamic=True) == 1


def test_batch_is_full_once_queued_rows_reach_the_limit() -> None:
    assert not batching.batch_is_full([3, 4], 8)
    assert batching.batch_is_full([4, 4], 8)


def test_rows_are_split_back_per_request() -> None:
    assert batching.split_rows([2, 1, 3]) == [(0, 2), (2, 3), (3, 6)]


def test_buckets_are_powers_of_two_up_to_the_max_batch_size() -> None:
    assert device_runner.batch_buckets(32) == (1, 2, 4, 8, 16, 32)
    assert device_runner.batch_buckets(12) == (1, 2, 4, 8, 12)
    assert device_runner.batch_buckets(1) == (1,)
    assert device_runner.bucket_for(5, (1, 2, 4, 8)) == 8
    with pytest.raises(ValueError, match="exceed the largest batch bucket"):
        device_runner.bucket_for(9, (1, 2, 4, 8))


def test_cuda_graphs_are_refused_on_cpu() -> None:
    net, _ = model.build_model("vit-tiny-clip", None, 0)
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        device_runner.DeviceRunner(
            net, device=torch.device("cpu"), precision="fp32", input_format="fp32",
            max_batch_size=4, cuda_graphs=True,
        )  # fmt: skip


@pytest.mark.parametrize("input_format", ["fp32", "uint8"])
def test_runner_matches_the_model_for_several_requests_in_one_padded_bucket(
    input_format: str,
) -> None:
    net, _ = model.build_model("vit-tiny-clip", None, 3)
    runner = device_runner.DeviceRunner(
        net, device=torch.device("cpu"), precision="fp32", input_format=input_format,
        max_batch_size=8, cuda_graphs=False,
    )  # fmt: skip
    runner.warm([1])
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (3, 3, 224, 224), dtype=np.uint8)
    images = pixels.astype(np.float32) / 255
    wire = pixels if input_format == "uint8" else images
    # 1 + 2 rows run in bucket 4: the padded row must not leak into the answers.
    outputs, phases = runner.execute([wire[:1], wire[1:]])
    reference, _ = model.build_model("vit-tiny-clip", None, 3)
    with torch.inference_mode():
        expected = reference(torch.from_numpy(images)).numpy()
    assert outputs.shape == (3, 512)
    np.testing.assert_allclose(outputs, expected, atol=1e-5)
    assert min(phases.input_ns, phases.infer_ns, phases.output_ns) >= 0


async def test_dynamic_batching_merges_concurrent_requests_into_one_execution() -> None:
    served = engine.InferenceEngine(
        builtin="vit-tiny-clip", device="cpu", precision="fp32", seed=0,
        max_batch_size=8, dynamic_batching=True, max_queue_delay_us=200_000,
    )  # fmt: skip
    await served.load([1])
    executions: list[int] = []
    runner = served.runners[0]
    original = runner.execute

    def counting(arrays: list[np.ndarray]) -> tuple[np.ndarray, device_runner.PhaseTimes]:
        executions.append(sum(a.shape[0] for a in arrays))
        return original(arrays)

    runner.execute = counting  # type: ignore[method-assign]
    try:
        images = np.random.default_rng(1).random((4, 3, 224, 224), dtype=np.float32)
        answers = await asyncio.gather(*(served.infer(images[i : i + 1]) for i in range(4)))
        alone, _ = await served.infer(images[2:3])
    finally:
        served.close()
    # The four requests arrived within the queue delay: one execution of four rows.
    assert executions[:1] == [4]
    np.testing.assert_allclose(answers[2][0], alone, atol=1e-5)
    assert all(timings.queue_ns >= 0 for _, timings in answers)
