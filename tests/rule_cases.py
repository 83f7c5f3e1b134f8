"""Every rule of the validation table (`bakeoff.validation.RULES`), broken once: the cases
the unit tier runs through `bakeoff validate` and the cluster tier through a real API server.

Each case starts from examples/rtx4080-vs-a100.yaml (backends: 0 pytorch, 1 triton-onnx
cuda, 2 triton-onnx tensorrt fp16; pools: 0 rtx4080, 1 a100) with an onnxruntime backend
added (3), and expects the problem at one field, with the rule's message.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bakeoff import api, rules, validation

BASE_SUITE = Path(__file__).parents[1] / "examples" / "rtx4080-vs-a100.yaml"
DELETE = object()
# Which backend of the base suite is of each kind (external: the case puts one there).
BACKEND_OF_KIND = {
    api.BackendKind.PYTORCH: 0,
    api.BackendKind.TRITON_ONNX: 1,
    api.BackendKind.ONNXRUNTIME: 3,
}
ONNXRUNTIME = {"name": "ort-cuda", "kind": "onnxruntime", "executionProvider": "cuda"}
EXTERNAL = {"name": "ext", "kind": "external", "endpoint": {"httpUrl": "http://ext:8000"}}
# A value for each field only some kinds have, to set where it does not belong.
KIND_FIELD_SAMPLES: dict[str, Any] = {
    "precision": "fp16",
    "dynamicBatching": {"maxQueueDelayMicroseconds": 100},
    "inputFormat": "uint8",
    "cudaGraphs": True,
    "instancesPerGpu": 2,
    "workersPerGpu": 2,
    "executionProvider": "cuda",
    "endpoint": {"httpUrl": "http://ext:8000"},
}


@dataclass(frozen=True)
class RuleCase:
    name: str
    changes: tuple[tuple[str, Any], ...]
    path: str  # where both layers must blame it, as `bakeoff validate` prints paths
    message: str


def base_suite() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(BASE_SUITE.read_text())
    document["spec"]["backends"].append(dict(ONNXRUNTIME))
    return document


def changed(suite: dict[str, Any], changes: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    """A copy of `suite` with each (dotted path, value) set: digits index lists (one past the
    end appends), DELETE removes."""
    suite = copy.deepcopy(suite)
    for path, value in changes:
        *parents, last = path.split(".")
        node: Any = suite
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        key: Any = int(last) if last.isdigit() else last
        if value is DELETE:
            del node[key]
        elif isinstance(node, list) and key == len(node):
            node.append(value)
        else:
            node[key] = value
    return suite


def _blamed_path(rule: rules.Rule, change_path: str) -> str:
    """The rule's place in the suite, its list indexes taken from the change that breaks it."""
    parts = change_path.split(".")
    text = ""
    for depth, part in enumerate(rule.at):
        if part == "[]":
            text += f"[{parts[depth]}]"
        else:
            text += f".{part}" if text else part
    return f"{text}{rule.field}"


def _kind_field_cases() -> list[RuleCase]:
    cases = []
    for field, owners in rules.kind_fields().items():
        stranger = next(k for k in api.BackendKind if k not in owners)
        message, _ = rules.field_belongs_message(field, owners)
        if stranger is api.BackendKind.EXTERNAL:
            changes: tuple[tuple[str, Any], ...] = (
                ("spec.backends.0", {**EXTERNAL, field: KIND_FIELD_SAMPLES[field]}),
            )
            index = 0
        else:
            index = BACKEND_OF_KIND[stranger]
            changes = ((f"spec.backends.{index}.{field}", KIND_FIELD_SAMPLES[field]),)
        cases.append(RuleCase(f"{field}-on-{stranger.value}", changes,
                              f"spec.backends[{index}].{field}", message))  # fmt: skip
    for kind, model in rules.backend_kinds().items():
        for name, info in model.model_fields.items():
            field = info.alias or name
            if not info.is_required() or field not in rules.kind_fields():
                continue
            message, _ = rules.field_required_message(field, kind)
            if kind is api.BackendKind.EXTERNAL:
                without = {k: v for k, v in EXTERNAL.items() if k != field}
                changes = (("spec.backends.0", without),)
                index = 0
            else:
                index = BACKEND_OF_KIND[kind]
                changes = ((f"spec.backends.{index}.{field}", DELETE),)
            cases.append(RuleCase(f"{kind.value}-without-{field}", changes,
                                  f"spec.backends[{index}].{field}", message))  # fmt: skip
    return cases


def rule_cases() -> list[RuleCase]:
    """One case per rule of the table, and per field of the backend kinds' shapes."""
    cases = [
        RuleCase(
            rule.name.replace(" ", "-"),
            rule.breaks_it,
            _blamed_path(rule, rule.breaks_it[0][0]),
            rule.message,
        )
        for rule in validation.RULES
        if rule.breaks_it
    ]
    return cases + _kind_field_cases()


def rules_without_a_case() -> list[str]:
    """Rules of the table no case breaks (the kinds' shapes are covered field by field)."""
    shaped = {rule.name for rule in rules.kind_field_rules()}
    return [r.name for r in validation.RULES if not r.breaks_it and r.name not in shaped]
