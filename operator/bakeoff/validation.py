"""Turn a suite file into a `BenchmarkSuite`, or into a list of problems a person can fix.

Every problem names its field path (`spec.backends[1].kind`), says what is wrong and, where
we can tell, what to write instead. The CLI prints them; nothing here raises to the user.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from bakeoff import api


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    hint: str = ""

    def render(self) -> str:
        text = f"{self.path}: {self.message}"
        return f"{text}\n    hint: {self.hint}" if self.hint else text


class SuiteInvalid(Exception):
    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        super().__init__(f"{source}: {len(problems)} problem(s)")
        self.source = source
        self.problems = list(problems)


def format_loc(loc: Iterable[int | str]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(document)"


def _model_at(loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The pydantic model that owns the field at `loc` (for 'did you mean' hints)."""
    model: type[BaseModel] = api.BenchmarkSuite
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = next((f for name, f in model.model_fields.items() if part in (name, f.alias)), None)
        if field is None:
            return None
        inner = _first_model_type(field.annotation)
        if inner is None:
            return None
        model = inner
    return model


def _first_model_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _first_model_type(arg)
        if found is not None:
            return found
    return None


def _hint_for(error: Any) -> str:
    kind = error["type"]
    loc = error["loc"]
    if kind == "extra_forbidden":
        model = _model_at(loc)
        if model is not None:
            known = [f.alias or n for n, f in model.model_fields.items()]
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            if close:
                return f"did you mean '{close[0]}'? fields here: {', '.join(known)}"
            return f"fields allowed here: {', '.join(known)}"
    if kind == "missing":
        return f"add '{loc[-1]}'"
    if kind in ("enum", "literal_error"):
        return "use one of the values listed"
    if kind == "string_pattern_mismatch":
        return "use lower-case letters, digits and '-', starting and ending with a letter or digit"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return "change the number to fit the bound"
    if kind == "too_short":
        return "add at least one entry"
    return ""


def problems_from_validation_error(error: ValidationError) -> list[Problem]:
    problems = []
    for item in error.errors(include_url=False):
        problems.append(Problem(format_loc(item["loc"]), str(item["msg"]), _hint_for(item)))
    return problems


def _duplicates(names: Sequence[str]) -> set[str]:
    return {name for name, count in Counter(names).items() if count > 1}


def check_suite(suite: api.BenchmarkSuite) -> list[Problem]:
    """Rules across fields, each reported at the exact path of the offending value."""
    spec = suite.spec
    problems: list[Problem] = []
    backend_names = [b.name for b in spec.backends]
    for field, names in (
        ("backends", backend_names),
        ("nodePools", [p.name for p in spec.node_pools]),
    ):
        dup = _duplicates(names)
        for index, name in enumerate(names):
            if name in dup and names.index(name) != index:
                problems.append(
                    Problem(
                        f"spec.{field}[{index}].name",
                        f"duplicate name '{name}'",
                        "give every entry a unique name",
                    )
                )
    sweep = spec.scenarios.batch_sweep
    for index, backend in enumerate(spec.backends):
        at = f"spec.backends[{index}]"
        if backend.kind is api.BackendKind.PYTORCH:
            if backend.execution_provider is not None:
                problems.append(
                    Problem(
                        f"{at}.executionProvider",
                        "executionProvider applies to kind triton-onnx only",
                        "remove it; the pytorch backend runs on the pool's device",
                    )
                )
            batching = backend.dynamic_batching
            if batching is not None and batching.preferred_batch_sizes:
                problems.append(
                    Problem(
                        f"{at}.dynamicBatching.preferredBatchSizes",
                        "preferredBatchSizes applies to kind triton-onnx only",
                        "remove it; the pytorch server batches up to maxBatchSize",
                    )
                )
        else:
            for field, changed in (
                ("inputFormat", backend.input_format is not api.WireInput.FP32),
                ("cudaGraphs", backend.cuda_graphs is not None),
                ("instancesPerGpu", backend.instances_per_gpu != 1),
            ):
                if changed:
                    problems.append(
                        Problem(
                            f"{at}.{field}", f"{field} applies to kind pytorch only", "remove it"
                        )
                    )
        if backend.kind is api.BackendKind.TRITON_ONNX:
            if backend.execution_provider is None:
                problems.append(
                    Problem(
                        f"{at}.executionProvider",
                        "triton-onnx needs an execution provider",
                        "set executionProvider: cuda, tensorrt or cpu",
                    )
                )
            elif (
                backend.execution_provider is api.ExecutionProvider.CPU
                and backend.precision is not api.Precision.FP32
            ):
                problems.append(
                    Problem(
                        f"{at}.precision",
                        f"precision {backend.precision.value} is not supported by the CPU "
                        "execution provider",
                        "use precision: fp32 with executionProvider: cpu",
                    )
                )
            elif (
                backend.execution_provider is api.ExecutionProvider.CUDA
                and backend.precision is not api.Precision.FP32
            ):
                problems.append(
                    Problem(
                        f"{at}.precision",
                        "the CUDA execution provider runs the exported fp32 graph",
                        "use precision: fp32, or executionProvider: tensorrt for fp16",
                    )
                )
            elif (
                backend.execution_provider is api.ExecutionProvider.TENSORRT
                and backend.precision is api.Precision.BF16
            ):
                problems.append(
                    Problem(
                        f"{at}.precision",
                        "the TensorRT execution provider supports fp32 and fp16, not bf16",
                        "use precision: fp16",
                    )
                )
        if sweep is not None:
            too_big = [b for b in sweep.batch_sizes if b > backend.max_batch_size]
            if too_big:
                problems.append(
                    Problem(
                        f"{at}.maxBatchSize",
                        f"maxBatchSize {backend.max_batch_size} is below the swept batch sizes "
                        f"{too_big}",
                        f"raise maxBatchSize to {max(too_big)} or drop those sizes from "
                        "spec.scenarios.batchSweep.batchSizes",
                    )
                )
        batching = backend.dynamic_batching
        if batching is not None:
            over = [b for b in batching.preferred_batch_sizes if b > backend.max_batch_size]
            if over:
                problems.append(
                    Problem(
                        f"{at}.dynamicBatching.preferredBatchSizes",
                        f"preferred sizes {over} exceed maxBatchSize {backend.max_batch_size}",
                        "keep preferred batch sizes at or below maxBatchSize",
                    )
                )
    pool_names = [p.name for p in spec.node_pools]
    for index, backend in enumerate(spec.backends):
        problems += _backend_placement_problems(index, backend, pool_names)
    if sweep is not None and len(set(sweep.batch_sizes)) != len(sweep.batch_sizes):
        problems.append(
            Problem(
                "spec.scenarios.batchSweep.batchSizes",
                f"batch sizes repeat: {sweep.batch_sizes}",
                "list each batch size once",
            )
        )
    reference = spec.parity.reference
    if reference is not None and reference not in backend_names:
        close = difflib.get_close_matches(reference, backend_names, n=1)
        problems.append(
            Problem(
                "spec.parity.reference",
                f"'{reference}' is not a backend of this suite",
                f"did you mean '{close[0]}'?"
                if close
                else f"use one of: {', '.join(backend_names)}",
            )
        )
    problems += _oversize_problems(spec)
    for index, pool in enumerate(spec.node_pools):
        problems += [
            Problem(f"spec.nodePools[{index}].nodeSelector", message, hint)
            for message, hint in _label_key_problems(pool.node_selector)
        ]
        if pool.gpus > 0 and not pool.node_selector:
            problems.append(
                Problem(
                    f"spec.nodePools[{index}].nodeSelector",
                    "a GPU pool needs a nodeSelector, or its pods may land on any node",
                    "select the pool's nodes, e.g. {nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB}",
                )
            )
    return problems


def _oversize_problems(spec: api.BenchmarkSuiteSpec) -> list[Problem]:
    """Sweeps too large to ever finish: each closed-loop scenario stays under
    MAX_SCENARIO_REQUESTS per cell, and the rate runs fit in the Job's runSeconds."""
    problems = []
    cap = api.MAX_SCENARIO_REQUESTS
    scenarios = spec.scenarios
    sweep = scenarios.batch_sweep
    if sweep is not None:
        total = len(sweep.batch_sizes) * (sweep.requests + sweep.warmup)
        if total > cap:
            problems.append(Problem("spec.scenarios.batchSweep",
                f"{len(sweep.batch_sizes)} batch sizes x (requests {sweep.requests} + warmup "
                f"{sweep.warmup}) = {total} requests per cell, more than {cap}",
                "lower requests or list fewer batch sizes"))  # fmt: skip
    levels = scenarios.concurrency_sweep
    if levels is not None:
        points = len(levels.levels) * len(levels.batch_sizes)
        total = points * (levels.requests + levels.warmup)
        if total > cap:
            problems.append(Problem("spec.scenarios.concurrencySweep",
                f"{len(levels.levels)} levels x {len(levels.batch_sizes)} batch sizes x "
                f"(requests {levels.requests} + warmup {levels.warmup}) = {total} requests per "
                f"cell, more than {cap}",
                "lower requests, or sweep fewer levels or batch sizes"))  # fmt: skip
    rate = scenarios.rate
    run_seconds = spec.timeouts.run_seconds
    if rate is not None and len(rate.requests_per_second) * rate.duration_seconds > run_seconds:
        seconds = len(rate.requests_per_second) * rate.duration_seconds
        problems.append(Problem("spec.scenarios.rate",
            f"{len(rate.requests_per_second)} rates x durationSeconds {rate.duration_seconds:g} "
            f"= {seconds:g} s, longer than timeouts.runSeconds {run_seconds}: the benchmark Job "
            "would be stopped before it ends",
            "list fewer rates, shorten durationSeconds or raise timeouts.runSeconds"))  # fmt: skip
    return problems


def _label_key_problems(selector: Mapping[str, str]) -> list[tuple[str, str]]:
    """(message, hint) for each nodeSelector key Kubernetes would refuse in a pod spec."""
    problems = []
    for key in selector:
        prefix, _, name = key.rpartition("/")
        if re.fullmatch(api.LABEL_KEY_PATTERN, key) and len(prefix) <= 253 and len(name) <= 63:
            continue
        problems.append((
            f"key {key!r} is not a label key",
            "use [prefix/]name: name up to 63 letters, digits, '-', '_' or '.', starting and "
            "ending with a letter or digit; prefix a DNS subdomain, e.g. nvidia.com/gpu.product",
        ))  # fmt: skip
    return problems


def _backend_placement_problems(
    index: int, backend: api.Backend, pool_names: list[str]
) -> list[Problem]:
    """Rules of kind external and of a backend limited to some pools."""
    at = f"spec.backends[{index}]"
    problems = []
    external = backend.kind is api.BackendKind.EXTERNAL
    if external and backend.endpoint is None:
        problems.append(Problem(f"{at}.endpoint", "kind external needs an endpoint",
            "set endpoint: {httpUrl: http://HOST:8000, metricsUrl: http://HOST:8002/metrics}",
        ))  # fmt: skip
    if not external and backend.endpoint is not None:
        problems.append(Problem(f"{at}.endpoint", "endpoint applies to kind external only",
                                "remove it, or set kind: external"))  # fmt: skip
    if external and backend.execution_provider is not None:
        problems.append(Problem(f"{at}.executionProvider",
            "an external backend is measured as it is; Bakeoff does not configure it",
            "remove executionProvider"))  # fmt: skip
    if external and backend.dynamic_batching is not None:
        problems.append(Problem(f"{at}.dynamicBatching",
            "an external backend is measured as it is; Bakeoff does not configure it",
            "remove dynamicBatching"))  # fmt: skip
    for pool_index, pool in enumerate(backend.pools or []):
        if pool not in pool_names:
            close = difflib.get_close_matches(pool, pool_names, n=1)
            hint = (
                f"did you mean '{close[0]}'?" if close else f"use one of: {', '.join(pool_names)}"
            )
            problems.append(Problem(f"{at}.pools[{pool_index}]", f"no pool named '{pool}'", hint))
    if backend.pools is not None and not backend.pools:
        problems.append(
            Problem(
                f"{at}.pools",
                "an empty list measures this backend nowhere",
                "list at least one pool, or remove pools to use every pool",
            )
        )
    return problems


# Stand-ins for required fields whose own value is wrong or missing, so that the rules across
# fields can still be checked in the same pass (their own problem is reported already).
_PLACEHOLDERS: dict[tuple[str | int, ...], Any] = {
    ("metadata", "name"): "suite",
    ("spec", "model"): {"name": "model", "source": {"builtin": "vit-tiny-clip"}},
    ("spec", "model", "name"): "model",
    ("spec", "model", "source"): {"builtin": "vit-tiny-clip"},
    ("spec", "nodePools"): [{"name": "pool"}],
    ("spec", "backends"): [{"name": "backend", "kind": "pytorch"}],
}
_REPAIR_ROUNDS = 4


def _cross_field_problems_despite(
    document: dict[str, Any], error: ValidationError
) -> list[Problem]:
    """`check_suite`'s problems for a document the schema refused: fields the schema refused
    are dropped (to their default) or stood in for, and the rest checked, so that one pass
    reports everything. Problems at or under a path already reported are left out."""
    repaired = copy.deepcopy(document)
    reported = [format_loc(e["loc"]) for e in error.errors(include_url=False)]
    current: ValidationError | None = error
    for _ in range(_REPAIR_ROUNDS):
        assert current is not None
        for item in current.errors(include_url=False):
            if not _repair(repaired, tuple(item["loc"]), missing=item["type"] == "missing"):
                return []
        try:
            suite = api.BenchmarkSuite.model_validate(repaired)
        except ValidationError as again:
            current = again
            continue
        return [
            p for p in check_suite(suite)
            if not any(p.path == r or p.path.startswith((f"{r}.", f"{r}[")) for r in reported)
        ]  # fmt: skip
    return []


def _repair(document: Any, loc: tuple[str | int, ...], missing: bool) -> bool:
    """Drop the value at `loc` (its default applies), or put a placeholder where the schema
    requires one. False when neither can be done (the cross-field pass is then skipped)."""
    for depth in range(len(loc), 0, -1):
        prefix = loc[:depth]
        if prefix in _PLACEHOLDERS:
            return _set(document, prefix, copy.deepcopy(_PLACEHOLDERS[prefix]))
        if missing:
            continue
        parent = _get(document, prefix[:-1])
        if isinstance(parent, dict) and prefix[-1] in parent:
            required = _required_at(prefix)
            if not required:
                del parent[prefix[-1]]
                return True
    return False


def _get(document: Any, loc: tuple[str | int, ...]) -> Any:
    for part in loc:
        in_dict = isinstance(document, dict) and part in document
        in_list = isinstance(document, list) and isinstance(part, int) and part < len(document)
        if not (in_dict or in_list):
            return None
        document = document[part]
    return document


def _set(document: Any, loc: tuple[str | int, ...], value: Any) -> bool:
    parent = _get(document, loc[:-1])
    if isinstance(parent, dict):
        parent[loc[-1]] = value
        return True
    if isinstance(parent, list) and isinstance(loc[-1], int) and loc[-1] < len(parent):
        parent[loc[-1]] = value
        return True
    return False


def _required_at(loc: tuple[str | int, ...]) -> bool:
    """Whether the field at `loc` has no default (dropping it would only move the problem)."""
    model = _model_at(loc)
    if model is None:
        return False
    field = next((f for n, f in model.model_fields.items() if loc[-1] in (n, f.alias)), None)
    return field is not None and field.is_required()


def cluster_problems(suite: api.BenchmarkSuite) -> list[Problem]:
    """What a valid suite asks of a cluster that the operator does not do yet."""
    if suite.spec.scenarios.repeats > 1:
        return [
            Problem(
                "spec.scenarios.repeats",
                "repeats run interleaved in `bakeoff run --local` only; the operator measures "
                "each cell once",
                "set repeats: 1 in the cluster (apply the suite again for another run and "
                "`bakeoff compare` the two), or run the suite locally",
            )
        ]
    return []


def parse_suite(document: Any, source: str = "suite") -> api.BenchmarkSuite:
    """Validate a decoded document; raise SuiteInvalid listing every problem."""
    if not isinstance(document, dict):
        raise SuiteInvalid(
            source,
            [
                Problem(
                    "(document)",
                    f"expected a mapping (a BenchmarkSuite object), got {type(document).__name__}",
                    "start the file with 'apiVersion: bakeoff.dev/v1alpha1' and "
                    "'kind: BenchmarkSuite'",
                )
            ],
        )
    try:
        suite = api.BenchmarkSuite.model_validate(document)
    except ValidationError as error:
        problems = problems_from_validation_error(error)
        more = _cross_field_problems_despite(document, error)
        raise SuiteInvalid(source, problems + more) from None
    problems = check_suite(suite)
    if problems:
        raise SuiteInvalid(source, problems)
    return suite


def load_suite(path: Path) -> api.BenchmarkSuite:
    """Read and validate a suite file (YAML or JSON); raise SuiteInvalid on any problem."""
    source = str(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise SuiteInvalid(
            source, [Problem("(file)", f"cannot read: {error.strerror}", "check the path")]
        ) from None
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(document)"
        problem = getattr(error, "problem", None) or str(error)
        raise SuiteInvalid(
            source,
            [Problem(where, f"not valid YAML: {problem}", "check indentation and quoting there")],
        ) from None
    if len(documents) != 1:
        raise SuiteInvalid(
            source,
            [
                Problem(
                    "(file)",
                    f"expected exactly one YAML document, found {len(documents)}",
                    "put one BenchmarkSuite per file",
                )
            ],
        )
    return parse_suite(documents[0], source)


def suite_document(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a BenchmarkSuite object from the API server that the models read."""
    metadata = obj.get("metadata") or {}
    return {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": {k: metadata.get(k) for k in ("name", "namespace", "generation")},
        "spec": dict(obj.get("spec") or {}),
    }


def suite_status(obj: Mapping[str, Any]) -> api.SuiteStatus | None:
    """The object's status as the operator wrote it; None when absent or unreadable (kopf
    and older versions may have left other keys there)."""
    known = {f.alias or name for name, f in api.SuiteStatus.model_fields.items()}
    raw = {k: v for k, v in dict(obj.get("status") or {}).items() if k in known}
    try:
        return api.SuiteStatus.model_validate(raw) if raw else None
    except ValidationError:
        return None
