"""One benchmark run of one cell: `BenchConfig` in, `CellResult` out.

Called by `__main__` (the benchmark Job) and in-process by the local runner. The order is
fixed: wait until ready, read metadata, pre-encode every payload, parity, single-image
scenario, batch sweep, final scrape (GPU memory). `time_to_ready_s` is left to the caller,
which knows when the server was started; this run only sees when it started waiting.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bakeoff_bench import client as oip
from bakeoff_bench import environment, payloads, scenarios, server_metrics
from bakeoff_bench.config import BenchConfig
from bakeoff_bench.results import LOW_SAMPLE_THRESHOLD, CellResult, ScenarioResult, ServerInfo

# One base class for every way a run can fail, so that callers catch exactly one name.
BenchError = oip.BenchError


class BenchSetupError(BenchError):
    """The model cannot be benchmarked as configured; the message says what to change."""


class ConfigFileError(ValueError):
    """The config file is unreadable or invalid; `problems` has one line per field error."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        super().__init__(f"invalid config {path}:\n" + "\n".join(f"  {p}" for p in problems))
        self.problems = problems


def validation_problems(exc: ValidationError) -> list[str]:
    """'field.path: message' per error, with the camelCase names the user wrote."""
    return [
        f"{'.'.join(str(part) for part in error['loc']) or '(top level)'}: {error['msg']}"
        for error in exc.errors()
    ]


def read_config(path: Path) -> BenchConfig:
    """Load a JSON or YAML `BenchConfig` (by suffix; YAML is a superset of JSON otherwise)."""
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigFileError(path, [f"cannot read: {exc}"]) from exc
    try:
        return BenchConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigFileError(path, validation_problems(exc)) from exc


def print_progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ModelIO:
    """What the model metadata and config tell the load generator."""

    input_name: str
    output_name: str
    input_shape: list[int]  # as in the metadata, batch dimension -1
    max_batch_size: int | None  # None: the server has no /config; 0: no limit stated


def resolve_model_io(metadata: Mapping[str, Any], config: Mapping[str, Any] | None) -> ModelIO:
    inputs, outputs = metadata.get("inputs") or [], metadata.get("outputs") or []
    if len(inputs) != 1 or not outputs:
        raise BenchSetupError(
            f"model {metadata.get('name')!r} has {len(inputs)} inputs and {len(outputs)} "
            "outputs; Bakeoff benchmarks models with one image input and at least one output"
        )
    tensor = inputs[0]
    if tensor.get("datatype") != "FP32":
        raise BenchSetupError(
            f"input {tensor.get('name')!r} is {tensor.get('datatype')}; every backend is sent "
            "the same FP32 tensor, so the model must accept FP32 (cast inside the model)"
        )
    shape = [int(d) for d in tensor.get("shape", [])]
    try:
        payloads.batched_shape(shape, 1)
    except ValueError as exc:
        raise BenchSetupError(str(exc)) from exc
    max_batch = None if config is None else int(config.get("max_batch_size", 0))
    return ModelIO(str(tensor["name"]), str(outputs[0]["name"]), shape, max_batch)


def check_batch_sizes(sizes: Iterable[int], max_batch_size: int | None) -> None:
    too_big = [b for b in sizes if max_batch_size and b > max_batch_size]
    if too_big:
        raise BenchSetupError(
            f"batch sizes {too_big} exceed the model's max_batch_size {max_batch_size}; "
            f"remove them from batchSizes or raise max_batch_size in the model config"
        )


def _string_parameter(config: Mapping[str, Any] | None, key: str) -> str:
    # Triton's config JSON: "parameters": {"runtime": {"string_value": "..."}}
    parameters = (config or {}).get("parameters") or {}
    value = parameters.get(key) or {}
    return str(value.get("string_value", "")) if isinstance(value, dict) else ""


def server_info(
    server: Mapping[str, Any], metadata: Mapping[str, Any], config: Mapping[str, Any] | None
) -> ServerInfo:
    platform = str(metadata.get("platform") or (config or {}).get("backend") or "")
    return ServerInfo(
        name=str(server.get("name", "unknown")),
        version=str(server.get("version", "unknown")),
        extensions=[str(e) for e in server.get("extensions", [])],
        model_platform=platform,
        runtime=_string_parameter(config, "runtime"),
        model_provenance=_string_parameter(config, "model_provenance"),
    )


def batch_sizes_needed(config: BenchConfig) -> list[int]:
    sizes = [1] if config.single is not None else []
    if config.batch_sweep is not None:
        sizes += [b for b in config.batch_sweep.batch_sizes if b not in sizes]
    return sizes


def encode_payloads(config: BenchConfig, io: ModelIO) -> dict[int, payloads.Payload]:
    """One request body per batch size, built before any timing; same seed for every size."""
    return {
        size: payloads.build_payload(
            io.input_name,
            io.output_name,
            payloads.seeded_images(config.seed, payloads.batched_shape(io.input_shape, size)),
        )
        for size in batch_sizes_needed(config)
    }


async def collect_parity(
    client: oip.OipClient, config: BenchConfig, io: ModelIO
) -> list[list[float]]:
    """Outputs for `parity_batch` images seeded with seed + PARITY_SEED_OFFSET, one row each."""
    images = payloads.seeded_images(
        config.seed + payloads.PARITY_SEED_OFFSET,
        payloads.batched_shape(io.input_shape, config.parity_batch),
    )
    chunk = io.max_batch_size or config.parity_batch  # respect the model's batch limit
    rows: list[list[float]] = []
    for start in range(0, config.parity_batch, chunk):
        payload = payloads.build_payload(
            io.input_name, io.output_name, images[start : start + chunk]
        )
        outputs = await client.infer_decoded(payload)
        if io.output_name not in outputs:
            raise oip.BackendResponseError(f"parity response lacks output {io.output_name!r}")
        rows += oip.as_float_rows(outputs[io.output_name])
    return rows


def scenario_notes(result: ScenarioResult) -> list[str]:
    label = f"{result.scenario} b={result.batch_size} c={result.concurrency}"
    notes: list[str] = []
    if "p99" in result.latency.low_sample_percentiles:
        notes.append(
            f"{label}: p99 is based on {result.latency.count} samples "
            f"(fewer than {LOW_SAMPLE_THRESHOLD['p99']}); treat it as indicative only"
        )
    if result.failed:
        first = result.errors[0] if result.errors else None
        reason = f" (most often {first.error_type}: {first.message})" if first else ""
        notes.append(
            f"{label}: {result.failed} of {result.failed + result.requests} requests failed{reason}"
        )
    return notes


async def run_scenarios(
    client: oip.OipClient,
    config: BenchConfig,
    encoded: Mapping[int, payloads.Payload],
    scraper: server_metrics.MetricsScraper,
    progress: Callable[[str], None],
) -> tuple[ScenarioResult | None, list[ScenarioResult]]:
    """The single-image scenario, then the batch sweep in the configured order."""
    single = None
    if config.single is not None:
        spec = config.single
        single = await scenarios.run_closed_loop(
            client, encoded[1], 1, 1, spec.requests, spec.warmup,
            scenario="single", scraper=scraper, progress=progress,
        )  # fmt: skip
        progress(scenarios.summary_line(single))
    sweep: list[ScenarioResult] = []
    if config.batch_sweep is not None:
        sweep_spec = config.batch_sweep
        for size in sweep_spec.batch_sizes:
            result = await scenarios.run_closed_loop(
                client, encoded[size], size, sweep_spec.concurrency, sweep_spec.requests,
                sweep_spec.warmup, scenario="batch", scraper=scraper, progress=progress,
            )  # fmt: skip
            progress(scenarios.summary_line(result))
            sweep.append(result)
    return single, sweep


async def run_bench(
    config: BenchConfig, progress: Callable[[str], None] = print_progress
) -> CellResult:
    """Run every configured scenario against `config.target` and return the cell's result.

    Raises `BenchError` (not ready, bad metadata, batch sizes the model refuses); failures
    of individual measured requests are data in the result instead.
    """
    started_at = datetime.now(UTC)
    target = config.target
    notes: list[str] = []
    concurrency = config.batch_sweep.concurrency if config.batch_sweep else 1
    async with oip.make_session(concurrency, config.request_timeout_s) as session:
        client = oip.OipClient(session, target.http_url, target.model_name)
        progress(f"waiting for {target.http_url} to be ready")
        await client.wait_ready(config.ready_timeout_s)
        server_meta = await client.server_metadata()
        model_meta = await client.model_metadata()
        model_config = await client.model_config()
        io = resolve_model_io(model_meta, model_config)
        if io.max_batch_size is None:
            notes.append("the server offers no model config: max batch size was not checked")
        check_batch_sizes(batch_sizes_needed(config), io.max_batch_size)
        encoded = encode_payloads(config, io)
        info = server_info(server_meta, model_meta, model_config)
        progress(f"server {info.name} {info.version}, model {target.model_name} ({info.runtime})")

        parity = None
        if config.parity_batch > 0:
            try:
                parity = await collect_parity(client, config, io)
            except oip.BackendResponseError as exc:
                # No outputs fails the parity gate downstream; the speed numbers still count.
                notes.append(f"parity request failed: {exc}")

        scraper = server_metrics.MetricsScraper(session, target.metrics_url, target.model_name)
        single, sweep = await run_scenarios(client, config, encoded, scraper, progress)
        final = await scraper.snapshot()

    for result in ([single] if single else []) + sweep:
        notes += scenario_notes(result)
        if target.metrics_url and result.server is None and result.requests:
            notes.append(f"{result.scenario} b={result.batch_size}: no server-side times")
    notes += scraper.problems
    memory = server_metrics.gpu_memory_bytes(final)
    return CellResult(
        suite=config.suite,
        backend=config.backend,
        pool=config.pool,
        started_at=started_at,
        finished_at=datetime.now(UTC),
        server=info,
        environment=environment.collect_environment(),
        seed=config.seed,
        single=single,
        batch_sweep=sweep,
        parity_outputs=parity,
        memory_bytes=memory,
        memory_kind="gpu" if memory is not None else None,
        notes=notes,
    )
