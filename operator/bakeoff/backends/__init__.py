"""Backend kinds as plug-ins: one module per kind, registered here.

Adding a kind: its fields as a model in `bakeoff.api` (a member of `api.Backend`), its
module here implementing `BackendPlugin` and listing its `RULES`, and one `case` below.
`plugin_for` matches exhaustively: a kind without a case fails the type check
(`assert_never`), it cannot fall through to another kind's behaviour.
"""

from __future__ import annotations

from typing import assert_never

from bakeoff import api
from bakeoff.backends import external, onnxruntime, pytorch, triton_onnx
from bakeoff.backends.base import BackendPlugin, BackendPod, LocalServer
from bakeoff.backends.external import External
from bakeoff.backends.onnxruntime import Onnxruntime
from bakeoff.backends.pytorch import Pytorch
from bakeoff.backends.triton_onnx import TritonOnnx
from bakeoff.rules import Rule

__all__ = ["KIND_RULES", "BackendPlugin", "BackendPod", "LocalServer", "plugin_for"]

# Each kind's own rules, part of the validation table (`validation.RULES`).
KIND_RULES: tuple[Rule, ...] = (
    *pytorch.RULES,
    *triton_onnx.RULES,
    *onnxruntime.RULES,
    *external.RULES,
)


def plugin_for(backend: api.Backend) -> BackendPlugin:
    match backend:
        case api.PytorchBackend():
            return Pytorch(backend)
        case api.TritonOnnxBackend():
            return TritonOnnx(backend)
        case api.OnnxruntimeBackend():
            return Onnxruntime(backend)
        case api.ExternalBackend():
            return External(backend)
        case _:
            assert_never(backend)
