"""The generated CRD: current, structural, and in agreement with the pydantic models.

The API server is not here, so this tier checks what can be checked without one: the
committed file matches the generator, the schema obeys the structural rules, and a JSON-schema
validator (after the two things the API server does first: dropping non-nullable nulls and
applying defaults) accepts and rejects the same suites pydantic does. The CEL rules are only
checked for presence here; the cluster tier applies the CRD to a real API server.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import BaseModel, ValidationError

from bakeoff import api, crd

ROOT = Path(__file__).parents[2]
COMMITTED = ROOT / "crds" / "benchmarksuite.yaml"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
STUDY = ROOT / "examples" / "rtx4080-vs-a100.yaml"

Schema = dict[str, Any]


@pytest.fixture(scope="module")
def generated() -> Schema:
    return crd.generate_crd()


@pytest.fixture(scope="module")
def schema(generated: Schema) -> Schema:
    root: Schema = generated["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return root


def study() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(STUDY.read_text())
    return document


# ----- helpers that do what the API server does before it validates -----


def prune_nulls(value: Any, node: Schema | None) -> None:
    """apiextensions PruneNonNullableNullsWithoutDefaults: drop nulls the schema can't hold."""
    if isinstance(value, dict):
        for key in list(value):
            sub = _child(node, key)
            if value[key] is None and sub is not None and not sub.get("nullable"):
                if "default" not in sub:
                    del value[key]
            else:
                prune_nulls(value[key], sub)
    elif isinstance(value, list) and node is not None:
        for item in value:
            prune_nulls(item, node.get("items"))


def apply_defaults(value: Any, node: Schema | None) -> None:
    """apiextensions structural defaulting: set absent (or non-nullable null) fields, recurse."""
    if node is None:
        return
    if isinstance(value, dict):
        for key, sub in node.get("properties", {}).items():
            if "default" in sub and (
                key not in value or (value[key] is None and not sub.get("nullable"))
            ):
                value[key] = copy.deepcopy(sub["default"])
        for key, item in value.items():
            apply_defaults(item, _child(node, key))
    elif isinstance(value, list):
        for item in value:
            apply_defaults(item, node.get("items"))


def _child(node: Schema | None, key: str) -> Schema | None:
    if node is None:
        return None
    if key in node.get("properties", {}):
        child: Schema = node["properties"][key]
        return child
    extra = node.get("additionalProperties")
    return extra if isinstance(extra, dict) else None


def as_draft4(node: Schema) -> Schema:
    """OpenAPI v3.0 -> JSON Schema draft 4 for `jsonschema`.

    `nullable` becomes a "null" type; unknown fields are refused, as the API server does
    under strict field validation (kubectl's default).
    """
    out = {k: v for k, v in node.items() if not k.startswith("x-kubernetes-")}
    out.pop("nullable", None)
    if node.get("nullable"):
        out["type"] = [node["type"], "null"]
    if "items" in node:
        out["items"] = as_draft4(node["items"])
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = as_draft4(node["additionalProperties"])
    if "properties" in node:
        out["properties"] = {k: as_draft4(v) for k, v in node["properties"].items()}
        out["additionalProperties"] = False
    return out


def server_view(document: dict[str, Any], root: Schema) -> dict[str, Any]:
    """The object as the API server validates and stores it."""
    view = copy.deepcopy(document)
    prune_nulls(view, root)
    apply_defaults(view, root)
    return view


def schema_errors(document: dict[str, Any], root: Schema) -> list[str]:
    draft4 = as_draft4(root)
    draft4["properties"]["metadata"] = {"type": "object"}  # the API server owns metadata
    validator = jsonschema.Draft4Validator(draft4)
    view = server_view(document, root)
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(view)
    ]


def walk(node: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from walk(sub, f"{path}.{name}" if path else name)
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}.*")


def without_empties(value: Any) -> Any:
    """Drop None and empty lists/maps: for pydantic they mean the same as absent."""
    if isinstance(value, dict):
        kept = {k: without_empties(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v is not None and v != [] and v != {}}
    if isinstance(value, list):
        return [without_empties(v) for v in value]
    return value


# ----- the committed file -----


def test_committed_crd_is_what_the_models_generate(generated: Schema) -> None:
    assert COMMITTED.exists(), "crds/benchmarksuite.yaml is missing: run `make crds`"
    assert COMMITTED.read_text() == crd.render_yaml(generated), (
        "crds/benchmarksuite.yaml is stale (the API models changed): run `make crds` and "
        "commit the result"
    )


def test_cli_writes_the_same_file(tmp_path: Path, generated: Schema) -> None:
    out = tmp_path / "crd.yaml"
    assert crd.main(["--output", str(out)]) == 0
    assert out.read_text() == crd.render_yaml(generated)
    assert out.read_text().startswith("# Generated by `make crds`")


def test_crd_names_and_version(generated: Schema) -> None:
    spec = generated["spec"]
    assert generated["metadata"]["name"] == "benchmarksuites.bakeoff.dev"
    assert spec["group"] == "bakeoff.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "BenchmarkSuite",
        "listKind": "BenchmarkSuiteList",
        "plural": "benchmarksuites",
        "singular": "benchmarksuite",
        "shortNames": ["bsuite"],
    }
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}


def test_printer_columns_read_fields_the_status_schema_has(
    generated: Schema, schema: Schema
) -> None:
    columns = generated["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in columns] == ["Phase", "Cells", "Winner", "Age"]
    status_fields = schema["properties"]["status"]["properties"]
    for column in columns:
        path = column["jsonPath"]
        if path.startswith(".status."):
            assert path.removeprefix(".status.") in status_fields, f"{path} is not in status"
    assert columns[-1] == {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


# ----- structural schema rules (apiextensions validateStructuralInvariants) -----


def test_every_node_is_typed_and_structural(schema: Schema) -> None:
    allowed_types = {"object", "array", "string", "integer", "number", "boolean"}
    for path, node in walk(schema):
        where = path or "(root)"
        assert node.get("type") in allowed_types, f"{where}: needs a type"
        assert not {"$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "title", "const"} & set(
            node
        ), f"{where}: {sorted(node)}"
        assert not ("properties" in node and "additionalProperties" in node), where
        assert node.get("additionalProperties") is not False, where
        assert "x-kubernetes-preserve-unknown-fields" not in node, where
        if node["type"] == "array":
            assert "items" in node, where
        if isinstance(node.get("exclusiveMinimum"), bool):
            assert "minimum" in node, where
        if "default" in node:
            assert path.split(".")[0] != "metadata", "no defaults in metadata"


def test_metadata_only_names_its_name(schema: Schema) -> None:
    assert schema["properties"]["metadata"] == {
        "type": "object",
        "properties": {"name": {"type": "string"}},
    }


def test_nullable_enums_are_left_non_nullable(schema: Schema) -> None:
    # The API server's enum check never lets null through (see crd.structural_schema).
    for path, node in walk(schema):
        assert not ("enum" in node and node.get("nullable")), path
        assert None not in node.get("enum", []), path


def test_exclusive_bounds_use_the_openapi_boolean_form(schema: Schema) -> None:
    backend = schema["properties"]["spec"]["properties"]["backends"]["items"]["properties"]
    bounds = {"minimum": 0, "exclusiveMinimum": True, "maximum": 1024}
    assert bounds.items() <= backend["maxBatchSize"].items()


def test_factory_defaults_are_emitted_for_the_api_server(schema: Schema) -> None:
    spec = schema["properties"]["spec"]["properties"]
    assert spec["scenarios"]["default"] == {}
    sweep = spec["scenarios"]["properties"]["batchSweep"]
    assert sweep["nullable"] is True  # null means "skip the sweep", absent means default
    assert sweep["default"] == {}
    assert sweep["properties"]["batchSizes"]["default"] == [1, 4, 8, 16, 32]
    # Empty containers and None say nothing pydantic doesn't assume already.
    pool = spec["nodePools"]["items"]["properties"]
    assert "default" not in pool["nodeSelector"]
    assert "default" not in pool["tolerations"]


# ----- agreement with pydantic -----


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_accepted_by_the_schema(path: Path, schema: Schema) -> None:
    document = yaml.safe_load(path.read_text())
    assert schema_errors(document, schema) == []


def _minimal() -> dict[str, Any]:
    return {
        "apiVersion": "bakeoff.dev/v1alpha1",
        "kind": "BenchmarkSuite",
        "metadata": {"name": "minimal"},
        "spec": {
            "model": {"name": "m", "source": {"builtin": "vit-tiny-clip"}},
            "backends": [{"name": "pytorch", "kind": "pytorch"}],
            "nodePools": [{"name": "cpu", "gpus": 0, "costPerHour": 0}],
        },
    }


def _minimal_without_sweep() -> dict[str, Any]:
    document = _minimal()
    document["spec"]["scenarios"] = {"batchSweep": None, "single": {"requests": 5}}
    return document


def _study_with_nulls() -> dict[str, Any]:
    document = study()
    document["spec"]["backends"][0]["executionProvider"] = None
    document["spec"]["parity"]["reference"] = None
    document["spec"]["model"]["source"]["weights"] = None
    return document


DEFAULTING_CASES: list[tuple[str, Callable[[], dict[str, Any]]]] = [
    ("minimal", _minimal),
    ("batch-sweep-null", _minimal_without_sweep),
    ("explicit-nulls", _study_with_nulls),
    *[(p.name, lambda p=p: yaml.safe_load(p.read_text())) for p in EXAMPLES],
]


@pytest.mark.parametrize(
    "make", [m for _, m in DEFAULTING_CASES], ids=[i for i, _ in DEFAULTING_CASES]
)
def test_api_server_defaults_match_pydantic_defaults(
    make: Callable[[], dict[str, Any]], schema: Schema
) -> None:
    document = make()
    assert schema_errors(document, schema) == []
    suite = api.BenchmarkSuite.model_validate(document)
    from_pydantic = suite.spec.model_dump(mode="json", by_alias=True)
    from_server = server_view(document, schema)["spec"]
    assert without_empties(from_server) == without_empties(from_pydantic)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        node: Any = document
        parts = path.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if part.isdigit() else node[part]
        last = parts[-1]
        if value is DELETE:
            del node[int(last) if last.isdigit() else last]
        else:
            node[int(last) if last.isdigit() else last] = value

    return change


DELETE = object()

INVALID = [
    ("unknown-enum", "spec.backends.0.kind", "tensorflow", "spec.backends.0.kind"),
    ("unknown-provider", "spec.backends.1.executionProvider", "rocm", "executionProvider"),
    ("negative-cost", "spec.nodePools.0.costPerHour", -1, "costPerHour"),
    ("zero-batch", "spec.backends.0.maxBatchSize", 0, "maxBatchSize"),
    ("missing-model", "spec.model", DELETE, "'model' is a required property"),
    ("missing-cost", "spec.nodePools.1.costPerHour", DELETE, "'costPerHour' is a required"),
    ("no-backends", "spec.backends", [], "spec.backends"),
    ("bad-backend-name", "spec.backends.0.name", "PyTorch_1", "spec.backends.0.name"),
    ("unknown-field", "spec.backends.0.maxBatchsize", 8, "'maxBatchsize' was unexpected"),
    ("cosine-above-one", "spec.parity.minCosine", 1.5, "minCosine"),
    ("too-many-sizes", "spec.scenarios.batchSweep.batchSizes", list(range(1, 34)), "batchSizes"),
    ("string-for-number", "spec.nodePools.0.costPerHour", "cheap", "costPerHour"),
]


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [case[1:] for case in INVALID],
    ids=[case[0] for case in INVALID],
)
def test_invalid_suite_is_rejected_by_schema_and_pydantic(
    path: str, value: Any, expected: str, schema: Schema
) -> None:
    document = study()
    _set(path, value)(document)
    errors = schema_errors(document, schema)
    assert any(expected in error for error in errors), errors
    with pytest.raises(ValidationError):
        api.BenchmarkSuite.model_validate(document)


def test_too_many_backends_is_rejected(schema: Schema) -> None:
    document = study()
    template = document["spec"]["backends"][0]
    document["spec"]["backends"] = [template | {"name": f"b{i}"} for i in range(17)]
    assert any("is too long" in e for e in schema_errors(document, schema))


def test_a_full_status_from_the_model_is_accepted(schema: Schema) -> None:
    status = api.SuiteStatus(
        phase=api.SuitePhase.BENCHMARKING,
        observed_generation=2,
        progress="1/2",
        winner="pytorch/a100",
        conditions=[
            api.Condition(
                type="Validated",
                status="True",
                reason="Valid",
                last_transition_time="2026-01-02T03:04:05Z",
            )
        ],
        cells=[
            api.CellStatus(backend="pytorch", pool="a100"),
            api.CellStatus(backend="t", pool="a100", phase=api.CellPhase.SUCCEEDED, node="n1"),
        ],
        summary=api.Summary(
            winners={"latency": api.Winner(backend="b", pool="p", value=1, unit="ms", basis="x")},
            cost_per_1k={"b/p": 0.01},
        ),
    )
    document = study()
    # None values included: that is what a plain model_dump sends.
    document["status"] = status.model_dump(mode="json", by_alias=True)
    assert schema_errors(document, schema) == []
    document["status"]["phase"] = "Exploded"
    assert schema_errors(document, schema) != []


# ----- CEL rules mirroring validation.check_suite -----

# (where the rule sits, a fragment of its expression): one per rule of check_suite.
EXPECTED_RULES = {
    "endpoint iff external": ("spec.backends[]", "(self.kind == 'external') == has(self.endpoint)"),
    "backend pools exist": ("spec", "b.pools.all(p, self.nodePools.exists(q, q.name == p))"),
    "steady state window": ("spec.scenarios.steadyState", "has(self.windowRequests) !="),
    "spec is immutable": ("spec", "self == oldSelf"),
    "unique backend names": ("spec.backends", "self.exists_one(c, c.name == b.name)"),
    "unique pool names": ("spec.nodePools", "self.exists_one(q, q.name == p.name)"),
    "triton-onnx needs executionProvider": (
        "spec.backends[]",
        "self.kind != 'triton-onnx' || has(self.executionProvider)",
    ),
    "executionProvider only for triton-onnx": (
        "spec.backends[]",
        "self.kind == 'triton-onnx' || !has(self.executionProvider)",
    ),
    "cpu/cuda need fp32": ("spec.backends[]", "['cpu', 'cuda']) || self.precision == 'fp32'"),
    "tensorrt is not bf16": ("spec.backends[]", "self.precision != 'bf16'"),
    "dynamicBatching only for triton-onnx": (
        "spec.backends[]",
        "self.kind == 'triton-onnx' || !has(self.dynamicBatching)",
    ),
    "preferred sizes <= maxBatchSize": (
        "spec.backends[]",
        "preferredBatchSizes.all(s, s <= self.maxBatchSize)",
    ),
    "swept sizes <= every maxBatchSize": ("spec", "batchSizes.all(s, s <= b.maxBatchSize)"),
    "swept sizes unique": ("spec.scenarios.batchSweep.batchSizes", "self.exists_one(y, y == x)"),
    "reference names a backend": (
        "spec",
        "self.backends.exists(b, b.name == self.parity.reference)",
    ),
    "GPU pool needs nodeSelector": (
        "spec.nodePools[]",
        "self.gpus == 0 || (has(self.nodeSelector) && self.nodeSelector.size() > 0)",
    ),
    "suite name is a short DNS label": ("", "self.metadata.name.size() <= 40"),
    "batch sweep is not oversize": (
        "spec.scenarios.batchSweep",
        "self.batchSizes.size() * (self.requests + self.warmup) <=",
    ),
    "concurrency sweep is not oversize": (
        "spec.scenarios.concurrencySweep",
        "self.levels.size() * self.batchSizes.size() * (self.requests + self.warmup) <=",
    ),
    "rate runs fit in runSeconds": ("spec", "<= double(self.timeouts.runSeconds)"),
}


def _rules(schema: Schema) -> dict[str, list[Schema]]:
    return {
        path: node["x-kubernetes-validations"]
        for path, node in walk(schema)
        if "x-kubernetes-validations" in node
    }


@pytest.mark.parametrize("what", EXPECTED_RULES)
def test_cel_rule_mirrors_check_suite(what: str, schema: Schema) -> None:
    where, fragment = EXPECTED_RULES[what]
    rules = _rules(schema).get(where, [])
    assert any(fragment in r["rule"] for r in rules), f"{what}: no rule at {where!r}"


def test_every_cel_rule_is_well_formed(schema: Schema) -> None:
    rules = _rules(schema)
    assert sum(len(r) for r in rules.values()) == len(EXPECTED_RULES)
    for path, node in walk(schema):
        for rule in node.get("x-kubernetes-validations", []):
            assert set(rule) <= {"rule", "message", "messageExpression", "fieldPath", "reason"}
            assert rule["message"] and rule["rule"]
            # Duplicate drops the message (field.Duplicate has no detail): not used.
            assert rule.get("reason", "FieldValueInvalid") in {
                "FieldValueInvalid",
                "FieldValueForbidden",
                "FieldValueRequired",
            }
            if "fieldPath" in rule:
                # The API server refuses a fieldPath that does not name a declared field.
                target: Schema | None = node
                for part in rule["fieldPath"].removeprefix(".").split("."):
                    target = _child(target, part)
                    assert target is not None, f"{path}: bad fieldPath {rule['fieldPath']}"


def test_lists_walked_by_cel_are_bounded(schema: Schema) -> None:
    # The API server estimates each rule's worst-case cost from maxItems and refuses the
    # CRD when a rule could walk an unbounded list.
    spec = schema["properties"]["spec"]["properties"]
    assert spec["backends"]["maxItems"] == 16
    assert spec["nodePools"]["maxItems"] == 16
    sweep = spec["scenarios"]["properties"]["batchSweep"]["properties"]["batchSizes"]
    assert sweep["maxItems"] == 32
    batching = spec["backends"]["items"]["properties"]["dynamicBatching"]["properties"]
    assert "maxItems" in batching["preferredBatchSizes"]
    for backend_or_pool in (spec["backends"], spec["nodePools"]):
        assert "maxLength" in backend_or_pool["items"]["properties"]["name"]


# ----- the converter refuses what it cannot express -----


class _Union(BaseModel):
    value: int | str


class _Free(BaseModel):
    value: dict[str, Any]


@pytest.mark.parametrize("model", [_Union, _Free], ids=["union", "untyped-map"])
def test_unsupported_constructs_raise_instead_of_being_dropped(model: type[BaseModel]) -> None:
    raw = crd.model_schema(model)
    with pytest.raises(crd.UnsupportedSchema):
        crd.structural_schema(raw, raw.get("$defs", {}), "x")
