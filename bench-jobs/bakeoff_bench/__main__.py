"""`python -m bakeoff_bench --config cfg.yaml --out result.json`: the benchmark Job's entrypoint.

Exit codes tell the operator what happened without parsing logs: 0 result written,
2 the config is invalid (fix the suite, retrying will not help), 1 the backend was not ready
or misbehaved (the message says which). Progress goes to stderr, the result to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from bakeoff_bench import runner

EXIT_OK, EXIT_BACKEND, EXIT_CONFIG = 0, 1, 2


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bakeoff_bench",
        description="Benchmark one OIP backend: latency, throughput, server-side times.",
    )
    parser.add_argument("--config", type=Path, required=True, help="BenchConfig, JSON or YAML")
    parser.add_argument("--out", type=Path, required=True, help="CellResult JSON ('-': stdout)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    try:
        config = runner.read_config(args.config)
    except runner.ConfigFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        result = asyncio.run(runner.run_bench(config))
    except runner.BenchSetupError as exc:
        # The model and the config disagree (e.g. a batch size above max_batch_size).
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except runner.BenchError as exc:
        # Not ready, unreachable or answering nonsense: the backend, not the config.
        print(f"error: backend: {exc}", file=sys.stderr)
        return EXIT_BACKEND
    text = result.model_dump_json(by_alias=True, indent=2)
    if str(args.out) == "-":
        print(text)
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
