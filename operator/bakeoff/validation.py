"""Turn a suite file into a `BenchmarkSuite`, or into a list of problems a person can fix.

Every problem names its field path (`spec.backends[1].kind`), says what is wrong and, where
we can tell, what to write instead. The CLI prints them; nothing here raises to the user.
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import BaseModel, ValidationError

from bakeoff import api, backends, rules


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


_KINDS = {kind.value: kind for kind in api.BackendKind}
# The location of an error, with the union member pydantic tried noted apart.
Location = tuple[int | str, ...]


def without_kind_tags(loc: Location) -> tuple[Location, api.BackendKind | None]:
    """pydantic names the union member it tried after a backend's index
    (`spec.backends.0.pytorch.precision`); the suite's own path has no such part."""
    out: list[int | str] = []
    kind = None
    for part in loc:
        in_backend = len(out) >= 2 and out[-2] == "backends" and isinstance(out[-1], int)
        if in_backend and isinstance(part, str) and part in _KINDS:
            kind = _KINDS[part]
            continue
        out.append(part)
    return tuple(out), kind


def _model_at(loc: Location, kind: api.BackendKind | None = None) -> type[BaseModel] | None:
    """The pydantic model that owns the field at `loc` (for 'did you mean' hints); `kind`
    picks the member of the backend union."""
    model: type[BaseModel] = api.BenchmarkSuite
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = next((f for name, f in model.model_fields.items() if part in (name, f.alias)), None)
        if field is None:
            return None
        members = _model_types(field.annotation)
        if not members:
            return None
        model = rules.backend_kinds().get(kind, members[0]) if kind else members[0]
        if model not in members:
            model = members[0]
    return model


def _model_types(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in getattr(annotation, "__args__", ()) or ():
        found += _model_types(arg)
    return found


def _hint_for(error: Any, loc: Location, kind: api.BackendKind | None) -> str:
    error_type = error["type"]
    if error_type == "extra_forbidden":
        model = _model_at(loc, kind)
        if model is not None:
            known = [f.alias or n for n, f in model.model_fields.items()]
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            if close:
                return f"did you mean '{close[0]}'? fields here: {', '.join(known)}"
            return f"fields allowed here: {', '.join(known)}"
    if error_type == "missing":
        return f"add '{loc[-1]}'"
    if error_type in ("enum", "literal_error"):
        return "use one of the values listed"
    if error_type == "string_pattern_mismatch":
        return "use lower-case letters, digits and '-', starting and ending with a letter or digit"
    if error_type in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return "change the number to fit the bound"
    if error_type == "too_short":
        return "add at least one entry"
    return ""


def _kinds_listed() -> str:
    names = [f"'{kind.value}'" for kind in api.BackendKind]
    return f"{', '.join(names[:-1])} or {names[-1]}"


def _problem(error: Any) -> Problem:
    """One pydantic error as a problem at the suite's own path, worded as the CRD words it."""
    loc, kind = without_kind_tags(tuple(error["loc"]))
    error_type = error["type"]
    if error_type in ("union_tag_invalid", "union_tag_not_found"):
        # A backend whose kind is missing or unknown: blame `kind` itself.
        return Problem(
            format_loc((*loc, "kind")),
            f"Input should be {_kinds_listed()}",
            "set kind to one of the values listed",
        )
    field = str(loc[-1]) if loc else ""
    owners = rules.kind_fields().get(field)
    is_backend_field = kind is not None and len(loc) == 4 and loc[1] == "backends"
    if is_backend_field and owners and kind is not None:
        if error_type == "extra_forbidden":
            return Problem(format_loc(loc), *rules.field_belongs_message(field, owners))
        if error_type == "missing":
            return Problem(format_loc(loc), *rules.field_required_message(field, kind))
    return Problem(format_loc(loc), str(error["msg"]), _hint_for(error, loc, kind))


def problems_from_validation_error(error: ValidationError) -> list[Problem]:
    return [_problem(item) for item in error.errors(include_url=False)]


# The table: rules across the suite, each kind's own, and which fields each kind has.
RULES: Final[tuple[rules.Rule, ...]] = (
    *rules.SUITE_RULES,
    *backends.KIND_RULES,
    *rules.kind_field_rules(),
)


def check_suite(suite: api.BenchmarkSuite) -> list[Problem]:
    """Rules across fields, each reported at the exact path of the offending value."""
    problems: list[Problem] = []
    for rule in RULES:
        for path, node in rules.nodes_at(suite, rule.at):
            if rule.applies_to(node) and not rule.holds(node):
                hint = rule.hint_for(node) if rule.hint_for else rule.hint
                problems.append(Problem(f"{path}{rule.field}", rule.message, hint))
    for index, pool in enumerate(suite.spec.node_pools):
        problems += [
            Problem(f"spec.nodePools[{index}].nodeSelector", message, hint)
            for message, hint in _label_key_problems(pool.node_selector)
        ]
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
    reported = [_problem(e).path for e in error.errors(include_url=False)]
    current: ValidationError | None = error
    for _ in range(_REPAIR_ROUNDS):
        assert current is not None
        for item in current.errors(include_url=False):
            loc, kind = without_kind_tags(tuple(item["loc"]))
            if not _repair(repaired, loc, kind, missing=item["type"] == "missing"):
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


def _repair(document: Any, loc: Location, kind: api.BackendKind | None, missing: bool) -> bool:
    """Drop the value at `loc` (its default applies), or put a placeholder where the schema
    requires one. False when neither can be done (the cross-field pass is then skipped)."""
    in_backend = len(loc) >= 3 and loc[:2] == ("spec", "backends") and isinstance(loc[2], int)
    if in_backend and (len(loc) == 3 or missing):
        # A backend of no known kind, or without a field its kind requires: a plain stand-in
        # of the same name, so the rules across backends still see every name.
        return _stand_in_backend(document, int(loc[2]))
    if not missing and not _has(document, loc):
        return True  # gone with a stand-in put there for an earlier error
    for depth in range(len(loc), 0, -1):
        prefix = loc[:depth]
        if prefix in _PLACEHOLDERS:
            return _set(document, prefix, copy.deepcopy(_PLACEHOLDERS[prefix]))
        if missing:
            continue
        parent = _get(document, prefix[:-1])
        if isinstance(parent, dict) and prefix[-1] in parent:
            required = _required_at(prefix, kind)
            if not required:
                del parent[prefix[-1]]
                return True
    return False


def _stand_in_backend(document: Any, index: int) -> bool:
    backends = _get(document, ("spec", "backends"))
    if not isinstance(backends, list) or index >= len(backends):
        return False
    original = backends[index]
    name = original.get("name") if isinstance(original, dict) else None
    backends[index] = {
        "name": name if isinstance(name, str) else f"backend-{index}",
        "kind": api.BackendKind.PYTORCH.value,
    }
    return True


def _has(document: Any, loc: tuple[str | int, ...]) -> bool:
    parent = _get(document, loc[:-1])
    if isinstance(parent, dict):
        return loc[-1] in parent
    return isinstance(parent, list) and isinstance(loc[-1], int) and loc[-1] < len(parent)


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


def _required_at(loc: Location, kind: api.BackendKind | None) -> bool:
    """Whether the field at `loc` has no default (dropping it would only move the problem)."""
    model = _model_at(loc, kind)
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
