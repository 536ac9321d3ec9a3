"""``qconv validate`` for embedding artifacts: ONNX variant vs PyTorch original on a pairs dataset."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from qconv.artifact import Artifact, now_iso
from qconv.console import console
from qconv.convert.specs import spec_for_instruction_template
from qconv.errors import GateFailed, QconvError
from qconv.runtime import Embedder, resolve_providers, truncate_dim

from . import metrics
from .datasets import dataset_spec, load_pairs
from .reference import reference_embeddings
from .report import to_json, write_report
from .thresholds import check, thresholds_for


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


def prompt_for(artifact: Artifact, instruction: str | None, default_instruction: str | None) -> str | None:
    """The prompt prefix both sides get: an instruction formatted with the model's template, if it has one."""
    chosen = default_instruction if instruction is None else instruction
    if not chosen:
        return None
    return spec_for_instruction_template(artifact.manifest["embedding"].get("instruction_template")).prompt_for(chosen)


def validate_embedding(artifact: Artifact | str | Path, dataset: str, *, variant: str = "model",
                       data_files: str | Path | None = None, split: str | None = None, limit: int | None = None,
                       reference: str | None = None, providers: str | list[str] | None = None,
                       batch_size: int = 32, instruction: str | None = None, dim: int | None = None,
                       min_cosine: float | None = None, min_cosine_mean: float | None = None,
                       max_abs_delta: float | None = None, offline: bool = False, note: str | None = None,
                       raise_on_fail: bool = True) -> dict:
    started = time.perf_counter()
    art = artifact if isinstance(artifact, Artifact) else Artifact(artifact)
    if art.task != "embedding":
        raise QconvError(f"{art.name} is a {art.task} artifact; dataset '{dataset}' needs an embedding model")
    spec = dataset_spec(dataset, kind="pairs")
    settings = art.manifest["embedding"]
    if dim is not None and not 1 <= dim <= settings["dimension"]:
        raise QconvError(f"--dim {dim} is out of range: the embedding size is {settings['dimension']}")
    if batch_size < 1:
        raise QconvError(f"--batch-size must be positive, got {batch_size}")
    art.variant_path(variant)
    provider_list = resolve_providers(providers)
    precision = art.variants[variant].get("precision", "fp32")
    thresholds = thresholds_for(precision, {"min_cosine": min_cosine, "min_cosine_mean": min_cosine_mean,
                                            "max_abs_delta": max_abs_delta})
    data = load_pairs(spec, data_files=data_files, split=split, limit=limit, offline=offline)
    prompt = prompt_for(art, instruction, spec.instruction)
    texts = list(dict.fromkeys(data.sentence1 + data.sentence2))
    position = {t: i for i, t in enumerate(texts)}
    left = np.array([position[t] for t in data.sentence1])
    right = np.array([position[t] for t in data.sentence2])

    with _progress() as progress:
        task = progress.add_task(f"ONNX {variant}", total=len(texts))
        embedder = Embedder(art, variant=variant, providers=provider_list)
        t0 = time.perf_counter()
        candidate = embedder.encode(texts, prompt=prompt or "", batch_size=batch_size,
                                    progress=lambda n: progress.advance(task, n))
        candidate_seconds = time.perf_counter() - t0
        task = progress.add_task("PyTorch reference", total=len(texts))
        reference_vectors, reference_info = reference_embeddings(
            art, texts, prompt=prompt, batch_size=batch_size, reference=reference,
            progress=lambda n: progress.advance(task, n))
    if dim is not None:
        candidate, reference_vectors = truncate_dim(candidate, dim), truncate_dim(reference_vectors, dim)

    ref_scores = metrics.cosine_pairs(reference_vectors[left], reference_vectors[right])
    cand_scores = metrics.cosine_pairs(candidate[left], candidate[right])
    ref_metrics = metrics.sts_metrics(ref_scores, data.scores)
    cand_metrics = metrics.sts_metrics(cand_scores, data.scores)
    parity = metrics.embedding_parity(candidate, reference_vectors)
    parity["pair_score_spearman"] = metrics.spearman(cand_scores, ref_scores)
    parity["pair_score_max_abs_diff"] = float(np.abs(cand_scores - ref_scores).max())
    delta = cand_metrics["cosine_spearman"] - ref_metrics["cosine_spearman"]
    failures = check(thresholds, cosine_min=parity["cosine_min"], cosine_mean=parity["cosine_mean"], delta=delta)
    if not parity["finite"]:
        failures.append("candidate embeddings contain NaN or Inf")
    report = {
        "dataset": spec.name,
        "dataset_description": spec.description,
        "hub_path": spec.hub_path,
        "revision": spec.revision,
        "split": data.split,
        "source": data.source,
        "location": data.location,
        "fingerprint": data.fingerprint,
        "n_pairs": len(data),
        "variant": variant,
        "precision": precision,
        "providers": provider_list,
        "metric": spec.main_metric,
        "prompt": prompt or "",
        "dim": dim,
        "reference": {**reference_info, "metric_value": ref_metrics["cosine_spearman"],
                      "cosine_pearson": ref_metrics["cosine_pearson"]},
        "candidate": {"metric_value": cand_metrics["cosine_spearman"],
                      "cosine_pearson": cand_metrics["cosine_pearson"],
                      "texts_per_second": round(len(texts) / max(candidate_seconds, 1e-9), 2)},
        "delta": delta,
        "parity": parity,
        "thresholds": thresholds,
        "passed": not failures,
        "failures": failures,
        "note": note,
        "created": now_iso(),
        "seconds": round(time.perf_counter() - started, 2),
    }
    paths = write_report(art.reports_dir(), report, ref_scores, cand_scores,
                         metrics.cosine_pairs(candidate, reference_vectors))
    summary = {k: report[k] for k in ("dataset", "split", "source", "n_pairs", "metric", "delta", "passed")}
    summary.update(reference=report["reference"]["metric_value"], candidate=report["candidate"]["metric_value"],
                   cosine_min=parity["cosine_min"], report=f"reports/{paths['json'].name}")
    art.manifest.setdefault("validation", {}).setdefault(variant, {})[spec.name] = summary
    art.add_stage({"stage": "validate", "variant": variant, "dataset": spec.name, "passed": report["passed"]})
    art.save()
    print_summary(report, paths["md"])
    if not report["passed"] and raise_on_fail:
        raise GateFailed(f"validation failed for {variant} on {spec.name}: {'; '.join(failures)} "
                         f"(report: {paths['json']})")
    return report


def print_summary(report: dict, md_path: Path) -> None:
    table = Table(title=f"{report['variant']} on {report['dataset']} ({report['source']}, {report['n_pairs']} pairs)")
    for col in ("", report["metric"], "parity cos min", "parity cos mean", "max abs diff"):
        table.add_column(col)
    p = report["parity"]
    table.add_row("reference (PyTorch)", f"{report['reference']['metric_value']:.6f}", "", "", "")
    table.add_row("candidate (ONNX)", f"{report['candidate']['metric_value']:.6f}", f"{p['cosine_min']:.7f}",
                  f"{p['cosine_mean']:.7f}", f"{p['max_abs_diff']:.2e}")
    table.add_row("delta", f"{report['delta']:+.2e}", "", "", "")
    console.print(table)
    verdict = "[green]PASSED[/]" if report["passed"] else f"[red]FAILED[/]: {'; '.join(report['failures'])}"
    console.print(f"{verdict} — report {md_path}")


__all__ = ["validate_embedding", "to_json"]
