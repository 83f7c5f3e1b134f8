"""Command lines that start Bakeoff's backends as local processes.

The local runner and the protocol tests call these and hand the result to
`process.running_server`; the readiness URL in each `Command` means "loaded and warm".
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from bakeoff_serve import process


def pytorch_server_command(
    model_name: str,
    builtin: str,
    device: str,
    precision: str,
    http_port: int,
    grpc_port: int,
    max_batch_size: int,
    warmup_batch_sizes: Sequence[int],
    seed: int,
    weights: Path | None = None,
    python: str = sys.executable,
    host: str = "127.0.0.1",
    options: Sequence[str] = (),
    engine: str = "pytorch",
) -> process.Command:
    """`python -m bakeoff_serve pytorch ...`, ready when /v2/health/ready answers 200.

    `options`: further server flags, e.g. ("--input-format=uint8", "--dynamic-batching").
    `engine`: "onnxruntime" starts the same server with the model in ONNX Runtime.
    """
    argv = [
        python,
        "-m",
        "bakeoff_serve",
        engine,
        f"--model-name={model_name}",
        f"--builtin={builtin}",
        f"--device={device}",
        f"--precision={precision}",
        f"--host={host}",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--max-batch-size={max_batch_size}",
        f"--warmup-batch-sizes={','.join(str(b) for b in warmup_batch_sizes)}",
        f"--seed={seed}",
    ]
    if weights is not None:
        argv.append(f"--weights={weights}")
    argv += options
    return process.Command(
        argv=argv,
        # Unbuffered, so the log file shows progress while the server is still starting.
        env={"PYTHONUNBUFFERED": "1"},
        ready_url=f"http://127.0.0.1:{http_port}/v2/health/ready",
    )


def triton_server_command(
    repo_dir: Path,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    *,
    host: str = "127.0.0.1",
    log_verbose: int = 0,
    cache_dir: Path | None = None,
) -> process.Command:
    """The nvidia-pytriton wheel's real `tritonserver` serving `repo_dir` (Python backend).

    Ready when /v2/health/ready answers 200, which with --strict-readiness means every model
    loaded and ran its model_warmup. Raises tritonserver.TritonNotInstalledError (saying
    `run make venv`) when the wheel is missing. Prepares the backend directory in the cache.
    """
    # Imported here to keep importing `launch` cheap for the PyTorch-only paths.
    from bakeoff_serve import tritonserver

    install = tritonserver.find_tritonserver()
    backend_dir = tritonserver.prepare_backend_directory(install, cache_dir)
    return tritonserver.tritonserver_command(
        install,
        repo_dir,
        http_port,
        grpc_port,
        metrics_port,
        backend_dir=backend_dir,
        log_verbose=log_verbose,
        bind_address=host,
    )
