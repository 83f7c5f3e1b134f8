"""The environment record: nvidia-smi parsing (captured output), image and node variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from bakeoff_bench import environment

# Captured on the lent H200 machine (driver 580.159.04).
QUERY_ONE = "NVIDIA H200, 580.159.04\n"
PLAIN_HEADER = """\
Thu Nov 26 12:14:23 2026
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 580.159.04             Driver Version: 580.159.04     CUDA Version: 13.0     |
+-----------------------------------------+------------------------+----------------------+
"""


def test_one_gpu() -> None:
    info = environment.parse_gpu_query(QUERY_ONE)
    assert info == environment.GpuInfo("NVIDIA H200", 1, "580.159.04", None)
    assert environment.parse_cuda_version(PLAIN_HEADER) == "13.0"


def test_several_gpus_are_counted_and_mixed_models_named() -> None:
    same = environment.parse_gpu_query("NVIDIA A100-SXM4-80GB, 550.54.15\n" * 4)
    assert (same.model, same.count, same.driver) == ("NVIDIA A100-SXM4-80GB", 4, "550.54.15")
    mixed = environment.parse_gpu_query(
        "NVIDIA GeForce RTX 4080, 550.54.15\nNVIDIA A100-SXM4-80GB, 550.54.15\n"
    )
    assert mixed.model == "NVIDIA GeForce RTX 4080 + NVIDIA A100-SXM4-80GB"


@pytest.mark.parametrize("text", ["", "No devices were found\n"])
def test_no_gpu_reads_none(text: str) -> None:
    assert environment.parse_gpu_query(text) == environment.GpuInfo()
    assert environment.parse_cuda_version(text) is None


def test_without_nvidia_smi_the_gpu_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert environment.gpu_info() == environment.GpuInfo("none", 0, None, None)


def test_a_fake_nvidia_smi_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    script = tmp_path / "nvidia-smi"
    script.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = "--query-gpu=name,driver_version" ]; then printf "%s" "$QUERY";'
        ' else printf "%s" "$PLAIN"; fi\n'
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("QUERY", QUERY_ONE)
    monkeypatch.setenv("PLAIN", PLAIN_HEADER)
    assert environment.gpu_info() == environment.GpuInfo("NVIDIA H200", 1, "580.159.04", "13.0")


def test_record_has_seed_os_node_and_images(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BAKEOFF_SERVER_NODE", "gpu-node-7")
    monkeypatch.setenv("BAKEOFF_IMAGE_SERVER", "nvcr.io/nvidia/tritonserver:24.10-py3")
    monkeypatch.setenv("BAKEOFF_IMAGE_BENCH", "ghcr.io/bakeoff/bench-job:0.1.0")
    monkeypatch.setenv("PATH", "/nonexistent")
    env = environment.collect_environment(seed=42)
    assert env.seed == 42 and env.server_node == "gpu-node-7"
    assert env.images == {
        "bench": "ghcr.io/bakeoff/bench-job:0.1.0",
        "server": "nvcr.io/nvidia/tritonserver:24.10-py3",
    }
    assert env.gpu_model == "none" and env.gpu_count == 0 and env.os
    assert {"numpy", "aiohttp", "pydantic"} <= set(env.packages)
