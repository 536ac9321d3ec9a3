"""Reranker validation: an ONNX variant vs the original PyTorch model on MS MARCO-style queries."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from qconv.artifact import Artifact
from qconv.errors import QconvError
from qconv.reranking import Reranker
from qconv.runtime import DEFAULT_BATCH_TOKENS, resolve_providers

from . import metrics
from .datasets import load_rerank
from .reference_reranker import reference_scores
from .report import log_gap_histogram, scatter_figure
from .runner import (
    base_report,
    check_batching,
    finalize,
    note_truncated,
    open_for_validation,
    progress_bar,
    scored_results,
)

RANK_METRICS = ["mrr@10", "ndcg@10", "recall@10"]


def _mean_metrics(per_query: list[dict[str, float]]) -> dict[str, float]:
    return {m: float(np.mean([q[m] for q in per_query])) for m in RANK_METRICS}


def validate_reranker(
    artifact: Artifact | str | Path,
    dataset: str = "msmarco",
    *,
    variant: str = "model",
    data_files: str | Path | None = None,
    split: str | None = None,
    limit: int | None = None,
    max_candidates: int = 30,
    reference: str | None = None,
    providers: str | list[str] | None = None,
    batch_size: int = 8,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    instruction: str | None = None,
    max_abs_score_diff: float | None = None,
    min_top1_agreement: float | None = None,
    max_abs_delta: float | None = None,
    offline: bool = False,
    note: str | None = None,
    raise_on_fail: bool = True,
) -> dict:
    started = time.perf_counter()
    art, spec, precision, thresholds = open_for_validation(
        artifact,
        dataset,
        variant,
        {
            "max_abs_score_diff": max_abs_score_diff,
            "min_top1_agreement": min_top1_agreement,
            "max_abs_delta": max_abs_delta,
        },
    )
    check_batching(batch_size, batch_tokens)
    provider_list = resolve_providers(providers)
    data = load_rerank(
        spec, data_files=data_files, split=split, limit=limit, max_candidates=max_candidates, offline=offline
    )
    reranker = Reranker(art, variant=variant, providers=provider_list)
    chosen_instruction = instruction or art.manifest["reranker"]["instruction"]
    sequences, bounds = [], []
    truncated_before = reranker.encoder.truncated
    for q in data.queries:
        start = len(sequences)
        sequences += reranker.encoder.encode_pairs(q.query, q.documents, chosen_instruction)
        bounds.append((start, len(sequences)))
    truncated = reranker.encoder.truncated - truncated_before
    note_truncated(truncated, len(sequences), "pairs", reranker.settings["max_length"])

    with progress_bar() as progress:
        task = progress.add_task(f"ONNX {variant}", total=len(sequences))
        t0 = time.perf_counter()
        candidate = reranker.score_ids(
            sequences, batch_size=batch_size, batch_tokens=batch_tokens, progress=lambda n: progress.advance(task, n)
        )
        candidate_seconds = time.perf_counter() - t0
        task = progress.add_task("PyTorch reference", total=len(sequences))
        ref, reference_info = reference_scores(
            art,
            sequences,
            batch_size=batch_size,
            batch_tokens=batch_tokens,
            reference=reference,
            progress=lambda n: progress.advance(task, n),
        )

    ref_by_query = [ref[a:b] for a, b in bounds]
    cand_by_query = [candidate[a:b] for a, b in bounds]
    judged = [i for i, q in enumerate(data.queries) if any(q.relevant)]
    if not judged:
        raise QconvError(f"dataset {data.location}: no query has a positive passage, so no ranking metric is defined")
    ref_metrics = _mean_metrics([metrics.rank_metrics(ref_by_query[i], data.queries[i].relevant) for i in judged])
    cand_metrics = _mean_metrics([metrics.rank_metrics(cand_by_query[i], data.queries[i].relevant) for i in judged])
    parity = metrics.rerank_parity(ref_by_query, cand_by_query)
    report = base_report(spec, data, variant, precision, provider_list)
    report.update(
        {
            "n_queries": len(data),
            "n_queries_with_positives": len(judged),
            "n_pairs": len(sequences),
            "max_candidates": max_candidates,
            "max_length": reranker.settings["max_length"],
            "truncated_pairs": truncated,
            "size": f"{len(data)} queries, {len(sequences)} pairs",
            "instruction": chosen_instruction,
            "settings": {
                "instruction": chosen_instruction,
                "max_candidates": max_candidates,
                "format": art.manifest["reranker"]["format"],
            },
            "metrics": RANK_METRICS,
            **scored_results(
                spec.main_metric,
                ref_metrics,
                cand_metrics,
                reference_info,
                {"pairs_per_second": round(len(sequences) / max(candidate_seconds, 1e-9), 2)},
            ),
            "parity": parity,
            "thresholds": thresholds,
            "note": note,
            "seconds": round(time.perf_counter() - started, 2),
        }
    )
    figures = [
        scatter_figure(ref, candidate, "P(yes)"),
        log_gap_histogram(
            np.abs(candidate - ref),
            "log10 |P(yes) candidate - reference| per pair",
            "diff",
            "per-pair score difference",
        ),
    ]
    return finalize(
        art,
        report,
        figures,
        raise_on_fail=raise_on_fail,
        extra_failures=[] if parity["finite"] else ["candidate scores contain NaN or Inf"],
    )
