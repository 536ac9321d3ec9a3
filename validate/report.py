"""Validation reports: JSON for machines, Markdown with PNG plots for people (any task)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from qconv.artifact import write_json_atomic


@dataclass(frozen=True)
class Figure:
    suffix: str  # file name: validate-<variant>-<dataset>-<suffix>.png
    alt: str
    draw: Callable  # draw(ax) on a matplotlib Axes


def report_stem(variant: str, dataset: str) -> str:
    return f"validate-{variant}-{dataset}"


def scatter_figure(reference: np.ndarray, candidate: np.ndarray, what: str) -> Figure:
    def draw(ax):
        ax.scatter(reference, candidate, s=6, alpha=0.6)
        lo = float(min(reference.min(), candidate.min()))
        hi = float(max(reference.max(), candidate.max()))
        ax.plot([lo, hi], [lo, hi], color="grey", linewidth=0.8, linestyle="--")
        ax.set_xlabel(f"reference {what} (PyTorch)")
        ax.set_ylabel(f"candidate {what} (ONNX)")

    return Figure("scatter", f"candidate vs reference {what}", draw)


def log_gap_histogram(values: np.ndarray, xlabel: str, suffix: str, alt: str) -> Figure:
    """Histogram of log10 of a small non-negative gap: parity spans many decades."""

    def draw(ax):
        ax.hist(np.log10(np.clip(values, 1e-12, None)), bins=40)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("count")

    return Figure(suffix, alt, draw)


def _save_figure(path: Path, figure: Figure, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    figure.draw(ax)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def signed(value: float, scale: float | None = None) -> str:
    """A delta with its sign: 4 decimals, or 2 significant digits when everything shown with it (``scale``, the
    largest magnitude) is below 1e-4, as parity deltas are."""
    scale = abs(value) if scale is None else scale
    return f"{value:+.4f}" if scale == 0 or scale >= 1e-4 or scale != scale else f"{value:+.1e}"


def format_interval(delta: float, interval: dict | list | None) -> str:
    """``-0.0012 [-0.0031, +0.0006]`` (the delta alone when no interval was computed), one format for all three."""
    if not interval:
        return signed(delta)
    low, high = (interval["low"], interval["high"]) if isinstance(interval, dict) else interval
    scale = max(abs(delta), abs(low), abs(high))
    return f"{signed(delta, scale)} [{signed(low, scale)}, {signed(high, scale)}]"


def interval_sentences(report: dict) -> list[str]:
    """What the intervals say, in words: which contain 0, and that the gates do not read them."""
    intervals = report.get("delta_ci") or {}
    if not intervals:
        skipped = (report.get("bootstrap") or {}).get("skipped")
        return [f"- bootstrap: {skipped or 'off (`--bootstrap 0`)'}: deltas without intervals"]
    boot = report["bootstrap"]
    zero = [m for m in report["metrics"] if intervals[m]["contains_zero"]]
    apart = [m for m in report["metrics"] if not intervals[m]["contains_zero"]]
    lines = [
        f"- 95% intervals: paired bootstrap over {boot['resampled']}, {boot['n_resamples']} resamples, seed "
        f"{boot['seed']}; the gates read the point estimate, the interval is for the reader"
    ]
    if zero:
        lines.append(f"- the interval contains 0 (no difference detectable on this data) for: {', '.join(zero)}")
    if apart:
        lines.append(f"- the interval excludes 0 (candidate and reference differ) for: {', '.join(apart)}")
    return lines


def _clip(text: str, n: int = 160) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= n else text[: n - 1] + "…"


def _worst_lines(report: dict) -> list[str]:
    worst = report.get("worst") or {}
    items = worst.get("items") or []
    if not items:
        return []
    keys = [k for k in items[0] if k not in ("text", "query")]
    text_key = "text" if "text" in items[0] else "query"
    lines = ["", f"Worst {len(items)} by {worst['by']}:", ""]
    lines += ["| " + " | ".join([text_key, *keys]) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += ["| " + " | ".join([_clip(i[text_key]), *(_fmt(i[k]) for k in keys)]) + " |" for i in items]
    return lines


def render_markdown(report: dict, images: dict[str, str], figures: list[Figure]) -> str:
    status = "PASSED" if report["passed"] else "FAILED"
    ref, cand = report["reference"], report["candidate"]
    lines = [
        f"# Validation: {report['variant']} on {report['dataset']} — {status}",
        "",
        f"- dataset: `{report['dataset']}` split `{report['split']}`, source **{report['source']}** "
        f"(`{report['location']}`), {report['size']}",
        f"- variant: `{report['variant']}` ({report['precision']}) on {', '.join(report['providers'])}",
        f"- reference: PyTorch `{ref['model']}`",
    ]
    lines += [f"- {k}: `{v!r}`" for k, v in report.get("settings", {}).items()]
    if "instruction_rule" in report:
        lines.append(f"- instruction rule: {report['instruction_rule']} (not given = the default, '' = none)")
    lines.append(
        f"- full Hub split: {'yes' if report.get('full_split') else 'no'}; real weights: "
        f"{'yes' if report.get('real_weights') else 'no'} (the model card's model-index takes only runs with both)"
    )
    if report.get("relevance"):
        rel = report["relevance"]
        graded = "graded qrels" if rel["graded"] else "binary qrels (positive/negative lists)"
        lines.append(f"- relevance: {graded}; {rel['rule']}; computed by {rel['library']}")
    if report.get("candidates"):
        c = report["candidates"]
        lines.append(
            f"- candidates: {c['definition']} ({c['per_query_min']}-{c['per_query_max']}, mean {c['per_query_mean']} "
            f"per query; {c['queries_without_nonrelevant']} queries have no non-relevant candidate)"
        )
    if report.get("note"):
        lines.append(f"- note: {report['note']}")
    lines += ["", "| | " + " | ".join(report["metrics"]) + " |", "|---" * (len(report["metrics"]) + 1) + "|"]
    lines.append("| reference (PyTorch) | " + " | ".join(_fmt(ref[m]) for m in report["metrics"]) + " |")
    lines.append("| candidate (ONNX) | " + " | ".join(_fmt(cand[m]) for m in report["metrics"]) + " |")
    intervals = report.get("delta_ci") or {}
    lines.append(
        "| delta [95% CI] | "
        + " | ".join(format_interval(cand[m] - ref[m], intervals.get(m)) for m in report["metrics"])
        + " |"
    )
    lines += ["", *interval_sentences(report)]
    lines += ["", "| parity | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in report["parity"].items()]
    lines += _worst_lines(report)
    lines += ["", "| threshold | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in report["thresholds"].items()]
    if report.get("placement"):
        lines += ["", "| placement | fall back | copies per run | verdict |", "|---|---|---|---|"]
        lines += [
            f"| {p} | {r['fallback_nodes']} | {r['partition_boundaries']} | {r['verdict']} |"
            for p, r in report["placement"].items()
        ]
    if report["failures"]:
        lines += ["", "Failures:", *[f"- {f}" for f in report["failures"]]]
    for figure in figures:
        lines += ["", f"![{figure.alt}]({images[figure.suffix]})"]
    return "\n".join(lines) + "\n"


def write_report(reports_dir: Path, report: dict, figures: list[Figure]) -> dict[str, Path]:
    stem = report_stem(report["variant"], report["dataset"])
    paths = {"json": reports_dir / f"{stem}.json", "md": reports_dir / f"{stem}.md"}
    title = f"{report['variant']} on {report['dataset']} ({report['size']})"
    for figure in figures:
        paths[figure.suffix] = reports_dir / f"{stem}-{figure.suffix}.png"
        _save_figure(paths[figure.suffix], figure, title)
    report["files"] = {k: p.name for k, p in paths.items()}
    write_json_atomic(paths["json"], report)
    images = {f.suffix: paths[f.suffix].name for f in figures}
    paths["md"].write_text(render_markdown(report, images, figures), encoding="utf-8")
    return paths


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False)
