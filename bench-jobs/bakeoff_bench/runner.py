"""One benchmark run of one cell: `BenchConfig` in, `CellResult` out.

Called by `__main__` (the benchmark Job) and in-process by the local runner. The order is
fixed: wait until ready, read metadata, pre-encode every payload, cold start (the first
request of every batch size), parity, single-image scenario, batch sweep, concurrency sweep,
rates, max-rate search, final scrape (GPU memory), then flags (`flags`, pure) on every
result (the scenarios themselves run in `phases`). `time_to_ready_s` is left to the caller,
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

from bakeoff_bench import (
    barrier,
    coldstart,
    credentials,
    environment,
    flags,
    payloads,
    phases,
    server_metrics,
)
from bakeoff_bench import client as oip
from bakeoff_bench.config import BenchConfig
from bakeoff_bench.results import CellResult, ServerInfo

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
    input_datatype: str  # FP32 or UINT8
    max_batch_size: int | None  # None: the server has no /config; 0: no limit stated


def resolve_model_io(metadata: Mapping[str, Any], config: Mapping[str, Any] | None) -> ModelIO:
    inputs, outputs = metadata.get("inputs") or [], metadata.get("outputs") or []
    if len(inputs) != 1 or not outputs:
        raise BenchSetupError(
            f"model {metadata.get('name')!r} has {len(inputs)} inputs and {len(outputs)} "
            "outputs; Bakeoff benchmarks models with one image input and at least one output"
        )
    tensor = inputs[0]
    datatype = tensor.get("datatype")
    shape = [int(d) for d in tensor.get("shape", [])]
    if datatype == "BYTES":
        # One JPEG file per image: the pixel size comes from the config (image_size).
        size = _string_parameter(config, "image_size")
        if shape != [-1] or not size.isdigit():
            raise BenchSetupError(
                f"input {tensor.get('name')!r} is BYTES {shape}: Bakeoff sends one JPEG per "
                "image to a [-1] BYTES input whose model config states parameters.image_size"
            )
        shape = [-1, 3, int(size), int(size)]
    elif datatype not in ("FP32", "UINT8"):
        raise BenchSetupError(
            f"input {tensor.get('name')!r} is {datatype}; every backend is sent the same "
            "images as FP32 in [0, 1], UINT8 pixels or JPEG files (BYTES), so the model must "
            "accept one of them (cast inside the model)"
        )
    try:
        payloads.batched_shape(shape, 1)
    except ValueError as exc:
        raise BenchSetupError(str(exc)) from exc
    max_batch = None if config is None else int(config.get("max_batch_size", 0))
    return ModelIO(str(tensor["name"]), str(outputs[0]["name"]), shape, str(datatype), max_batch)


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
    """Every batch size any scenario sends, in first-use order (the cold-start order)."""
    sizes = [1] if config.single is not None else []
    if config.batch_sweep is not None:
        sizes += config.batch_sweep.batch_sizes
    if config.concurrency_sweep is not None:
        sizes += config.concurrency_sweep.batch_sizes
    if config.rate is not None:
        sizes.append(config.rate.batch_size)
    return list(dict.fromkeys(sizes))


def connection_limit(config: BenchConfig) -> int:
    """Connections this process may need at once: no request may queue inside the client."""
    levels = [1]
    if config.batch_sweep is not None:
        levels.append(config.batch_sweep.concurrency)
    if config.concurrency_sweep is not None:
        levels += config.concurrency_sweep.levels
    if config.rate is not None and config.workers == 1:
        levels.append(config.rate.max_in_flight)
    return max(levels)


def encode_payloads(config: BenchConfig, io: ModelIO) -> dict[int, payloads.Payload]:
    """One request body per batch size, built before any timing; same seed for every size."""
    return {
        size: payloads.build_payload(
            io.input_name,
            io.output_name,
            payloads.seeded_input(
                config.seed, payloads.batched_shape(io.input_shape, size), io.input_datatype
            ),
        )
        for size in batch_sizes_needed(config)
    }


async def collect_parity(
    client: oip.OipClient,
    config: BenchConfig,
    io: ModelIO,
    answered: Callable[[int], None] = lambda count: None,
) -> list[list[float]]:
    """Outputs for `parity_batch` images seeded with seed + PARITY_SEED_OFFSET, one row each.

    `answered(1)` after each successful request (the scraper's ledger).
    """
    images = payloads.seeded_input(
        config.seed + payloads.PARITY_SEED_OFFSET,
        payloads.batched_shape(io.input_shape, config.parity_batch),
        io.input_datatype,
    )
    chunk = io.max_batch_size or config.parity_batch  # respect the model's batch limit
    rows: list[list[float]] = []
    for start in range(0, config.parity_batch, chunk):
        payload = payloads.build_payload(
            io.input_name, io.output_name, images[start : start + chunk]
        )
        outputs = await client.infer_decoded(payload)
        answered(1)
        if io.output_name not in outputs:
            raise oip.BackendResponseError(f"parity response lacks output {io.output_name!r}")
        rows += oip.as_float_rows(outputs[io.output_name])
    return rows


async def run_bench(
    config: BenchConfig,
    progress: Callable[[str], None] = print_progress,
    coordination: barrier.Barrier | None = None,
) -> CellResult:
    """Run every configured scenario against `config.target` and return the cell's result.

    Raises `BenchError` (not ready, bad metadata, batch sizes the model refuses); failures
    of individual measured requests are data in the result instead.

    One of several clients (`config.clients`, passing `coordination` at every window edge):
    client 0 alone measures the cold start and parity, while the others wait, and scrapes
    the server; each client sends its share of every scenario (`shares`), and
    `merge.merge_cells` makes one result of theirs.
    """
    coordination = coordination or barrier.Solo()
    lead = config.client_index == 0
    started_at = datetime.now(UTC)
    target = config.target
    notes: list[str] = []
    measured = phases.Measured()
    try:
        secrets = credentials.load(target.auth, target.http_url)
    except credentials.CredentialsError as exc:
        raise BenchSetupError(f"endpoint.auth: {exc}") from None
    if target.auth is not None:
        notes.append(f"credentials from files (Secrets): {secrets.summary}")
    limit = connection_limit(config)
    async with oip.make_session(limit, config.request_timeout_s, secrets.ssl_context) as session:
        client = oip.OipClient(session, target.http_url, target.model_name, target.auth)
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

        # The metric baseline, before any inference request: every later scrape waits until
        # the server has counted all the answers the client has seen since.
        scraper = (
            server_metrics.MetricsScraper(
                session, target.metrics_url, target.model_name, client.credentials
            )
            if config.clients == 1
            else barrier.CoordinatedScraper(
                session, target.metrics_url, target.model_name, coordination, client.credentials
            )
        )
        await coordination.wait("set up")
        await scraper.start()

        # Phase 1, cold start: every batch size once, before parity and any warm-up.
        cold = None
        if encoded and lead:
            cold = await coldstart.run_cold_start(client, encoded, config.ready_timeout_s, progress)
            scraper.answered_ok(len(cold.first_request_ms) - len(cold.first_request_errors))

        parity = None
        if config.parity_batch > 0 and lead:
            try:
                parity = await collect_parity(client, config, io, scraper.answered_ok)
            except oip.BackendResponseError as exc:
                # No outputs fails the parity gate downstream; the speed numbers still count.
                notes.append(f"parity request failed: {exc}")

        await coordination.wait("cold start measured")  # no other load before it
        # Phases 2 and 3, warm-up and measurement, per scenario.
        await phases.run_closed_loop(client, config, encoded, scraper, progress, measured)
        await phases.run_rates(client, config, encoded, scraper, progress, measured)
        final = await scraper.snapshot()

    cell_flags, flag_notes = phases.attach_flags(measured, cold, target.metrics_url is not None)
    env = environment.collect_environment(config.seed)
    placement = flags.placement_flags(env)
    cell_flags += placement
    notes += flag_notes + [f"placement: {flag.message}" for flag in placement] + scraper.problems
    if cold is not None:
        cold.warmup_requests += sum(r.warmup_requests for r in measured.everything())
    memory = server_metrics.gpu_memory_bytes(final)
    return CellResult(
        suite=config.suite,
        backend=config.backend,
        pool=config.pool,
        started_at=started_at,
        finished_at=datetime.now(UTC),
        server=info,
        environment=env,
        seed=config.seed,
        single=measured.single,
        batch_sweep=measured.batch_sweep,
        parity_outputs=parity,
        memory_bytes=memory,
        memory_kind="gpu" if memory is not None else None,
        notes=notes,
        cold_start=cold,
        concurrency_sweep=measured.concurrency_sweep,
        rate=measured.rate,
        max_rate=measured.max_rate,
        flags=cell_flags,
    )
