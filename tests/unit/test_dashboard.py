"""The Grafana dashboard references only metrics the operator exports, and has its panels."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from result_factories import cell

from bakeoff import api, metrics

DASHBOARD = Path(__file__).parents[2] / "dashboards" / "bakeoff.json"

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "and", "or", "unless", "offset", "inf", "nan",
}  # fmt: skip
IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def exprs() -> list[str]:
    return [t["expr"] for p in panels() for t in p.get("targets", [])]


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords,
    label names, label values, durations or grouping labels."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values, strings
    text = re.sub(r"\{[^}]*\}", "{}", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "[]", text)  # ranges ($__rate_interval, 5m)
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # grouping labels
    names = set()
    for match in IDENTIFIER.finditer(text):
        name = match.group()
        before = text[: match.start()]
        if before.endswith("$") or re.search(r"\d[\d.]*$", before):
            continue  # $variable, or the tail of a number like 1e3
        if re.match(r"\s*\(", text[match.end() :]) or name.lower() in PROMQL_WORDS:
            continue  # function call, keyword
        names.add(name)
    return names


def label_values_metric(query: str) -> str | None:
    match = re.fullmatch(r"\s*label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{,].*", query)
    return match.group(1) if match else None


def exported_names() -> set[str]:
    """Every family and sample name of a synthetic finished suite's render."""
    m = metrics.OperatorMetrics()
    results = [cell("pytorch", "cpu"), cell("onnx", "cpu")]
    status = api.SuiteStatus(
        phase=api.SuitePhase.SUCCEEDED,
        cells=[
            api.CellStatus(backend=r.backend, pool="cpu", phase=api.CellPhase.SUCCEEDED)
            for r in results
        ],
        summary=api.Summary(cost_per_1k={"pytorch/cpu": 0.001, "onnx/cpu": 0.0005}),
    )
    m.observe_suite("lab", "s", status, results)
    with m.reconciling():
        pass
    text = generate_latest(m.registry).decode()
    names = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update(s.name for s in family.samples)
    return names


def test_metric_name_extraction() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le) "
        '(rate(foo_bucket{a="x y",b=~"$v"}[$__rate_interval])))'
        " / on (job) group_left (team) bar_total offset 5m > bool 1e3 and baz"
    )
    assert metric_names(expr) == {"foo_bucket", "bar_total", "baz"}
    assert metric_names('max by (backend) (m{scenario="single"}) == 1') == {"m"}


def test_every_expression_uses_only_exported_metrics() -> None:
    exported = exported_names()
    assert exprs(), "the dashboard has no queries"
    for expr in exprs():
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= exported, f"{expr!r} uses {sorted(names - exported)}"


def test_template_variables_select_namespace_suite_pool_from_exported_metrics() -> None:
    exported = exported_names()
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert {"namespace", "suite", "pool"} <= variables.keys()
    for name in ("namespace", "suite", "pool"):
        query = variables[name]["query"]
        query = query["query"] if isinstance(query, dict) else query
        metric = label_values_metric(query)
        assert metric in exported, query
        assert query.rstrip(")").rstrip().endswith(name)
    for expr in exprs():
        if "bakeoff_reconcile" not in expr:  # operator-wide series carry no suite
            assert '$namespace"' in expr and '$suite"' in expr, expr


@pytest.mark.parametrize(
    ("title_part", "metric"),
    [
        ("latency percentiles", "bakeoff_latency_seconds"),
        ("throughput vs batch size", "bakeoff_throughput_inferences_per_second"),
        ("cost per 1000", "bakeoff_cost_per_1k_inferences"),
        ("memory", "bakeoff_memory_bytes"),
        ("phase", "bakeoff_suite_phase"),
        ("reconciles", "bakeoff_reconcile_total"),
    ],
)
def test_required_panels(title_part: str, metric: str) -> None:
    matching = [p for p in panels() if title_part in p["title"].lower()]
    assert matching, f"no panel titled like {title_part!r}"
    assert any(metric in metric_names(t["expr"]) for p in matching for t in p["targets"])


def test_dashboard_shape() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36 and board["uid"] and board["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys()
        assert panel["datasource"]["uid"] == "${datasource}"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids))
    timeline = next(p for p in panels() if p["title"] == "Suite phase")
    assert timeline["type"] == "state-timeline"
