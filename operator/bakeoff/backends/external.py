"""Kind `external`: an Open Inference Protocol server that already runs, measured as it is.

Nothing is deployed or started: the load generator goes to the endpoint, from a laptop
(`bakeoff run --local`) or from the benchmark Job alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bakeoff import api
from bakeoff.backends.base import BackendPod, LocalServer
from bakeoff.rules import Rule
from bakeoff.settings import OperatorSettings
from bakeoff_bench import config as bench_config

# Its fields are only the endpoint: the union's shape says all there is to check.
RULES: tuple[Rule, ...] = ()


@dataclass(frozen=True)
class External:
    backend: api.ExternalBackend

    def describe(self) -> str:
        return f"external server at {self.backend.endpoint.http_url}"

    def identity(self, gpu: bool) -> None:
        return None  # whatever serves there, Bakeoff did not choose it

    def remote_target(self, suite: api.BenchmarkSuite) -> bench_config.Target:
        endpoint = self.backend.endpoint
        return bench_config.Target(
            http_url=endpoint.http_url.rstrip("/"),
            metrics_url=endpoint.metrics_url,
            model_name=endpoint.model_name or suite.spec.model.name,
        )

    def pod(
        self, suite: api.BenchmarkSuite, pool: api.NodePool, settings: OperatorSettings
    ) -> BackendPod | None:
        return None

    def start_locally(
        self, suite: api.BenchmarkSuite, gpus: int, work_dir: Path, cache_dir: Path | None
    ) -> LocalServer | None:
        return None
