"""The benchmark Job's result ConfigMap: where it goes and what it holds (pure parts)."""

from __future__ import annotations

import json

import pytest
from result_factories import cell as result_for

from bakeoff_bench import publish
from bakeoff_bench.results import CellResult


def test_destination_comes_from_the_job_environment() -> None:
    owner = {"apiVersion": "bakeoff.dev/v1alpha1", "kind": "BenchmarkSuite", "name": "s",
             "uid": "u", "controller": True, "blockOwnerDeletion": False}  # fmt: skip
    env = {
        "BAKEOFF_RESULT_CONFIGMAP": "s-pytorch-a100-result",
        "BAKEOFF_NAMESPACE": "bench",
        "BAKEOFF_RESULT_LABELS": json.dumps({"bakeoff.dev/suite": "s"}),
        "BAKEOFF_RESULT_OWNER": json.dumps(owner),
    }
    destination = publish.destination_from_env(env)
    configmap = publish.result_configmap(result_for("pytorch", "a100"), destination)
    assert configmap["metadata"] == {
        "name": "s-pytorch-a100-result", "namespace": "bench",
        "labels": {"bakeoff.dev/suite": "s"}, "ownerReferences": [owner],
    }  # fmt: skip
    parsed = CellResult.model_validate_json(configmap["data"][publish.RESULT_KEY])
    assert (parsed.backend, parsed.pool) == ("pytorch", "a100")


def test_missing_environment_is_named() -> None:
    with pytest.raises(publish.PublishError, match="BAKEOFF_RESULT_CONFIGMAP, BAKEOFF_NAMESPACE"):
        publish.destination_from_env({})


def test_outside_a_pod_publish_says_it_needs_the_job() -> None:
    with pytest.raises(publish.PublishError, match="inside the benchmark Job only"):
        publish.in_cluster_access({})
