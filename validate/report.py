"""Validation reports: JSON for machines, Markdown with PNG plots for people."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from qconv.artifact import write_json_atomic


def report_stem(variant: str, dataset: str) -> str:
    return f"validate-{variant}-{dataset}"


def _plot_pairs(path: Path, reference: np.ndarray, candidate: np.ndarray, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    ax.scatter(reference, candidate, s=6, alpha=0.6)
    lo, hi = float(min(reference.min(), candidate.min())), float(max(reference.max(), candidate.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("reference pair cosine (PyTorch)")
    ax.set_ylabel("candidate pair cosine (ONNX)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_histogram(path: Path, per_text_cosine: np.ndarray, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    # 1 - cosine on a log axis: the interesting range for parity spans many decades.
    gap = np.clip(1.0 - per_text_cosine, 1e-12, None)
    ax.hist(np.log10(gap), bins=40)
    ax.set_xlabel("log10(1 - cosine(candidate, reference)) per text")
    ax.set_ylabel("texts")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def render_markdown(report: dict, scatter_png: str, hist_png: str) -> str:
    status = "PASSED" if report["passed"] else "FAILED"
    ref, cand, parity = report["reference"], report["candidate"], report["parity"]
    lines = [
        f"# Validation: {report['variant']} on {report['dataset']} — {status}",
        "",
        f"- dataset: `{report['dataset']}` split `{report['split']}`, source **{report['source']}** "
        f"(`{report['location']}`), {report['n_pairs']} pairs, {parity['n_texts']} unique texts",
        f"- variant: `{report['variant']}` ({report['precision']}) on {', '.join(report['providers'])}",
        f"- reference: PyTorch `{ref['model']}`",
        f"- prompt: `{report['prompt']!r}`" + (f", dim {report['dim']}" if report.get("dim") else ""),
    ]
    if report.get("note"):
        lines.append(f"- note: {report['note']}")
    lines += [
        "",
        f"| | {report['metric']} | cosine_pearson |",
        "|---|---|---|",
        f"| reference (PyTorch) | {_fmt(ref['metric_value'])} | {_fmt(ref['cosine_pearson'])} |",
        f"| candidate (ONNX) | {_fmt(cand['metric_value'])} | {_fmt(cand['cosine_pearson'])} |",
        f"| delta | {_fmt(report['delta'])} | {_fmt(cand['cosine_pearson'] - ref['cosine_pearson'])} |",
        "",
        "| parity | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in parity.items()]
    lines += ["", "| threshold | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in report["thresholds"].items()]
    if report["failures"]:
        lines += ["", "Failures:", *[f"- {f}" for f in report["failures"]]]
    lines += [
        "",
        f"![candidate vs reference pair scores]({scatter_png})",
        "",
        f"![per-text cosine]({hist_png})",
        "",
    ]
    return "\n".join(lines)


def write_report(reports_dir: Path, report: dict, reference_scores: np.ndarray, candidate_scores: np.ndarray,
                 per_text_cosine: np.ndarray) -> dict[str, Path]:
    stem = report_stem(report["variant"], report["dataset"])
    paths = {
        "json": reports_dir / f"{stem}.json",
        "md": reports_dir / f"{stem}.md",
        "scatter": reports_dir / f"{stem}-scatter.png",
        "histogram": reports_dir / f"{stem}-cosine.png",
    }
    title = f"{report['variant']} on {report['dataset']} ({report['n_pairs']} pairs)"
    _plot_pairs(paths["scatter"], reference_scores, candidate_scores, title)
    _plot_histogram(paths["histogram"], per_text_cosine, title)
    report["files"] = {k: p.name for k, p in paths.items()}
    write_json_atomic(paths["json"], report)
    paths["md"].write_text(render_markdown(report, paths["scatter"].name, paths["histogram"].name), encoding="utf-8")
    return paths


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False)
