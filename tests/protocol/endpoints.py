"""What every server fixture of the protocol tier exposes: its loopback ports and URLs."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoopbackServer:
    model_name: str
    builtin: str
    seed: int
    max_batch_size: int
    http_port: int
    grpc_port: int

    @property
    def http_url(self) -> str:
        """host:port, as tritonclient wants it."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"
