"""The verdict as people read it: a terminal table, report.md, report.html and plots.

Rendering is pure (data in, text out) except `write_report`, the one function that touches
the disk. Plots are drawn with matplotlib's Agg backend, so no display is needed.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

from bakeoff.analysis import Verdict, VerdictRow
from bakeoff_bench.results import CellResult

CATEGORY_TITLES = {
    "latency": "Single-image latency (p50)",
    "throughput": "Throughput",
    "cost": "Cost per 1000 inferences",
    "memory": "Memory",
}


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "-" if value is None else format(value, fmt)


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f} MiB"


def table_rows(verdict: Verdict) -> tuple[list[str], list[list[str]]]:
    header = [
        "backend",
        "pool",
        "p50 ms",
        "p99 ms (n)",
        "server compute ms",
        "queue ms",
        "best img/s (batch)",
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
            p99 = f"{r.single_p99_ms:.2f}{flag} ({r.single_samples})"
        best = "-"
        if r.best_inferences_per_s is not None:
            best = f"{r.best_inferences_per_s:.1f} (b{r.best_batch_size})"
        rows.append(
            [
                r.backend,
                r.pool,
                _num(r.single_p50_ms),
                p99,
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
    return "\n".join(lines)


def render_winners(verdict: Verdict) -> list[str]:
    lines = ["Winners:"]
    for category, winner in verdict.winners.items():
        title = CATEGORY_TITLES.get(category, category)
        value = (
            _mib(int(winner.value))
            if winner.unit == "bytes"
            else f"{winner.value:.4g} {winner.unit}"
        )
        lines.append(f"  {title}: {winner.backend} on {winner.pool}, {value} ({winner.basis})")
    if not verdict.winners:
        lines.append("  none: no backend produced trustworthy results")
    lines.append("Recommendations:")
    lines += [f"  {sentence}" for sentence in verdict.recommendations]
    return lines


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(out)


def sweep_rows(results: Sequence[CellResult]) -> tuple[list[str], list[list[str]]]:
    header = [
        "backend",
        "pool",
        "batch",
        "requests",
        "img/s",
        "p50 ms",
        "p99 ms",
        "server queue ms",
        "server compute ms",
        "failed",
    ]
    rows = []
    for result in results:
        for s in result.batch_sweep:
            rows.append(
                [
                    result.backend,
                    result.pool,
                    str(s.batch_size),
                    str(s.requests),
                    f"{s.inferences_per_s:.1f}",
                    f"{s.latency.p50_ms:.2f}",
                    f"{s.latency.p99_ms:.2f}",
                    _num(s.server.queue_ms if s.server else None),
                    _num(s.server.compute_ms if s.server else None),
                    str(s.failed),
                ]
            )
    return header, rows


def methodology(results: Sequence[CellResult]) -> list[str]:
    lines = [
        "Every backend got the same seeded FP32 input tensors over the same protocol (KServe v2 "
        "HTTP with binary tensor data) from the same load generator.",
        "Warm-up requests are sent first and never measured; server-side queue and compute "
        "times are the difference of the server's Triton metrics over exactly the measured "
        "window.",
        "Cost per 1000 inferences = price per hour / (3600 x inferences per second) x 1000, at "
        "the batch size with the highest throughput.",
        "Parity: each backend's outputs for seeded images are compared with the reference "
        "backend's (cosine similarity); a backend below minCosine cannot win.",
    ]
    for result in results:
        provenance = result.server.model_provenance or "unknown"
        lines.append(
            f"{result.backend}/{result.pool}: server {result.server.name} "
            f"{result.server.version}, runtime {result.server.runtime or 'unknown'}; model "
            f"{provenance}; ready after {_num(result.time_to_ready_s, '.1f')} s"
        )
        lines += [f"{result.backend}/{result.pool}: {note}" for note in result.notes]
    return lines


def render_markdown(verdict: Verdict, results: Sequence[CellResult], plots: Sequence[str]) -> str:
    header, rows = table_rows(verdict)
    sweep_header, sweep = sweep_rows(results)
    parts = [
        f"# Bake-off report: {verdict.suite}",
        "",
        "## Verdict",
        "",
        _markdown_table(header, rows),
        "",
        *[f"- {line.strip()}" for line in render_winners(verdict) if line.startswith("  ")],
        "",
        "## Throughput and latency per batch size",
        "",
        _markdown_table(sweep_header, sweep) if sweep else "No batch sweep was run.",
        "",
        "## Plots",
        "",
        *[f"![{Path(p).stem}]({p})" for p in plots],
        "",
        "## Parity",
        "",
    ]
    if verdict.parity:
        parts += [
            f"- {p.backend}/{p.pool} vs {p.reference}: cosine {_num(p.min_cosine, '.6f')}, "
            f"max abs error {_num(p.max_abs_error, '.2e')}: {'passed' if p.passed else 'FAILED'}"
            f"{' (' + p.message + ')' if p.message else ''}"
            for p in verdict.parity
        ]
    else:
        parts.append("- only the reference backend ran; nothing to compare")
    parts += ["", "## Methodology", "", *[f"- {line}" for line in methodology(results)]]
    flags = [
        f"{r.backend}/{r.pool}: p99 from {r.single_samples} samples (fewer than 100)"
        for r in verdict.rows
        if "p99" in r.single_low_sample
    ] + verdict.notes
    parts += ["", "### Flags", ""] + ([f"- {f}" for f in flags] if flags else ["- none"])
    return "\n".join(parts) + "\n"


def render_html(verdict: Verdict, results: Sequence[CellResult], plot_files: Sequence[Path]) -> str:
    header, rows = table_rows(verdict)
    sweep_header, sweep = sweep_rows(results)

    def table(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
        cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
        lines = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in body
        )
        return f"<table><thead><tr>{cells}</tr></thead><tbody>{lines}</tbody></table>"

    images = "".join(
        f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"/></figure>'
        for p in plot_files
    )
    winners = "".join(
        f"<li>{html.escape(line.strip())}</li>"
        for line in render_winners(verdict)
        if line.startswith("  ")
    )
    method = "".join(f"<li>{html.escape(line)}</li>" for line in methodology(results))
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>Bake-off report: {html.escape(verdict.suite)}</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:4px 8px;text-align:right}th{background:#f3f3f3}img{max-width:100%}"
        "</style></head><body>"
        f"<h1>Bake-off report: {html.escape(verdict.suite)}</h1>"
        f"<h2>Verdict</h2>{table(header, rows)}<ul>{winners}</ul>"
        f"<h2>Per batch size</h2>{table(sweep_header, sweep)}"
        f"<h2>Plots</h2>{images}<h2>Methodology</h2><ul>{method}</ul></body></html>\n"
    )


def draw_plots(
    results: Sequence[CellResult], rows: Sequence[VerdictRow], out_dir: Path
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    labelled = [r for r in results if r.single is not None]
    if labelled:
        fig, ax = plt.subplots(figsize=(8, 4))
        width = 0.8 / max(len(labelled), 1)
        names = ["mean", "p50", "p95", "p99"]
        for i, result in enumerate(labelled):
            assert result.single is not None
            lat = result.single.latency
            values = [lat.mean_ms, lat.p50_ms, lat.p95_ms, lat.p99_ms]
            ax.bar(
                [x + i * width for x in range(4)],
                values,
                width,
                label=f"{result.backend}/{result.pool} (n={lat.count})",
            )
        ax.set_xticks([x + width * (len(labelled) - 1) / 2 for x in range(4)], names)
        ax.set_ylabel("ms")
        ax.set_title("Single-image latency")
        ax.legend()
        fig.tight_layout()
        paths.append(out_dir / "latency-percentiles.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    swept = [r for r in results if r.batch_sweep]
    if swept:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        for result in swept:
            sizes = [s.batch_size for s in result.batch_sweep]
            label = f"{result.backend}/{result.pool}"
            left.plot(sizes, [s.inferences_per_s for s in result.batch_sweep], "o-", label=label)
            right.plot(sizes, [s.latency.p50_ms for s in result.batch_sweep], "o-", label=label)
        left.set(xlabel="batch size", ylabel="inferences/s", title="Throughput vs batch size")
        right.set(xlabel="batch size", ylabel="p50 ms per request", title="Latency vs batch size")
        for axis in (left, right):
            axis.set_xscale("log", base=2)
            axis.grid(alpha=0.3)
            axis.legend()
        fig.tight_layout()
        paths.append(out_dir / "batch-sweep.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def write_report(verdict: Verdict, results: Sequence[CellResult], suite_dir: Path) -> list[Path]:
    """Write summary.json, report.md, report.html and plots/ under `suite_dir`."""
    plots = draw_plots(results, verdict.rows, suite_dir / "plots")
    relative = [str(p.relative_to(suite_dir)) for p in plots]
    (suite_dir / "summary.json").write_text(verdict.model_dump_json(by_alias=True, indent=2))
    (suite_dir / "report.md").write_text(render_markdown(verdict, results, relative))
    (suite_dir / "report.html").write_text(render_html(verdict, results, plots))
    return [suite_dir / "report.md", suite_dir / "report.html", *plots]
