"""`python -m bakeoff_bench --config cfg.yaml --out result.json`: the benchmark Job's entrypoint.

Exit codes tell the operator what happened without parsing logs: 0 result written,
2 the config is invalid (fix the suite, retrying will not help), 1 the backend was not ready
or misbehaved (the message says which). Progress goes to stderr, the result to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from pydantic import ValidationError

from bakeoff_bench import barrier, publish, runner
from bakeoff_bench import client as oip
from bakeoff_bench.config import BenchConfig

EXIT_OK, EXIT_BACKEND, EXIT_CONFIG = 0, 1, 2
# The longest a client pod waits at one barrier for the others (a scenario's length, and more).
BARRIER_TIMEOUT_S: Final = 900.0


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bakeoff_bench",
        description="Benchmark one OIP backend: latency, throughput, server-side times.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="BenchConfig file, JSON or YAML")
    source.add_argument("--config-env", metavar="VAR", help="environment variable holding it")
    parser.add_argument("--out", type=Path, help="CellResult JSON ('-': stdout)")
    parser.add_argument(
        "--publish",
        action="store_true",
        help="write the result into the ConfigMap named by BAKEOFF_RESULT_CONFIGMAP (in a Job)",
    )
    args = parser.parse_args(argv)
    if args.out is None and not args.publish:
        parser.error("say where the result goes: --out FILE, --publish, or both")
    return args


def _read_config(args: argparse.Namespace) -> BenchConfig:
    if args.config is not None:
        return runner.read_config(args.config)
    text = os.environ.get(args.config_env)
    if not text:
        raise runner.ConfigFileError(Path(f"${args.config_env}"), ["variable is unset or empty"])
    try:
        return BenchConfig.model_validate_json(text)
    except ValidationError as exc:
        raise runner.ConfigFileError(
            Path(f"${args.config_env}"), runner.validation_problems(exc)
        ) from exc


def _client_of_a_job(
    config: BenchConfig, env: Mapping[str, str] = os.environ
) -> tuple[BenchConfig, barrier.Barrier]:
    """One client pod of a several-client Indexed Job: its index (JOB_COMPLETION_INDEX), its
    barrier (BAKEOFF_BARRIER_CONFIGMAP); it publishes its part as `<prefix>-<index>`."""
    if config.clients == 1:
        return config, barrier.Solo()
    index_text, name = env.get("JOB_COMPLETION_INDEX"), env.get("BAKEOFF_BARRIER_CONFIGMAP")
    if not index_text or not index_text.isdigit() or not name:
        raise ValueError(
            f"clients: {config.clients} runs as an Indexed Job: JOB_COMPLETION_INDEX and "
            "BAKEOFF_BARRIER_CONFIGMAP must be set (the operator sets them)"
        )
    config = config.model_copy(update={"client_index": int(index_text)})
    BenchConfig.model_validate(config.model_dump())  # the index must be one of the clients
    coordination = barrier.ConfigMapBarrier(
        publish.in_cluster_access(env), env.get("BAKEOFF_NAMESPACE", "default"), name,
        config.client_index, config.clients, BARRIER_TIMEOUT_S,
    )  # fmt: skip
    return config, coordination


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        config = _read_config(args)
    except runner.ConfigFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        config, coordination = _client_of_a_job(config)
    except (ValueError, publish.PublishError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        # uvloop where installed: a cheaper hot path for the client (`client` decides).
        with asyncio.Runner(loop_factory=oip.event_loop_factory()) as loop_runner:
            try:
                result = loop_runner.run(runner.run_bench(config, coordination=coordination))
            except Exception as exc:
                # The other client pods stop at their next barrier with this reason.
                loop_runner.run(coordination.fail(f"{type(exc).__name__}: {exc}"))
                raise
    except runner.BenchSetupError as exc:
        # The model and the config disagree (e.g. a batch size above max_batch_size).
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except runner.BenchError as exc:
        # Not ready, unreachable or answering nonsense: the backend, not the config.
        print(f"error: backend: {exc}", file=sys.stderr)
        return EXIT_BACKEND
    # In a cluster the operator saw the backend become ready (pod created -> Ready), not us.
    ready = os.environ.get("BAKEOFF_TIME_TO_READY_S")
    if ready:
        result.time_to_ready_s = float(ready)
    if args.out is not None:
        text = result.model_dump_json(by_alias=True, indent=2)
        if str(args.out) == "-":
            print(text)
        else:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text + "\n")
            print(f"wrote {args.out}", file=sys.stderr)
    if args.publish:
        try:
            destination = publish.destination_from_env()
            if config.clients > 1:
                part = f"{destination.name}-{config.client_index}"
                destination = dataclasses.replace(destination, name=part)
            outcome = asyncio.run(
                publish.publish(
                    publish.in_cluster_access(), publish.result_configmap(result, destination)
                )
            )
        except publish.PublishError as exc:
            print(f"error: publishing the result: {exc}", file=sys.stderr)
            return EXIT_BACKEND
        print(f"{outcome} ConfigMap {destination.namespace}/{destination.name}", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
