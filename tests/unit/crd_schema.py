"""What the API server does to a BenchmarkSuite before and while it validates it against the
CRD's openAPIV3Schema (CEL rules aside), for tests without an API server: test_crd.py and the
fuzz of the spec models.
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema

Schema = dict[str, Any]


def prune_nulls(value: Any, node: Schema | None) -> None:
    """apiextensions PruneNonNullableNullsWithoutDefaults: drop nulls the schema can't hold."""
    if isinstance(value, dict):
        for key in list(value):
            sub = child_schema(node, key)
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
            apply_defaults(item, child_schema(node, key))
    elif isinstance(value, list):
        for item in value:
            apply_defaults(item, node.get("items"))


def child_schema(node: Schema | None, key: str) -> Schema | None:
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
