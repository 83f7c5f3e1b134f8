"""The `bakeoff` command: validate a suite, run it locally, re-render a report, compare two
runs.

Exit codes: 0 success, 1 the run finished but some cell failed, 2 bad input (the suite or the
arguments), 3 `compare` found a regression past its threshold, 130 interrupted. Errors are
one readable message, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from bakeoff import __version__, analysis, api, compare, plan, report, validation
from bakeoff_bench.results import CellResult

if TYPE_CHECKING:
    pass

EXIT_OK, EXIT_CELL_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_REGRESSION = 3


def _eprint(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _progress_printer() -> Callable[[str], None]:
    started = time.monotonic()

    def progress(message: str) -> None:
        _eprint(f"[{time.monotonic() - started:6.1f}s] {message}")

    return progress


def _load(path: str) -> api.BenchmarkSuite | None:
    try:
        return validation.load_suite(Path(path))
    except validation.SuiteInvalid as invalid:
        _eprint(f"{invalid.source}: invalid BenchmarkSuite ({len(invalid.problems)} problem(s))")
        for problem in invalid.problems:
            _eprint(f"  {problem.render()}")
        return None


def cmd_validate(args: argparse.Namespace) -> int:
    suite = _load(args.file)
    if suite is None:
        return EXIT_BAD_INPUT
    cells = plan.plan_cells(suite.spec)
    print(
        f"{args.file}: valid BenchmarkSuite '{suite.metadata.name}': "
        f"{len(suite.spec.backends)} backend(s) x {len(suite.spec.node_pools)} pool(s) = "
        f"{len(cells)} cell(s)"
    )
    return EXIT_OK


def _read_cells(folder: Path) -> list[CellResult] | None:
    files = sorted((folder / "cells").glob("*.json"))
    if not files:
        _eprint(f"{folder}/cells has no results: give a results folder such as results/cpu-mock")
        return None
    try:
        return [CellResult.model_validate_json(p.read_text()) for p in files]
    except ValueError as error:
        _eprint(f"{folder}: a result does not read as one: {str(error).splitlines()[0]}")
        return None


def cmd_compare(args: argparse.Namespace) -> int:
    old, new = _read_cells(Path(args.old)), _read_cells(Path(args.new))
    if old is None or new is None:
        return EXIT_BAD_INPUT
    changes = compare.compare_results(
        old, new, threshold=args.threshold, confidence=args.confidence
    )
    if not changes:
        _eprint(f"{args.old} and {args.new} have no cell in common (backend and pool)")
        return EXIT_BAD_INPUT
    print(
        f"{args.old} -> {args.new}: changes of at least {args.threshold:.0%} beyond the "
        f"{args.confidence:.0%} intervals"
    )
    for change in changes:
        print(f"  {change.line()}")
    regressions = [c for c in changes if c.regression]
    if regressions:
        _eprint(f"{len(regressions)} regression(s) past {args.threshold:.0%}")
        return EXIT_REGRESSION
    return EXIT_OK


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a fraction in [0, 1), e.g. 0.05")
    return value


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def cmd_run(args: argparse.Namespace) -> int:
    if not args.local:
        _eprint(
            "bakeoff run needs --local for now: it runs the suite on this machine. On a cluster, "
            f"apply the suite instead: kubectl apply -f {args.file}"
        )
        return EXIT_BAD_INPUT
    suite = _load(args.file)
    if suite is None:
        return EXIT_BAD_INPUT
    from bakeoff import local  # imports the servers' launchers and the load generator

    progress = _progress_printer()
    secrets_dir = Path(args.secrets_dir) if args.secrets_dir else None
    options = local.LocalOptions(
        out_dir=Path(args.out), pool=args.pool, device=args.device, secrets_dir=secrets_dir
    )
    # SIGTERM takes the same path as Ctrl-C, so servers are stopped either way.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    suite_dir = options.out_dir / suite.metadata.name
    try:
        outcomes = local.run_local(suite, options, progress)
    except local.LocalRunError as error:
        _eprint(f"cannot run {args.file} locally: {error}")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _eprint(f"interrupted: servers stopped; results so far are in {suite_dir}/cells")
        return EXIT_INTERRUPTED
    results = local.load_results(outcomes)
    failures = [(o.backend, o.pool, o.message) for o in outcomes if o.phase is api.CellPhase.FAILED]
    verdict = analysis.analyze(suite, results, failures)
    paths = report.write_report(verdict, results, suite_dir)
    print(report.render_table(verdict))
    print(f"\nreport: {paths[0]}  {paths[1]}\nresults: {suite_dir}/cells/")
    for backend, pool, reason in failures:
        _eprint(f"\ncell {backend}/{pool} failed:\n{reason}")
    return EXIT_CELL_FAILED if failures else EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    if args.cluster:
        return _report_from_cluster(args)
    suite_dir = Path(args.results)
    suite = _load(args.suite) if args.suite else None
    cell_files = sorted((suite_dir / "cells").glob("*.json"))
    if not cell_files:
        _eprint(f"{suite_dir}/cells has no results; run `bakeoff run SUITE --local` first")
        return EXIT_BAD_INPUT
    if suite is None:
        if args.suite:
            return EXIT_BAD_INPUT
        _eprint(
            "--suite FILE is needed to know pools, prices and the parity reference "
            "(or use --cluster to report a suite from the cluster)"
        )
        return EXIT_BAD_INPUT
    results = [CellResult.model_validate_json(p.read_text()) for p in cell_files]
    outcomes_file = suite_dir / "outcomes.json"
    failures: list[tuple[str, str, str]] = []
    if outcomes_file.exists():
        for cell in json.loads(outcomes_file.read_text()).get("cells", []):
            if cell.get("phase") == api.CellPhase.FAILED.value:
                failures.append((cell["backend"], cell["pool"], cell.get("message", "")))
    verdict = analysis.analyze(suite, results, failures)
    paths = report.write_report(verdict, results, suite_dir)
    print(report.render_table(verdict))
    print(f"\nreport: {paths[0]}  {paths[1]}")
    return EXIT_OK


def _report_from_cluster(args: argparse.Namespace) -> int:
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config
    from kubernetes.client.exceptions import ApiException

    from bakeoff import cluster_report, kube

    name = args.results
    try:
        k8s_config.load_kube_config(context=args.context)  # type: ignore[no-untyped-call]
        contexts, current = k8s_config.list_kube_config_contexts()  # type: ignore[no-untyped-call]
        chosen = next((c for c in contexts if c["name"] == args.context), current)
        namespace = args.namespace or chosen["context"].get("namespace", "default")
        client = kube.KubeClient(k8s.ApiClient())
        suite, results, failures, problems = cluster_report.fetch(
            client, namespace, name, Path(args.out)
        )
    except (k8s_config.ConfigException, OSError) as error:
        _eprint(f"cannot reach the cluster: {error}")
        return EXIT_BAD_INPUT
    except ApiException as error:
        if error.status == 404:
            _eprint(f"no BenchmarkSuite {name!r} in namespace {namespace!r}")
        else:
            _eprint(f"the API server refused: {error.status} {error.reason}")
        return EXIT_BAD_INPUT
    except (cluster_report.ClusterReportError, validation.SuiteInvalid) as error:
        _eprint(str(error))
        return EXIT_BAD_INPUT
    for problem in problems:
        _eprint(f"skipped a malformed result: {problem}")
    verdict = analysis.analyze(suite, results, failures)
    paths = report.write_report(verdict, results, Path(args.out) / name)
    print(report.render_table(verdict))
    print(f"\nreport: {paths[0]}  {paths[1]}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bakeoff", description="Fair, reproducible bake-offs between inference backends."
    )
    parser.add_argument("--version", action="version", version=f"bakeoff {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p_validate = sub.add_parser("validate", help="check a suite file; list every problem")
    p_validate.add_argument("file")
    p_validate.set_defaults(func=cmd_validate)
    p_run = sub.add_parser("run", help="run a suite")
    p_run.add_argument("file")
    p_run.add_argument("--local", action="store_true", help="run on this machine, no cluster")
    p_run.add_argument("--out", default="results", help="results folder (default: results)")
    p_run.add_argument("--pool", help="pool whose price and device to use (default: first)")
    p_run.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="auto: the pool's (gpus: 0 means cpu)",
    )
    p_run.add_argument(
        "--secrets-dir",
        help="external endpoints' credentials: each Secret key in DIR/<secret>/<key>",
    )
    p_run.set_defaults(func=cmd_run)
    p_report = sub.add_parser(
        "report", help="write the report of a local results folder or of a cluster suite"
    )
    p_report.add_argument(
        "results", help="results folder (results/cpu-mock) or, with --cluster, the suite's name"
    )
    p_report.add_argument("--suite", help="the suite file a local results folder came from")
    p_report.add_argument(
        "--cluster",
        action="store_true",
        help="read the suite's status and result ConfigMaps from the cluster",
    )
    p_report.add_argument("-n", "--namespace", help="with --cluster (default: the context's)")
    p_report.add_argument("--context", help="with --cluster: kubeconfig context")
    p_report.add_argument("--out", default="results", help="with --cluster: results folder")
    p_report.set_defaults(func=cmd_report)
    p_compare = sub.add_parser(
        "compare",
        help="compare two runs cell by cell: faster, slower or no change (exit 3 on a regression)",
    )
    p_compare.add_argument("old", help="results folder of the earlier run (results/cpu-mock)")
    p_compare.add_argument("new", help="results folder of the later run")
    p_compare.add_argument(
        "--threshold", type=_fraction, default=0.05,
        help="smallest relative change that counts (default 0.05)",
    )  # fmt: skip
    p_compare.add_argument(
        "--confidence", type=_fraction, default=0.95, help="of the intervals (default 0.95)"
    )
    p_compare.set_defaults(func=cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
