"""BenchConfig: the new scenario settings validate with messages that quote the bad values."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from bakeoff_bench.config import Arrival, BenchConfig, SteadyState

BASE: dict[str, Any] = {
    "suite": "s",
    "backend": "b",
    "pool": "p",
    "target": {"httpUrl": "http://x", "modelName": "m"},
}


def load(**fields: Any) -> BenchConfig:
    return BenchConfig.model_validate({**BASE, **fields})


def test_a_config_without_the_new_settings_means_what_it_meant() -> None:
    config = load(single={"requests": 10}, batchSweep={"batchSizes": [1, 4]})
    assert config.steady_state is None and config.single is not None
    assert config.single.steady_state is None
    assert (config.concurrency_sweep, config.rate, config.workers) == (None, None, 1)


def test_steady_state_defaults_follow_the_design() -> None:
    steady = SteadyState.model_validate({"windowRequests": 100})
    assert (steady.tolerance, steady.consecutive, steady.max_windows) == (0.10, 3, 10)


@pytest.mark.parametrize(
    ("steady", "message"),
    [
        ({}, "exactly one of windowRequests and windowSeconds"),
        ({"windowRequests": 10, "windowSeconds": 1}, "windowRequests=10, windowSeconds=1.0"),
        ({"windowRequests": 10, "consecutive": 5, "maxWindows": 4}, r"consecutive \(5\)"),
        ({"windowRequests": 10, "tolerance": 0}, "greater than 0"),
    ],
)
def test_steady_state_rules(steady: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        load(single={"steadyState": steady})


def test_rate_scenario_defaults_and_camel_case_names() -> None:
    config = load(rate={"requestsPerSecond": [50, 100], "sloP99Ms": 50})
    assert config.rate is not None
    assert config.rate.arrival is Arrival.POISSON
    assert (config.rate.max_in_flight, config.rate.late_threshold_ms) == (128, 2.0)
    dumped = config.model_dump(by_alias=True, exclude_none=True)["rate"]
    assert {"requestsPerSecond", "durationSeconds", "maxInFlight", "drainSeconds"} <= set(dumped)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"rate": {}}, "rate needs requestsPerSecond, maxRateSearch or both"),
        ({"rate": {"requestsPerSecond": [0]}}, r"requestsPerSecond.0\n  Input should be greater"),
        (
            {"rate": {"requestsPerSecond": [10], "maxRateSearch": {}}},
            "maxRateSearch needs sloP99Ms",
        ),
        (
            {"rate": {"sloP99Ms": 10, "maxRateSearch": {}}},
            "add a closed-loop scenario or requestsPerSecond",
        ),
        ({"rate": {"requestsPerSecond": [10], "arrival": "burst"}}, "constant"),
        ({"concurrencySweep": {"levels": [1, 1]}}, r"levels must not repeat, got \[1, 1\]"),
        ({"concurrencySweep": {"levels": [4], "batchSizes": [0]}}, r"batchSizes.0\n  Input should"),
        ({"concurrencySweep": {"levels": [5000]}}, "less than or equal to 4096"),
        ({"workers": 0}, "greater than or equal to 1"),
    ],
)
def test_invalid_scenarios_say_what_is_wrong(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        load(**fields)


def test_a_search_may_start_from_a_closed_loop_scenario() -> None:
    config = load(single={}, rate={"sloP99Ms": 10, "maxRateSearch": {"steps": 3}})
    assert config.rate is not None and config.rate.max_rate_search is not None
    assert config.rate.max_rate_search.steps == 3
