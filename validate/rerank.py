"""Reranker validation: an ONNX variant vs the original PyTorch model on MS MARCO-style queries."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from qconv.artifact import Artifact
from qconv.errors import QconvError
from qconv.runtime.embedder import DEFAULT_BATCH_TOKENS, resolve_providers
from qconv.runtime.reranker import Reranker
from qconv.runtime.template import resolve_instruction

from . import metrics
from .datasets import load_rerank
from .reference_reranker import reference_scores
from .report import log_gap_histogram, scatter_figure
from .runner import (
    base_report,
    check_batching,
    check_bootstrap,
    finalize,
    instruction_rule,
    note_truncated,
    open_for_validation,
    progress_bar,
    scored_results,
)

RANK_METRICS = ["mrr@10", "ndcg@10", "recall@10"]


def _by_metric(per_query: list[dict[str, float]]) -> dict[str, list[float]]:
    return {m: [q[m] for q in per_query] for m in RANK_METRICS}


def _mean_metrics(per_query: list[dict[str, float]]) -> dict[str, float]:
    return {m: float(np.mean(values)) for m, values in _by_metric(per_query).items()}


def _worst_queries(data, judged: list[int], per_query: list[dict], ref_q: list[dict], cand_q: list[dict]) -> list:
    """The 5 queries where the candidate's ranking agrees least with the reference's (lowest Spearman)."""
    rows = []
    for i in metrics.worst([per_query[i]["spearman"] for i in range(len(per_query))]):
        q = data.queries[i]
        row = {"query_id": q.query_id, "query": q.query, "n_candidates": len(q.documents), **per_query[i]}
        if i in judged:
            at = judged.index(i)
            row.update({f"reference_{m}": ref_q[at][m] for m in ("mrr@10", "ndcg@10")})
            row.update({f"candidate_{m}": cand_q[at][m] for m in ("mrr@10", "ndcg@10")})
        rows.append(row)
    return rows


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
    max_score_diff: float | None = None,
    min_top1: float | None = None,
    max_delta: float | None = None,
    bootstrap: int = metrics.BOOTSTRAP_DEFAULT,
    offline: bool = False,
    note: str | None = None,
    raise_on_fail: bool = True,
) -> dict:
    """``instruction``: None = the artifact's default, '' = none (the template's instruction slot left empty)."""
    started = time.perf_counter()
    art, spec, precision, thresholds = open_for_validation(
        artifact,
        dataset,
        variant,
        {
            "max_score_diff": max_score_diff,
            "min_top1": min_top1,
            "max_delta": max_delta,
        },
    )
    check_batching(batch_size, batch_tokens)
    check_bootstrap(bootstrap)
    provider_list = resolve_providers(providers)
    data = load_rerank(
        spec, data_files=data_files, split=split, limit=limit, max_candidates=max_candidates, offline=offline
    )
    reranker = Reranker(art, variant=variant, providers=provider_list)
    chosen_instruction = resolve_instruction(instruction, art.manifest["reranker"]["instruction"])
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
    threshold = data.relevance_threshold
    judged = [i for i, q in enumerate(data.queries) if any(q.relevant(threshold))]
    if not judged:
        raise QconvError(
            f"dataset {data.location}: no query has a passage of relevance >= {threshold}, "
            "so no ranking metric is defined"
        )

    def per_query(scores: list[np.ndarray]) -> list[dict[str, float]]:
        chosen = [data.queries[i] for i in judged]
        return metrics.rank_metrics(
            [scores[i] for i in judged], [q.doc_ids for q in chosen], [q.grades for q in chosen], threshold=threshold
        )

    ref_per_query, cand_per_query = per_query(ref_by_query), per_query(cand_by_query)
    ref_metrics, cand_metrics = _mean_metrics(ref_per_query), _mean_metrics(cand_per_query)
    doc_ids = [q.doc_ids for q in data.queries]
    parity_by_query = metrics.query_parity(ref_by_query, cand_by_query, doc_ids)
    parity = metrics.rerank_parity(parity_by_query, cand_by_query)
    intervals = (
        metrics.mean_delta_intervals(_by_metric(cand_per_query), _by_metric(ref_per_query), bootstrap)
        if bootstrap
        else {}
    )
    sizes = [len(q.documents) for q in data.queries]
    report = base_report(spec, data, variant, precision, provider_list, art)
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
            "instruction_rule": instruction_rule(instruction),
            "relevance": {
                "graded": data.graded,
                "threshold": threshold,
                "rule": f"NDCG@10 gains are the grades; MRR@10 and Recall@10 count grade >= {threshold} as relevant",
                "library": "trec_eval (pytrec-eval-terrier): ties by descending document id",
            },
            "candidates": {
                "definition": data.candidates,
                "per_query_min": min(sizes),
                "per_query_mean": round(float(np.mean(sizes)), 2),
                "per_query_max": max(sizes),
                "queries_without_nonrelevant": sum(all(q.relevant(threshold)) for q in data.queries),
                "duplicates_dropped": data.duplicates_dropped,
            },
            "settings": {
                "instruction": chosen_instruction,
                "max_candidates": max_candidates,
                "relevance_threshold": threshold,
                "format": art.manifest["reranker"]["format"],
            },
            "metrics": RANK_METRICS,
            **scored_results(
                spec.main_metric,
                ref_metrics,
                cand_metrics,
                reference_info,
                {"pairs_per_second": round(len(sequences) / max(candidate_seconds, 1e-9), 2)},
                intervals,
                bootstrap,
                "queries",
            ),
            "parity": parity,
            "worst": {
                "by": "per-query Spearman between candidate and reference scores (lowest first)",
                "items": _worst_queries(data, judged, parity_by_query, ref_per_query, cand_per_query),
            },
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
        request=dict(
            limit=len(data),
            max_candidates=max_candidates,
            batch_size=batch_size,
            instruction=instruction,
            bootstrap=bootstrap,
            batch_tokens=batch_tokens,
        ),
    )
