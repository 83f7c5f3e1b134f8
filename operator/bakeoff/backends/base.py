"""What a backend kind is: the interface every module in `bakeoff.backends` implements.

A kind knows its own fields (`api.<Kind>Backend`), the rules among them (`RULES` in its
module, part of `bakeoff.rules`' table), the pod it deploys in a cluster, the process it
starts for `bakeoff run --local`, and where its server metrics are. Code outside the kinds
never looks at `backend.kind`: it asks the kind's plug-in (`bakeoff.backends.plugin_for`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Protocol

from bakeoff import api, pods
from bakeoff.settings import OperatorSettings
from bakeoff_bench import config as bench_config
from bakeoff_serve import process


@dataclass(frozen=True)
class BackendPod:
    """What a kind deploys for one cell."""

    containers: list[pods.Container]
    images: dict[str, str]  # role -> image, recorded in the result ("which image measured")
    # Prometheus on its own port (Triton's 8002), or on the HTTP port (/metrics)
    metrics_on_own_port: bool
    init_containers: list[pods.Container] = field(default_factory=list)


@dataclass(frozen=True)
class LocalServer:
    """A kind's server as a local process: how to start it and where it answers."""

    command: process.Command
    target: bench_config.Target


@dataclass(frozen=True)
class Identity:
    """What a backend is made of, for telling the engine's share of a difference from the
    server's: two backends that differ in one of these only isolate its effect."""

    server: str  # "bakeoff" (Bakeoff's own server) or "triton"
    engine: str  # "pytorch", "onnxruntime-cuda", "onnxruntime-tensorrt", ...
    precision: str
    wire: str  # the input's wire format: fp32, uint8, jpeg


class BackendPlugin(Protocol):
    @property
    def backend(self) -> api.Backend: ...

    def describe(self) -> str:
        """What runs, in a few words for progress lines, e.g. 'pytorch server (fp16)'."""
        ...

    def identity(self, gpu: bool) -> Identity | None:
        """Its server and engine on a pool with GPUs or without (where every ONNX Runtime
        runs on its CPU provider); None when unknown (a server Bakeoff did not start)."""
        ...

    def remote_target(
        self, suite: api.BenchmarkSuite, secrets_root: PurePath
    ) -> bench_config.Target | None:
        """Where a server that runs outside Bakeoff answers; None when Bakeoff starts it.
        Its credentials are files under `secrets_root` (`<secret>/<key>`)."""
        ...

    def pod(
        self, suite: api.BenchmarkSuite, pool: api.NodePool, settings: OperatorSettings
    ) -> BackendPod | None:
        """The containers of the cell's backend Deployment; None when nothing is deployed."""
        ...

    def start_locally(
        self, suite: api.BenchmarkSuite, gpus: int, work_dir: Path, cache_dir: Path | None
    ) -> LocalServer | None:
        """Prepare (export, write a model repository) and say how to start the server on
        this machine, on `gpus` GPUs (0: on the CPU); None when nothing is started."""
        ...


def warmup_batch_sizes(spec: api.BenchmarkSuiteSpec, max_batch_size: int) -> list[int]:
    """Every batch size the suite will send: a backend is 'ready' only once all are warm."""
    sizes = {1}
    if spec.scenarios.batch_sweep is not None:
        sizes.update(spec.scenarios.batch_sweep.batch_sizes)
    return sorted(s for s in sizes if s <= max_batch_size)


def loopback_target(
    suite: api.BenchmarkSuite, http_port: int, metrics_port: int | None
) -> bench_config.Target:
    """A local server's address; metrics on their own port, or on the HTTP port."""
    port = metrics_port if metrics_port is not None else http_port
    return bench_config.Target(
        http_url=f"http://127.0.0.1:{http_port}",
        metrics_url=f"http://127.0.0.1:{port}/metrics",
        model_name=suite.spec.model.name,
    )


def model_args(suite: api.BenchmarkSuite) -> list[str]:
    """The model flags every server and model-prep command shares."""
    model = suite.spec.model
    args = ["--model-name", model.name, "--builtin", model.source.builtin.value,
            "--seed", str(model.seed)]  # fmt: skip
    if model.source.weights:
        args += ["--weights", model.source.weights]
    return args
