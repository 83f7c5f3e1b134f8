"""`bakeoff report SUITE --cluster`: the same report as a local run, from a cluster suite.

Reads the suite (spec and status) and its result ConfigMaps through `kube`, converts them
to what `analysis` and `report` take, and writes `<out>/<suite>/` like the local runner.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bakeoff import api, kube, validation
from bakeoff_bench.results import CellResult


class ClusterReportError(Exception):
    """The suite cannot be reported yet; the message says why."""


def results_from_configmaps(
    configmaps: Sequence[Mapping[str, Any]],
) -> tuple[list[CellResult], list[str]]:
    """Parse every result ConfigMap; a malformed one is reported, not fatal."""
    results, problems = [], []
    for configmap in configmaps:
        observation = kube.observe_result(configmap)
        if observation.result is None:
            problems.append(f"{observation.name}: {observation.error}")
        else:
            results.append(observation.result)
    return results, problems


def suite_from_object(obj: Mapping[str, Any]) -> api.BenchmarkSuite:
    name = (obj.get("metadata") or {}).get("name")
    suite = validation.parse_suite(validation.suite_document(obj), f"BenchmarkSuite {name}")
    return suite.model_copy(update={"status": validation.suite_status(obj)})


def failures_from_status(suite: api.BenchmarkSuite) -> list[tuple[str, str, str]]:
    cells = suite.status.cells if suite.status else []
    return [(c.backend, c.pool, c.message) for c in cells if c.phase is api.CellPhase.FAILED]


def fetch(
    client: kube.KubeClient, namespace: str, name: str, out_dir: Path
) -> tuple[api.BenchmarkSuite, list[CellResult], list[tuple[str, str, str]], list[str]]:
    suite = suite_from_object(client.read_suite(namespace, name))
    results, problems = results_from_configmaps(client.read_result_configmaps(namespace, name))
    if not results and not failures_from_status(suite):
        phase = suite.status.phase.value if suite.status else "Pending"
        raise ClusterReportError(f"suite {namespace}/{name} has no results yet (phase {phase})")
    cells_dir = out_dir / name / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    for result in results:
        path = cells_dir / f"{result.backend}-{result.pool}.json"
        path.write_text(result.model_dump_json(by_alias=True, indent=2))
    return suite, results, failures_from_status(suite), problems
