"""Validation rules across fields, each written once for both places it is enforced.

A `Rule` holds the same check twice: as CEL, which `bakeoff.crd` puts in the CRD so that
`kubectl apply` refuses a bad suite, and as Python, which `bakeoff validate`, `bakeoff run`
and the operator run (`validation.check_suite`), for API servers and clients that skip CEL.
Its message and hint are the same in both. The tests break every rule of the table, through
a suite change each rule carries, and expect both layers to name the same field.

A backend kind's own rules live in its module (`bakeoff.backends.<kind>.RULES`); which
fields belong to which kind is read from the `api.Backend` union (`kind_field_rules`).
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, NotRequired, TypedDict, get_args

from pydantic import BaseModel

from bakeoff import api

# Where a rule sits: property names from the root of the CRD schema, "[]" for list items.
Where = tuple[str, ...]
# A change to the suite the tests start from, examples/rtx4080-vs-a100.yaml: (dotted path,
# new value); digits index lists.
Change = tuple[str, Any]


class CelRule(TypedDict):
    """One entry of `x-kubernetes-validations` (apiextensions.k8s.io/v1 ValidationRule)."""

    rule: str
    message: str
    messageExpression: NotRequired[str]
    fieldPath: NotRequired[str]
    reason: NotRequired[str]


@dataclass(frozen=True)
class Rule:
    name: str
    at: Where
    cel: str  # `self` is the node at `at`
    holds: Callable[[Any], bool]  # the same rule on the model object at `at`
    message: str  # what is wrong
    hint: str  # what to write instead
    field: str = ""  # the field to blame, relative to `at`, e.g. ".precision"
    kind: api.BackendKind | None = None  # a kind's own rule: checked on its backends only
    reason: str | None = None  # FieldValueInvalid when None
    breaks_it: tuple[Change, ...] = ()  # makes the tests' valid suite violate the rule
    # A sharper hint from the offending object, for the Python side (e.g. "did you mean").
    hint_for: Callable[[Any], str] | None = None

    def cel_rule(self) -> CelRule:
        rule = self.cel if self.kind is None else f"self.kind != '{self.kind}' || ({self.cel})"
        out: CelRule = {"rule": rule, "message": f"{self.message}; {self.hint}"}
        if self.field:
            out["fieldPath"] = self.field
        if self.reason:
            out["reason"] = self.reason
        return out

    def applies_to(self, node: Any) -> bool:
        return self.kind is None or getattr(node, "kind", None) == self.kind


def nodes_at(suite: api.BenchmarkSuite, at: Where) -> Iterator[tuple[str, Any]]:
    """(path as `bakeoff validate` prints it, model object) for every node at `at`."""
    found: list[tuple[str, Any]] = [("", suite)]
    for part in at:
        deeper: list[tuple[str, Any]] = []
        for path, node in found:
            if part == "[]":
                deeper += [(f"{path}[{i}]", item) for i, item in enumerate(node)]
                continue
            value = getattr(node, _attribute(node, part))
            if value is not None:  # CEL rules on an absent optional field do not run
                deeper.append((f"{path}.{part}" if path else part, value))
        found = deeper
    yield from found


def _attribute(node: BaseModel, alias: str) -> str:
    for name, info in type(node).model_fields.items():
        if alias in (name, info.alias):
            return name
    raise KeyError(f"{type(node).__name__} has no field {alias!r}")


def _unique(values: Sequence[Any]) -> bool:
    return len(set(values)) == len(values)


def _repeated(values: Sequence[Any]) -> str:
    twice = sorted({str(v) for v, n in Counter(values).items() if n > 1})
    return f"repeated: {', '.join(twice)}"


def _did_you_mean(wrong: Sequence[str], right: Sequence[str]) -> str:
    hints = []
    for name in wrong:
        close = difflib.get_close_matches(name, right, n=1)
        hints.append(f"'{name}': did you mean '{close[0]}'?" if close else f"'{name}' is unknown")
    return f"{'; '.join(hints)} (choose from: {', '.join(right)})"


def _unknown_pools(spec: api.BenchmarkSuiteSpec) -> list[str]:
    names = {p.name for p in spec.node_pools}
    return [p for b in spec.backends for p in (b.pools or []) if p not in names]


def _too_small(spec: api.BenchmarkSuiteSpec) -> list[api.Backend]:
    sweep = spec.scenarios.batch_sweep
    top = max(sweep.batch_sizes) if sweep is not None else 0
    return [b for b in spec.backends if b.max_batch_size < top]


def _batch_sweep_requests(sweep: Any) -> int:
    return int(len(sweep.batch_sizes) * (sweep.requests + sweep.warmup))


def _concurrency_requests(sweep: Any) -> int:
    return int(len(sweep.levels) * len(sweep.batch_sizes) * (sweep.requests + sweep.warmup))


CAP = api.MAX_SCENARIO_REQUESTS
SPEC: Where = ("spec",)
# clients absent, or the integer 1 (`auto` may mean several).
_ONE_CLIENT: Final = "!has(self.clients) || (type(self.clients) == int && self.clients == 1)"
BACKENDS: Where = ("spec", "backends")
POOLS: Where = ("spec", "nodePools")

# Every list a rule walks has maxItems, or the API server's cost estimate refuses the CRD.
SUITE_RULES: tuple[Rule, ...] = (
    Rule(
        "unique backend names", BACKENDS, "self.all(b, self.exists_one(c, c.name == b.name))",
        lambda backends: _unique([b.name for b in backends]),
        "backend names must be unique", "give every backend its own name",
        breaks_it=(("spec.backends.1.name", "pytorch"),),
        hint_for=lambda backends: _repeated([b.name for b in backends]),
    ),
    Rule(
        "unique pool names", POOLS, "self.all(p, self.exists_one(q, q.name == p.name))",
        lambda pools: _unique([p.name for p in pools]),
        "pool names must be unique", "give every pool its own name",
        breaks_it=(("spec.nodePools.1.name", "rtx4080"),),
        hint_for=lambda pools: _repeated([p.name for p in pools]),
    ),
    Rule(
        "backend pools exist", SPEC,
        "self.backends.all(b, !has(b.pools) || "
        "b.pools.all(p, self.nodePools.exists(q, q.name == p)))",
        lambda spec: not _unknown_pools(spec),
        "spec.backends[].pools must name pools of spec.nodePools",
        "use the name of a pool listed in spec.nodePools", field=".backends",
        breaks_it=(("spec.backends.0.pools", ["a10"]),),
        hint_for=lambda spec: _did_you_mean(
            _unknown_pools(spec), [p.name for p in spec.node_pools]
        ),
    ),
    Rule(
        "a backend's pools are not empty", ("spec", "backends", "[]"),
        "!has(self.pools) || self.pools.size() > 0",
        lambda backend: backend.pools is None or len(backend.pools) > 0,
        "an empty pools list measures this backend nowhere",
        "list at least one pool, or remove pools to use every pool", field=".pools",
        breaks_it=(("spec.backends.0.pools", []),),
    ),
    Rule(
        "swept batch sizes fit every backend", SPEC,
        "!has(self.scenarios.batchSweep) || self.backends.all(b, "
        "self.scenarios.batchSweep.batchSizes.all(s, s <= b.maxBatchSize))",
        lambda spec: not _too_small(spec),
        "every backend's maxBatchSize must be at least the largest of "
        "spec.scenarios.batchSweep.batchSizes",
        "raise maxBatchSize or drop the larger batch sizes", field=".backends",
        breaks_it=(("spec.backends.0.maxBatchSize", 16),),
        hint_for=lambda spec: "raise maxBatchSize of "
        + ", ".join(f"'{b.name}' ({b.max_batch_size})" for b in _too_small(spec))
        + " or drop the larger batch sizes",
    ),
    Rule(
        "several clients measure in requests, not windows", ("spec", "scenarios"),
        f"{_ONE_CLIENT} || !has(self.steadyState)",
        lambda scenarios: scenarios.clients == 1 or scenarios.steady_state is None,
        "steadyState with clients other than 1 is not supported yet (each client would judge "
        "its windows alone)", "remove steadyState, or set clients: 1", field=".clients",
        breaks_it=(("spec.scenarios.clients", 2),
                   ("spec.scenarios.steadyState", {"windowRequests": 100}),
                   ("spec.scenarios.rate", {"requestsPerSecond": [10]})),
    ),
    Rule(
        "several clients run no max-rate search", ("spec", "scenarios"),
        f"{_ONE_CLIENT} || !has(self.rate) || !has(self.rate.sloP99Ms)",
        lambda scenarios: scenarios.clients == 1
        or scenarios.rate is None
        or scenarios.rate.slo_p99_ms is None,
        "rate.sloP99Ms (the max-rate search) with clients other than 1 is not supported yet "
        "(each client would pick its next rate alone)",
        "remove sloP99Ms, or set clients: 1", field=".clients",
        breaks_it=(("spec.scenarios.clients", "auto"),
                   ("spec.scenarios.rate", {"requestsPerSecond": [10], "sloP99Ms": 50})),
    ),
    Rule(
        "swept batch sizes are unique", ("spec", "scenarios", "batchSweep", "batchSizes"),
        "self.all(x, self.exists_one(y, y == x))", _unique,
        "batch sizes repeat", "list each batch size once",
        breaks_it=(("spec.scenarios.batchSweep.batchSizes", [1, 4, 4]),),
        hint_for=_repeated,
    ),
    Rule(
        "concurrency levels are unique", ("spec", "scenarios", "concurrencySweep", "levels"),
        "self.all(x, self.exists_one(y, y == x))", _unique,
        "concurrency levels repeat", "list each level once",
        breaks_it=(("spec.scenarios.concurrencySweep.levels", [1, 4, 4]),),
        hint_for=_repeated,
    ),
    Rule(
        "concurrency batch sizes are unique",
        ("spec", "scenarios", "concurrencySweep", "batchSizes"),
        "self.all(x, self.exists_one(y, y == x))", _unique,
        "batch sizes repeat", "list each batch size once",
        breaks_it=(("spec.scenarios.concurrencySweep.batchSizes", [2, 2]),),
        hint_for=_repeated,
    ),
    Rule(
        "parity reference names a backend", SPEC,
        "!has(self.parity.reference) || self.backends.exists(b, b.name == self.parity.reference)",
        lambda spec: spec.parity.reference in (None, *(b.name for b in spec.backends)),
        "spec.parity.reference must name one of spec.backends",
        "use a backend's name, or omit it to use the first backend", field=".parity.reference",
        breaks_it=(("spec.parity.reference", "pytorhc"),),
        hint_for=lambda spec: _did_you_mean(
            [spec.parity.reference], [b.name for b in spec.backends]
        ),
    ),
    Rule(
        "batch sweep is not oversize", ("spec", "scenarios", "batchSweep"),
        # The API server also checks this against the field's default, `{}`, whose nested
        # defaults are not filled in there: absent fields mean small defaults.
        "!has(self.batchSizes) || !has(self.requests) || !has(self.warmup) || "
        f"self.batchSizes.size() * (self.requests + self.warmup) <= {CAP}",
        lambda sweep: _batch_sweep_requests(sweep) <= CAP,
        f"batch sizes x (requests + warmup) must not exceed {CAP} requests per cell",
        "lower requests or list fewer batch sizes",
        breaks_it=(("spec.scenarios.batchSweep.requests", 600_000),),
        hint_for=lambda sweep: f"{_batch_sweep_requests(sweep)} requests now; lower requests "
        "or list fewer batch sizes",
    ),
    Rule(
        "concurrency sweep is not oversize", ("spec", "scenarios", "concurrencySweep"),
        "self.levels.size() * self.batchSizes.size() * (self.requests + self.warmup) "
        f"<= {CAP}",
        lambda sweep: _concurrency_requests(sweep) <= CAP,
        f"levels x batch sizes x (requests + warmup) must not exceed {CAP} requests per cell",
        "lower requests, or sweep fewer levels or batch sizes",
        breaks_it=(("spec.scenarios.concurrencySweep.requests", 600_000),),
        hint_for=lambda sweep: f"{_concurrency_requests(sweep)} requests now; lower requests, "
        "or sweep fewer levels or batch sizes",
    ),
    Rule(
        "rate runs fit in runSeconds", SPEC,
        "!has(self.scenarios.rate) || double(self.scenarios.rate.requestsPerSecond.size()) * "
        "self.scenarios.rate.durationSeconds <= double(self.timeouts.runSeconds)",
        lambda spec: spec.scenarios.rate is None
        or len(spec.scenarios.rate.requests_per_second) * spec.scenarios.rate.duration_seconds
        <= spec.timeouts.run_seconds,
        "rates x durationSeconds must fit in spec.timeouts.runSeconds, or the benchmark Job "
        "is stopped before it ends",
        "list fewer rates, shorten durationSeconds or raise runSeconds", field=".scenarios.rate",
        breaks_it=(("spec.scenarios.rate.durationSeconds", 2000),),
    ),
    Rule(
        "a GPU pool selects its nodes", ("spec", "nodePools", "[]"),
        "self.gpus == 0 || (has(self.nodeSelector) && self.nodeSelector.size() > 0)",
        lambda pool: pool.gpus == 0 or bool(pool.node_selector),
        "a GPU pool (gpus > 0) needs a nodeSelector, or its pods may land on any node",
        "select the pool's nodes, e.g. {nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB}, or "
        "set gpus: 0 for a CPU pool",
        field=".nodeSelector", reason="FieldValueRequired",
        breaks_it=(("spec.nodePools.0.nodeSelector", {}),),
    ),
)  # fmt: skip


def backend_kinds() -> dict[api.BackendKind, type[api.BackendBase]]:
    """The members of the `api.Backend` union, by the kind each is."""
    union = get_args(api.Backend)[0]
    kinds = {}
    for model in get_args(union):
        (kind,) = get_args(model.model_fields["kind"].annotation)
        kinds[api.BackendKind(kind)] = model
    return kinds


def _alias(model: type[BaseModel], name: str) -> str:
    return model.model_fields[name].alias or name


def kind_fields() -> dict[str, list[api.BackendKind]]:
    """Each field some kinds have and others not (camelCase) -> the kinds that have it."""
    kinds = backend_kinds()
    common = {_alias(api.BackendBase, n) for n in api.BackendBase.model_fields} | {"kind"}
    owners: dict[str, list[api.BackendKind]] = {}
    for kind, model in kinds.items():
        for name in model.model_fields:
            alias = _alias(model, name)
            if alias not in common:
                owners.setdefault(alias, []).append(kind)
    return {f: k for f, k in owners.items() if len(k) < len(kinds)}


def _kinds_text(kinds: Sequence[api.BackendKind]) -> str:
    names = [k.value for k in kinds]
    return f"kind {names[0]}" if len(names) == 1 else f"kinds {', '.join(names)}"


def field_belongs_message(field: str, kinds: Sequence[api.BackendKind]) -> tuple[str, str]:
    """(message, hint) for a field set on a backend whose kind does not have it."""
    return f"{field} applies to {_kinds_text(kinds)} only", "remove it"


def field_required_message(field: str, kind: api.BackendKind) -> tuple[str, str]:
    """(message, hint) for a field a kind requires, left out."""
    model = backend_kinds()[kind]
    name = next(n for n in model.model_fields if _alias(model, n) == field)
    info = model.model_fields[name]
    choices = info.annotation if isinstance(info.annotation, type) else None
    if choices is not None and issubclass(choices, Enum):
        hint = f"set {field} to one of: {', '.join(str(c.value) for c in choices)}"
    else:
        hint = f"set {field}: {info.description or ''}"
    return f"{field} is required for kind {kind.value}", hint


def kind_field_rules() -> tuple[Rule, ...]:
    """The CEL form of the union's shape: which fields each kind has, and requires.

    In Python the union's models enforce these themselves (an unknown field, a missing
    one); `validation` words those errors with the same messages.
    """
    rules: list[Rule] = []
    at = ("spec", "backends", "[]")
    for field, owners in kind_fields().items():
        allowed = ", ".join(f"'{k.value}'" for k in owners)
        message, hint = field_belongs_message(field, owners)
        rules.append(Rule(
            f"{field} belongs to {_kinds_text(owners)}", at,
            f"self.kind in [{allowed}] || !has(self.{field})", lambda _: True, message, hint,
            field=f".{field}", reason="FieldValueForbidden",
        ))  # fmt: skip
    for kind, model in backend_kinds().items():
        for name, info in model.model_fields.items():
            alias = _alias(model, name)
            if info.is_required() and alias in kind_fields():
                message, hint = field_required_message(alias, kind)
                rules.append(Rule(
                    f"{kind.value} requires {alias}", at,
                    f"self.kind != '{kind.value}' || has(self.{alias})", lambda _: True,
                    message, hint, field=f".{alias}", reason="FieldValueRequired",
                ))  # fmt: skip
    return tuple(rules)
