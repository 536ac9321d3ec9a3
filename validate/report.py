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
    if report.get("note"):
        lines.append(f"- note: {report['note']}")
    lines += ["", "| | " + " | ".join(report["metrics"]) + " |", "|---" * (len(report["metrics"]) + 1) + "|"]
    lines.append("| reference (PyTorch) | " + " | ".join(_fmt(ref[m]) for m in report["metrics"]) + " |")
    lines.append("| candidate (ONNX) | " + " | ".join(_fmt(cand[m]) for m in report["metrics"]) + " |")
    lines.append("| delta | " + " | ".join(_fmt(cand[m] - ref[m]) for m in report["metrics"]) + " |")
    lines += ["", "| parity | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in report["parity"].items()]
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
