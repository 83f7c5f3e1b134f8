"""The verdict as people read it: a terminal table, report.md, report.html and plots.

Rendering is pure (data in, text out) except `write_report`, the one function that touches
the disk. Plots are drawn with matplotlib's Agg backend, so no display is needed.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bakeoff.analysis import Range, Verdict, VerdictRow
from bakeoff.engine_server import Decomposition, Difference, FactorEffect, Split
from bakeoff_bench import intervals
from bakeoff_bench.results import CellResult, ScenarioResult

CATEGORY_TITLES = {
    "latency": "Single-image latency (p50)",
    "throughput": "Throughput",
    "cost": "Cost per 1000 inferences",
    "memory": "Memory",
    "max-rate": "Highest rate under the p99 SLO",
}


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f} MiB"


def _with_interval(
    value: float | None, interval: tuple[float, float] | None, fmt: str = ".2f"
) -> str:
    """'10.10 [9.46, 10.55]': the value and its interval at the verdict's confidence."""
    if value is None:
        return "-"
    if interval is None:
        return format(value, fmt)
    return f"{value:{fmt}} [{interval[0]:{fmt}}, {interval[1]:{fmt}}]"


def table_rows(verdict: Verdict) -> tuple[list[str], list[list[str]]]:
    level = f"{verdict.confidence:.0%}"
    header = [
        "backend",
        "pool",
        f"p50 ms [{level}]",
        f"p99 ms [{level}] (n)",
        "mean ms",
        "server compute ms",
        "queue ms",
        f"best img/s (batch) [{level}]",
        "memory",
        "cost/1k",
        "parity",
        "status",
    ]
    rows = []
    for r in verdict.rows:
        p99 = "-"
        if r.single_p99_ms is not None:
            flag = "!" if "p99" in r.single_low_sample else ""
            p99 = f"{_with_interval(r.single_p99_ms, r.single_p99_interval_ms)}{flag} "
            p99 += f"({r.single_samples})"
        best = "-"
        if r.best_inferences_per_s is not None:
            best = f"{r.best_inferences_per_s:.1f} (b{r.best_batch_size})"
            if r.best_inferences_per_s_interval is not None:
                low, high = r.best_inferences_per_s_interval
                best += f" [{low:.1f}, {high:.1f}]"
        rows.append(
            [
                r.backend,
                r.pool,
                _with_interval(r.single_p50_ms, r.single_p50_interval_ms),
                p99,
                # The client's mean beside the server's means: like with like.
                _num(r.single_mean_ms),
                _num(r.server_compute_ms),
                _num(r.server_queue_ms),
                best,
                f"{_mib(r.memory_bytes)} {r.memory_kind or ''}".strip(),
                _num(r.cost_per_1k, ".4f"),
                "reference" if r.is_reference else _num(r.parity_cosine, ".5f"),
                r.status,
            ]
        )
    return header, rows


def render_table(verdict: Verdict) -> str:
    header, rows = table_rows(verdict)
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.append("")
    lines += render_winners(verdict)
    if any("p99" in r.single_low_sample for r in verdict.rows):
        lines.append("! p99 from fewer than 100 samples: indicative only")
    sentences = engine_server_items(verdict)
    if sentences:
        lines.append("Engine vs server:")
        lines += [f"  {sentence}" for sentence in sentences]
    return "\n".join(lines)


def render_winners(verdict: Verdict) -> list[str]:
    level = f"{verdict.confidence:.0%}"
    lines = [
        f"Winners ({level} intervals; a lead under {verdict.min_effect:.0%} or within noise is "
        "no win):"
    ]
    for category, winner in verdict.winners.items():
        title = CATEGORY_TITLES.get(category, category)
        value = (
            _mib(int(winner.value))
            if winner.unit == "bytes"
            else f"{winner.value:.4g} {winner.unit}"
        )
        if winner.low is not None and winner.high is not None:
            value += f" [{winner.low:.4g}, {winner.high:.4g}]"
        lines.append(f"  {title}: {winner.backend} on {winner.pool}, {value} ({winner.basis})")
    for category, tie in verdict.ties.items():
        lines.append(f"  {CATEGORY_TITLES.get(category, category)}: {tie.message}")
    if not verdict.winners and not verdict.ties:
        lines.append("  none: no backend produced trustworthy results")
    lines.append("Recommendations:")
    lines += [f"  {sentence}" for sentence in verdict.recommendations]
    return lines


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(out)


Table = tuple[list[str], list[list[str]]]


@dataclass(frozen=True)
class Section:
    """One part of the report; Markdown and HTML render the same sections."""

    title: str
    table: Table | None = None
    items: tuple[str, ...] = ()
    empty: str = ""
    plots: bool = False


def _scenario_row(result: CellResult, s: ScenarioResult) -> list[str]:
    flag = "" if s.stable is not False else " (unstable)"
    return [
        result.backend, result.pool, str(s.batch_size), str(s.concurrency),
        f"{s.requests} (+{s.failed} failed)" if s.failed else str(s.requests),
        f"{s.inferences_per_s:.1f}{flag}", f"{s.latency.p50_ms:.2f}", f"{s.latency.p99_ms:.2f}",
        f"{s.latency.mean_ms:.2f}",
        _num(s.server.queue_ms if s.server else None),
        _num(s.server.compute_ms if s.server else None),
        _num(s.server.executed_batch if s.server else None, ".1f"),
    ]  # fmt: skip


SCENARIO_HEADER = ["backend", "pool", "batch", "in flight", "requests", "img/s", "p50 ms",
                   "p99 ms", "mean ms", "server queue ms", "server compute ms",
                   "executed batch"]  # fmt: skip


def sweep_rows(results: Sequence[CellResult]) -> Table:
    return SCENARIO_HEADER, [_scenario_row(r, s) for r in results for s in r.batch_sweep]


def concurrency_rows(results: Sequence[CellResult]) -> Table:
    return SCENARIO_HEADER, [_scenario_row(r, s) for r in results for s in r.concurrency_sweep]


def rate_rows(results: Sequence[CellResult]) -> Table:
    header = ["backend", "pool", "requested/s", "achieved/s", "p50 ms", "p99 ms",
              "schedule lag p99 ms", "late", "dropped", "SLO met"]  # fmt: skip
    rows = []
    for result in results:
        for s in result.rate:
            loop = s.open_loop
            if loop is None:
                continue
            dropped = loop.dropped_max_in_flight + loop.dropped_at_end
            rows.append([
                result.backend, result.pool, f"{loop.requested_requests_per_s:.1f}",
                f"{loop.achieved_requests_per_s:.1f}", f"{s.latency.p50_ms:.2f}",
                f"{s.latency.p99_ms:.2f}", f"{loop.schedule_lag.p99_ms:.2f}", str(loop.late),
                str(dropped), {True: "yes", False: "no", None: "-"}[loop.slo_met],
            ])  # fmt: skip
    return header, rows


def cold_start_rows(results: Sequence[CellResult]) -> Table:
    sizes = sorted({b for r in results if r.cold_start for b in r.cold_start.first_request_ms})
    header = ["backend", "pool", "ready after s", *[f"first b={b} ms" for b in sizes]]
    rows = []
    for result in results:
        firsts = result.cold_start.first_request_ms if result.cold_start else {}
        rows.append([result.backend, result.pool, _num(result.time_to_ready_s, ".1f"),
                     *[_num(firsts.get(b)) for b in sizes]])  # fmt: skip
    return header, rows


def max_rate_items(results: Sequence[CellResult]) -> list[str]:
    items = []
    for result in results:
        found = result.max_rate
        if found is None:
            continue
        rate = _num(found.requests_per_s, ".1f")
        items.append(
            f"{result.backend}/{result.pool}: {rate} requests/s with p99 within "
            f"{found.slo_p99_ms} ms ({len(found.trials)} trials from {found.start_basis})"
            + (f"; {found.message}" if found.message else "")
        )
    return items


def environment_items(results: Sequence[CellResult]) -> list[str]:
    items = []
    for r in results:
        env = r.environment
        gpu = f"{env.gpu_model} x{env.gpu_count}" if env.gpu_count else "no GPU"
        items.append(
            f"{r.backend}/{r.pool}: server {r.server.name} {r.server.version}, runtime "
            f"{r.server.runtime or 'unknown'}; model {r.server.model_provenance or 'unknown'}; "
            f"{gpu}, driver {env.gpu_driver or '-'}, CUDA {env.cuda_version or '-'}; client "
            f"{env.client_cpu} ({env.client_cores} cores) on {env.node or env.hostname}"
            f"{', server node ' + env.server_node if env.server_node else ''}; seed {r.seed}"
        )
    return items


def methodology() -> list[str]:
    return [
        "Same inputs: every backend got the same seeded FP32 tensors, as KServe v2 HTTP with "
        "binary tensor data, from the same load generator.",
        "Phases kept apart: time to ready and each batch size's first request are cold start; "
        "warm-up requests follow and are never measured.",
        "Server queue and compute times are the difference of the server's Triton metrics "
        "over exactly the measured window.",
        "Percentiles carry their sample counts; a p99 from fewer than 100 samples is flagged.",
        "Steady state (when configured): windows are measured until 3 consecutive ones agree "
        "on throughput and p50 within the tolerance, else the result is marked unstable.",
        "Open-loop runs time latency from each request's scheduled send (no coordinated "
        "omission) and report requested vs achieved rate, schedule lag and dropped requests.",
        "Cost per 1000 inferences = price per hour / (3600 x inferences per second) x 1000, at "
        "the closed-loop run with the highest throughput.",
        "Parity: each backend's outputs for seeded images are compared with the reference "
        "backend's (cosine); a backend below minCosine, or with an error flag, cannot win.",
    ]


def flag_items(verdict: Verdict) -> list[str]:
    items = [f"{r.backend}/{r.pool}: {flag}" for r in verdict.rows for flag in r.flags]
    items += [f"{r.backend}/{r.pool}: {r.status}" for r in verdict.rows if not r.ok]
    return items + list(verdict.notes)


def parity_items(verdict: Verdict) -> list[str]:
    return [
        f"{p.backend}/{p.pool} vs {p.reference}: cosine {_num(p.min_cosine, '.6f')}, max abs "
        f"error {_num(p.max_abs_error, '.2e')}: {'passed' if p.passed else 'FAILED'}"
        + (f" ({p.message})" if p.message else "")
        for p in verdict.parity
    ]


ARROW = "\u2192"
MINUS = "\u2212"


def _signed(value: float, fmt: str) -> str:
    """'+1.20' or '-0.80', with a true minus sign (U+2212), as a reader writes it."""
    return format(value, "+" + fmt).replace("-", MINUS)


def _percent(relative: float | None) -> str:
    return "" if relative is None else _signed(relative * 100, ".0f") + "%"


@dataclass(frozen=True)
class _Shown:
    """How a number of the engine-vs-server split is written."""

    name: str
    unit: str
    fmt: str


P50_SHOWN = _Shown("p50", "ms", ".2f")
THROUGHPUT_SHOWN = _Shown("throughput", "img/s", ".1f")
NOISE = "within noise"


def _change(
    delta: float, before: float, shown: _Shown, noisy: bool, also: Sequence[str] = ()
) -> str:
    """'-0.80 ms (-25%)': a change and its size relative to where it started; `also` adds
    details after a semicolon."""
    relative = _percent(delta / before if before else None)
    size = ", ".join(n for n in (relative, NOISE if noisy else "") if n)
    notes = [n for n in (size, ", ".join(also)) if n]
    detail = f" ({'; '.join(notes)})" if notes else ""
    return f"{_signed(delta, shown.fmt)} {shown.unit}{detail}"


def _difference_text(found: Difference | None, shown: _Shown) -> str:
    if found is None:
        return f"{shown.name} not measured"
    return f"{shown.name} {_change(found.delta, found.before, shown, found.within_noise)}"


def _engine_part_per_server(d: Decomposition, part: Split, shown: _Shown) -> list[str]:
    """With both orders measured, the engine's part in each server: they differ when the
    engine helps one server more than the other, which a mean alone would hide."""
    if len({r.first for r in part.routes}) < 2:
        return []
    # Engine first changes the engine in the start's server; server first, in the end's.
    per_server = []
    for first, server in (("engine", d.start_server), ("server", d.end_server)):
        parts = [r.engine for r in part.routes if r.first == first]
        per_server.append(f"{_signed(sum(parts) / len(parts), shown.fmt)} in {server}'s server")
    return per_server


def _split_text(d: Decomposition, part: Split | None, shown: _Shown) -> str:
    if part is None:
        return f"{shown.name} not measured"
    total = _change(part.total, part.before, shown, part.total_within_noise)
    per_server = _engine_part_per_server(d, part, shown)
    engine = _change(part.engine, part.before, shown, part.engine_within_noise, per_server)
    server = _change(part.server, part.before, shown, part.server_within_noise)
    return f"{shown.name} {total} = engine {engine} + server {server}"


def _routes_text(d: Decomposition) -> str:
    part = d.p50_ms or d.inferences_per_s
    if part is None:
        return "-"
    routes = part.routes
    named = [f"{r.via} ({r.first} first)" for r in routes]
    if len({r.first for r in routes}) > 1:
        return "mean of both orders, via " + " and ".join(named)
    return "via " + " and ".join(named)


def pair_sentence(pair: FactorEffect) -> str:
    """'pytorch → onnxruntime-cuda (engine, in bakeoff's server, fp32, fp32 input; ...)'."""
    held = f"in {pair.kept}'s server" if pair.factor == "engine" else f"running {pair.kept}"
    return (
        f"{pair.pool}: {pair.changed_from} {ARROW} {pair.changed_to} ({pair.factor}, {held}, "
        f"{pair.precision}, {pair.wire} input; backends {pair.before} {ARROW} {pair.after}): "
        f"{_difference_text(pair.p50_ms, P50_SHOWN)}; "
        f"{_difference_text(pair.inferences_per_s, THROUGHPUT_SHOWN)}"
    )


def decomposition_sentence(d: Decomposition) -> str:
    """'a (pytorch in bakeoff's server) → c (onnxruntime-cuda in triton's server), ...:
    p50 +0.40 ms (+13%) = engine -0.80 ms (-25%) + server +1.20 ms (+38%); ...'."""
    return (
        f"{d.pool}: {d.start} ({d.start_engine} in {d.start_server}'s server) {ARROW} {d.end} "
        f"({d.end_engine} in {d.end_server}'s server), {d.precision}, {d.wire} input: "
        f"{_split_text(d, d.p50_ms, P50_SHOWN)}; "
        f"{_split_text(d, d.inferences_per_s, THROUGHPUT_SHOWN)}; split {_routes_text(d)}"
    )


def engine_server_items(verdict: Verdict) -> list[str]:
    found = verdict.engine_vs_server
    return [*map(pair_sentence, found.pairs), *map(decomposition_sentence, found.decompositions)]


def _cell(delta: float, noisy: bool, fmt: str) -> str:
    return _signed(delta, fmt) + (" ~" if noisy else "")


def _difference_cells(found: Difference | None, fmt: str, factor: str) -> list[str]:
    """value before → after, change, engine part, server part (the unchanged factor's is 0)."""
    if found is None:
        return ["-"] * 4
    change = _cell(found.delta, found.within_noise, fmt)
    if found.relative is not None:
        change += f" ({_percent(found.relative)})"
    part = _cell(found.delta, found.within_noise, fmt)
    parts = [part, "0"] if factor == "engine" else ["0", part]
    return [f"{found.before:{fmt}} {ARROW} {found.after:{fmt}}", change, *parts]


def _split_cells(part: Split | None, fmt: str) -> list[str]:
    if part is None:
        return ["-"] * 4
    change = _cell(part.total, part.total_within_noise, fmt)
    if part.relative is not None:
        change += f" ({_percent(part.relative)})"
    return [
        f"{part.before:{fmt}} {ARROW} {part.after:{fmt}}",
        change,
        _cell(part.engine, part.engine_within_noise, fmt),
        _cell(part.server, part.server_within_noise, fmt),
    ]


def engine_server_rows(verdict: Verdict) -> Table:
    header = ["pool", "backends", "engine", "server", "precision, input", "p50 ms", "p50 change",
              "p50: engine", "p50: server", "img/s", "img/s change", "img/s: engine",
              "img/s: server", "split"]  # fmt: skip
    arrow = f" {ARROW} "
    rows = []
    for pair in verdict.engine_vs_server.pairs:
        changed = f"{pair.changed_from}{arrow}{pair.changed_to}"
        engine, server = (changed, pair.kept) if pair.factor == "engine" else (pair.kept, changed)
        rows.append([
            pair.pool, f"{pair.before}{arrow}{pair.after}", engine, server,
            f"{pair.precision}, {pair.wire}",
            *_difference_cells(pair.p50_ms, P50_SHOWN.fmt, pair.factor),
            *_difference_cells(pair.inferences_per_s, THROUGHPUT_SHOWN.fmt, pair.factor),
            f"{pair.factor} only",
        ])  # fmt: skip
    for d in verdict.engine_vs_server.decompositions:
        rows.append([
            d.pool, f"{d.start}{arrow}{d.end}", f"{d.start_engine}{arrow}{d.end_engine}",
            f"{d.start_server}{arrow}{d.end_server}", f"{d.precision}, {d.wire}",
            *_split_cells(d.p50_ms, P50_SHOWN.fmt),
            *_split_cells(d.inferences_per_s, THROUGHPUT_SHOWN.fmt),
            _routes_text(d),
        ])  # fmt: skip
    return header, rows


def engine_server_sections(verdict: Verdict) -> list[Section]:
    """The section, only where the suite has backends that isolate the engine or the server."""
    if not verdict.engine_vs_server.pairs:
        return []
    explanation = (
        "Backends on one pool that differ in the engine only or the server only (same "
        "precision and input) measure that factor alone. A difference in both is split "
        f"through a backend between them: A {ARROW} B changes one factor, B {ARROW} C the "
        "other, and the two parts add up to the whole; where both orders were measured, "
        "each part is their mean. Relative changes are of the first backend's number. "
        f"Lower p50 is faster, higher img/s is more. '~' and '{NOISE}': the intervals "
        f"overlap or the change is under minEffect ({verdict.min_effect:.0%})."
    )
    return [
        Section("Engine vs server", table=engine_server_rows(verdict),
                items=(explanation, *engine_server_items(verdict))),
    ]  # fmt: skip


def report_sections(verdict: Verdict, results: Sequence[CellResult]) -> list[Section]:
    winners = tuple(line.strip() for line in render_winners(verdict) if line.startswith("  "))
    return [
        Section("Verdict", table=table_rows(verdict), items=winners),
        Section("Flags", items=tuple(flag_items(verdict)), empty="No flags: every number "
                "passed the checks listed under Methodology."),
        Section("Throughput and latency per batch size", table=sweep_rows(results),
                empty="No batch sweep was run."),
        Section("Capacity: concurrency sweep", table=concurrency_rows(results),
                empty="No concurrency sweep was run."),
        Section("Open-loop rates", table=rate_rows(results), items=tuple(max_rate_items(results)),
                empty="No open-loop rate was run."),
        Section("Cold start", table=cold_start_rows(results)),
        *engine_server_sections(verdict),
        Section("Plots", plots=True),
        Section("Parity", items=tuple(parity_items(verdict)),
                empty="Only the reference backend ran; nothing to compare."),
        Section("Methodology", items=tuple(methodology())),
        Section("Environment", items=tuple(environment_items(results))),
    ]  # fmt: skip


def render_markdown(verdict: Verdict, results: Sequence[CellResult], plots: Sequence[str]) -> str:
    parts = [f"# Bake-off report: {verdict.suite}"]
    for section in report_sections(verdict, results):
        parts += ["", f"## {section.title}", ""]
        has_rows = section.table is not None and section.table[1]
        if has_rows and section.table is not None:
            parts += [_markdown_table(*section.table), ""]
        parts += [f"- {item}" for item in section.items]
        if section.plots:
            parts += [f"![{Path(p).stem}]({p})" for p in plots]
        if not has_rows and not section.items and not section.plots and section.empty:
            parts.append(section.empty)
    return "\n".join(parts).rstrip() + "\n"


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table[1]
    )
    # Wide tables scroll inside their box; the page keeps a laptop's width.
    return (
        f"<div class='scroll'><table><thead><tr>{head}</tr></thead>"
        f"<tbody>{body}</tbody></table></div>"
    )


def render_html(verdict: Verdict, results: Sequence[CellResult], plot_files: Sequence[Path]) -> str:
    body = [f"<h1>Bake-off report: {html.escape(verdict.suite)}</h1>"]
    for section in report_sections(verdict, results):
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        has_rows = section.table is not None and section.table[1]
        if has_rows and section.table is not None:
            body.append(_html_table(section.table))
        if section.items:
            body.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in section.items)
                        + "</ul>")  # fmt: skip
        if section.plots:
            body += [
                f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
                f'{base64.b64encode(p.read_bytes()).decode()}"/></figure>'
                for p in plot_files
            ]
        if not has_rows and not section.items and not section.plots and section.empty:
            body.append(f"<p>{html.escape(section.empty)}</p>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>Bake-off report: {html.escape(verdict.suite)}</title><style>"
        "body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1100px;"
        "padding:0 1em;line-height:1.4}"
        ".scroll{overflow-x:auto}table{border-collapse:collapse;margin:1em 0;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right;white-space:nowrap}"
        "th{background:#f3f3f3;position:sticky;top:0}td:first-child,th:first-child"
        "{text-align:left}img{max-width:100%;height:auto}figure{margin:1em 0}"
        "li{margin:.2em 0}"
        "</style></head><body>" + "".join(body) + "</body></html>\n"
    )


def _error_bars(values: Sequence[float], ranges: Sequence[Range | None]) -> list[list[float]]:
    """matplotlib's yerr (distances below and above) from intervals; 0 where none."""
    below = [v - r[0] if r else 0.0 for v, r in zip(values, ranges, strict=True)]
    above = [r[1] - v if r else 0.0 for v, r in zip(values, ranges, strict=True)]
    return [[max(0.0, b) for b in below], [max(0.0, a) for a in above]]


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (lower is better on
    both), ordered by the first. Pure: the cost-vs-p99 plot marks them."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (ox <= x and oy <= y) and (ox < x or oy < y)
            for j, (ox, oy) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def time_breakdown(result: CellResult) -> dict[str, float] | None:
    """Where a single-image request's mean time goes, in ms: client and network (the client's
    mean less the server's request time), queue, compute, and the server's own rest."""
    single = result.single
    if single is None or single.server is None or single.latency.count == 0:
        return None
    server = single.server
    rest = max(0.0, server.request_ms - server.queue_ms - server.compute_ms)
    return {
        "client and network": max(0.0, single.latency.mean_ms - server.request_ms),
        "server queue": server.queue_ms,
        "server compute": server.compute_ms,
        "server other": rest,
    }


def draw_plots(
    results: Sequence[CellResult],
    rows: Sequence[VerdictRow],
    out_dir: Path,
    confidence: float,
    decompositions: Sequence[Decomposition] = (),
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        paths.append(out_dir / name)
        fig.savefig(paths[-1], dpi=100)
        plt.close(fig)

    level = f"{confidence:.0%}"
    singles = [r for r in results if r.single is not None and r.single.latency.count > 0]
    by_cell = {(r.backend, r.pool): r for r in rows}
    if singles:
        # Percentile distribution, HdrHistogram style: the tail spread out on a log axis.
        with_histograms = [
            r for r in singles if r.single is not None and r.single.latency.histogram is not None
        ]
        if with_histograms:
            fig, ax = plt.subplots(figsize=(9, 4.2))
            for result in with_histograms:
                assert result.single is not None and result.single.latency.histogram is not None
                quantiles, values = percentile_curve(result.single.latency.histogram)
                ax.plot(
                    [1 / (1 - q) for q in quantiles],
                    values,
                    label=f"{result.backend}/{result.pool} (n={result.single.latency.count})",
                )
            ticks = [0.5, 0.9, 0.99, 0.999, 0.9999]
            ax.set_xscale("log")
            ax.set_xticks([1 / (1 - q) for q in ticks], ["50%", "90%", "99%", "99.9%", "99.99%"])
            ax.set(
                xlabel="percentile",
                ylabel="latency ms",
                title="Single-image latency by percentile (log scale: the tail spread out)",
            )
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=8)
            save(fig, "latency-distribution.png")

        # Mean, p50, p99 with their intervals.
        fig, ax = plt.subplots(figsize=(9, 4.2))
        width = 0.8 / len(singles)
        for i, result in enumerate(singles):
            assert result.single is not None
            lat = result.single.latency
            row = by_cell.get((result.backend, result.pool))
            values = [lat.mean_ms, lat.p50_ms, lat.p99_ms]
            ranges = [row.single_mean_interval_ms, row.single_p50_interval_ms,
                      row.single_p99_interval_ms] if row else [None] * 3  # fmt: skip
            ax.bar([x + i * width for x in range(3)], values, width,
                   yerr=_error_bars(values, ranges), capsize=3,
                   label=f"{result.backend}/{result.pool} (n={lat.count})")  # fmt: skip
        ax.set_xticks(
            [x + width * (len(singles) - 1) / 2 for x in range(3)], ["mean", "p50", "p99"]
        )
        ax.set(ylabel="ms", title=f"Single-image latency ({level} intervals)")
        ax.legend(fontsize=8)
        save(fig, "latency-percentiles.png")

        # Where a request's time goes.
        parts = [(r, b) for r in singles if (b := time_breakdown(r)) is not None]
        if parts:
            fig, ax = plt.subplots(figsize=(9, 0.6 * len(parts) + 1.6))
            names = [f"{r.backend}/{r.pool}" for r, _ in parts]
            left = [0.0] * len(parts)
            for key in ("client and network", "server queue", "server compute", "server other"):
                widths = [b[key] for _, b in parts]
                ax.barh(names, widths, left=left, label=key)
                left = [a + w for a, w in zip(left, widths, strict=True)]
            ax.set(xlabel="ms per single-image request (means)", title="Where the time goes")
            ax.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.35))
            save(fig, "time-breakdown.png")

    priced = [r for r in rows if r.cost_per_1k is not None and r.single_p99_ms is not None]
    if priced:
        fig, ax = plt.subplots(figsize=(9, 4.2))
        points = [(float(r.single_p99_ms or 0), float(r.cost_per_1k or 0)) for r in priced]
        for row, (x, y) in zip(priced, points, strict=True):
            xerr = _error_bars([x], [row.single_p99_interval_ms])
            yerr = _error_bars([y], [row.cost_per_1k_interval])
            ax.errorbar(
                [x],
                [y],
                xerr=xerr,
                yerr=yerr,
                fmt="o",
                capsize=3,
                label=f"{row.backend}/{row.pool}{'' if row.ok else ' (excluded)'}",
            )
        front = pareto_front(points)
        ax.plot(
            [points[i][0] for i in front],
            [points[i][1] for i in front],
            "k--",
            alpha=0.5,
            label="Pareto front (nothing cheaper and faster)",
        )
        ax.set(
            xlabel=f"single-image p99 ms ({level} interval)",
            ylabel="cost per 1000 inferences",
            title="Cost against tail latency",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "cost-vs-p99.png")

    swept = [r for r in results if any(s.latency.count > 0 for s in r.batch_sweep)]
    if swept:
        fig, (left_ax, right_ax) = plt.subplots(1, 2, figsize=(11, 4))
        for result in swept:
            points_ = [s for s in result.batch_sweep if s.latency.count > 0]
            sizes = [s.batch_size for s in points_]
            label = f"{result.backend}/{result.pool}"
            rates = [s.inferences_per_s for s in points_]
            rate_ranges = [_range(intervals.throughput_interval(s, confidence)) for s in points_]
            p50s = [s.latency.p50_ms for s in points_]
            p50_ranges = [_range(intervals.quantile_interval(s.latency.histogram, 0.5, confidence))
                          for s in points_]  # fmt: skip
            left_ax.errorbar(sizes, rates, yerr=_error_bars(rates, rate_ranges), fmt="o-",
                             capsize=3, label=label)  # fmt: skip
            right_ax.errorbar(sizes, p50s, yerr=_error_bars(p50s, p50_ranges), fmt="o-",
                              capsize=3, label=label)  # fmt: skip
        left_ax.set(xlabel="batch size", ylabel="inferences/s", title="Throughput vs batch size")
        right_ax.set(xlabel="batch size", ylabel="p50 ms per request",
                     title="Latency vs batch size")  # fmt: skip
        for axis in (left_ax, right_ax):
            axis.set_xscale("log", base=2)
            axis.grid(alpha=0.3)
            axis.legend(fontsize=8)
        save(fig, "batch-sweep.png")

    if decompositions:
        fig = _draw_engine_server(plt, decompositions)
        if fig is not None:
            save(fig, "engine-vs-server.png")
    return paths


def _draw_engine_server(plt: Any, decompositions: Sequence[Decomposition]) -> Any:
    """Each decomposition as three adjacent bars: the engine part, the server part and the
    whole difference they add up to (adjacent, not stacked: parts of opposite signs would
    hide each other in a stack); a part within noise is hatched. One panel for p50, one for
    throughput, where measured."""
    from matplotlib.patches import Patch

    panels = [
        ("Single-image p50 (below 0: faster)", P50_SHOWN, [d.p50_ms for d in decompositions]),
        ("Best throughput (above 0: more)", THROUGHPUT_SHOWN,
         [d.inferences_per_s for d in decompositions]),
    ]  # fmt: skip
    panels = [panel for panel in panels if any(part is not None for part in panel[2])]
    if not panels:
        return None
    labels = [f"{d.start} {ARROW} {d.end}\n({d.pool})" for d in decompositions]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.5 * len(panels) + 3, 1.1 * len(decompositions) + 1.8),
        sharey=True, squeeze=False,
    )  # fmt: skip
    height = 0.26
    colors = {"engine part": "C0", "server part": "C1", "whole difference": "0.45"}
    # The legend's own patches: a bar's label would carry that bar's hatch.
    legend = [Patch(color=color, label=name) for name, color in colors.items()]
    legend.append(Patch(facecolor="0.8", edgecolor="white", hatch="//", label="within noise"))
    for ax, (title, shown, parts) in zip(axes[0], panels, strict=True):
        for y, part in enumerate(parts):
            if part is None:
                continue
            bars = (
                ("engine part", part.engine, part.engine_within_noise, -height),
                ("server part", part.server, part.server_within_noise, 0.0),
                ("whole difference", part.total, part.total_within_noise, height),
            )
            for name, value, noisy, offset in bars:
                ax.barh(y + offset, value, height=height, color=colors[name], edgecolor="white",
                        hatch="//" if noisy else None, alpha=0.5 if noisy else 1.0)  # fmt: skip
                ax.annotate(_signed(value, shown.fmt), (value, y + offset), fontsize=7,
                            xytext=(3 if value >= 0 else -3, 0), textcoords="offset points",
                            ha="left" if value >= 0 else "right", va="center")  # fmt: skip
        ax.axvline(0, color="black", linewidth=0.8)
        ax.margins(x=0.18)  # room for the numbers at the bars' ends
        ax.set(xlabel=f"change, {shown.unit}", title=title)
        ax.grid(alpha=0.3, axis="x")
    # Beside the panels, where it covers no bar.
    axes[0][-1].legend(handles=legend, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    axes[0][0].set_yticks(range(len(decompositions)), labels)
    axes[0][0].invert_yaxis()  # the first decomposition on top, as in the table
    fig.suptitle("Engine vs server: each difference = its engine part + its server part")
    return fig


def percentile_curve(histogram: Any) -> tuple[list[float], list[float]]:
    """(quantile, latency ms) at each bucket's upper edge: the percentile distribution."""
    total = sum(histogram.counts.values())
    seen, quantiles, values = 0, [], []
    for index, count in sorted(histogram.counts.items()):
        seen += count
        q = min(seen / total, 1 - 0.5 / total)  # the last point stays finite on a log axis
        quantiles.append(q)
        values.append(float(histogram.base ** (index + 1)) / 1000.0)
    return quantiles, values


def _range(found: intervals.Interval | None) -> Range | None:
    return (found.low, found.high) if found is not None else None


def write_report(verdict: Verdict, results: Sequence[CellResult], suite_dir: Path) -> list[Path]:
    """Write summary.json, report.md, report.html and plots/ under `suite_dir`."""
    plots = draw_plots(results, verdict.rows, suite_dir / "plots", verdict.confidence,
                       verdict.engine_vs_server.decompositions)  # fmt: skip
    relative = [str(p.relative_to(suite_dir)) for p in plots]
    (suite_dir / "summary.json").write_text(verdict.model_dump_json(by_alias=True, indent=2))
    (suite_dir / "report.md").write_text(render_markdown(verdict, results, relative))
    (suite_dir / "report.html").write_text(render_html(verdict, results, plots))
    return [suite_dir / "report.md", suite_dir / "report.html", *plots]
