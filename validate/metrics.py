"""Task and parity metrics. Pure numpy/scipy: no model code here."""

from __future__ import annotations

import numpy as np
from scipy import stats

# The rank agreement helpers live in qconv.numerics: the quantize stage's recovery ladder reads them too.
from qconv.numerics import cosine_rows as cosine_pairs
from qconv.numerics import pearson, query_parity, ranking, rerank_parity, spearman

__all__ = ["cosine_pairs", "pearson", "query_parity", "ranking", "rerank_parity", "spearman"]


# Pairs of identical texts have cosine 1 up to ~1e-16 of rounding, and that noise, not the model, would
# order them: on the STS12 sample (20 such pairs) it moved Spearman by 1.6e-4 between two runs that
# agree to 2e-7 per embedding. Rounding to 1e-6 makes them tie, as they should; it is far below any
# difference between distinct pairs that matters to a rank metric.
SCORE_DECIMALS = 6


def sts_metrics(pair_scores: np.ndarray, gold) -> dict[str, float]:
    """mteb's STS scores for cosine similarity: Spearman is the main score."""
    scores = np.round(np.asarray(pair_scores, dtype=np.float64), SCORE_DECIMALS)
    return {"cosine_spearman": spearman(scores, gold), "cosine_pearson": pearson(scores, gold)}


def embedding_parity(candidate: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """How closely each candidate embedding matches its reference (per text)."""
    per_text = cosine_pairs(candidate, reference)
    return {
        "n_texts": int(len(per_text)),
        "cosine_min": float(per_text.min()),
        "cosine_mean": float(per_text.mean()),
        "cosine_p01": float(np.percentile(per_text, 1)),
        "max_abs_diff": float(np.abs(candidate.astype(np.float64) - reference).max()),
        "finite": bool(np.isfinite(candidate).all()),
    }


def rank_metrics(
    runs: list[np.ndarray], doc_ids: list[list[str]], grades: list[list[int]], *, threshold: int, k: int = 10
) -> list[dict[str, float]]:
    """MRR@k, NDCG@k and Recall@k for every query, computed by trec_eval (pytrec_eval).

    NDCG@k takes the grades as gains (trec_eval's ``ndcg_cut``, which ignores the relevance level); MRR@k and
    Recall@k count a passage as relevant when its grade is >= ``threshold`` (trec_eval's ``-l``). trec_eval has
    no MRR cut-off: MRR@k is its ``recip_rank`` where ``success_k`` (a relevant passage in the top k) holds, and 0
    otherwise, so both come from the same trec_eval ranking. Ties are broken the way trec_eval breaks them.
    """
    import pytrec_eval

    qrels = {str(q): {d: int(g) for d, g in zip(ids, gs)} for q, (ids, gs) in enumerate(zip(doc_ids, grades))}
    run = {str(q): {d: float(s) for d, s in zip(ids, scores)} for q, (ids, scores) in enumerate(zip(doc_ids, runs))}
    measures = {"recip_rank", f"success.{k}", f"ndcg_cut.{k}", f"recall.{k}"}
    found = pytrec_eval.RelevanceEvaluator(qrels, measures, relevance_level=int(threshold)).evaluate(run)
    results = []
    for q in range(len(runs)):
        values = found[str(q)]
        results.append(
            {
                f"mrr@{k}": values["recip_rank"] if values[f"success_{k}"] > 0 else 0.0,
                f"ndcg@{k}": values[f"ndcg_cut_{k}"],
                f"recall@{k}": values[f"recall_{k}"],
            }
        )
    return results


def worst(values, n: int = 5, *, highest: bool = False) -> list[int]:
    """Indices of the ``n`` worst values (lowest, or ``highest``); NaN counts as the worst of all."""
    values = np.asarray(values, dtype=np.float64)
    key = np.where(np.isnan(values), -np.inf, -values if highest else values)
    return [int(i) for i in np.argsort(key, kind="stable")[:n]]


# Paired bootstrap of a delta: resample items (pairs or queries) with replacement, the same indices for the
# reference and the candidate, and take the 2.5th and 97.5th percentiles of the resampled deltas.
BOOTSTRAP_SEED = 0
BOOTSTRAP_CONFIDENCE = 0.95
BOOTSTRAP_DEFAULT = 1000


def _rank_rows(x: np.ndarray) -> np.ndarray:
    return stats.rankdata(x, axis=-1)  # ties get their average rank, as in scipy.stats.spearmanr


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation along the last axis (NaN where either side is constant)."""
    x = x - x.mean(axis=-1, keepdims=True)
    y = y - y.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (x * y).sum(axis=-1) / np.sqrt((x * x).sum(axis=-1) * (y * y).sum(axis=-1))


def _correlation_delta(correlation: str):
    def statistic(candidate, reference, gold, axis=-1):
        if correlation == "cosine_spearman":
            candidate, reference, gold = _rank_rows(candidate), _rank_rows(reference), _rank_rows(gold)
        return _pearson_rows(candidate, gold) - _pearson_rows(reference, gold)

    return statistic


def _mean_delta(candidate, reference, axis=-1):
    return candidate.mean(axis=axis) - reference.mean(axis=axis)


MIN_BOOTSTRAP_SAMPLES = 2  # one pair or query cannot be resampled into a distribution


def paired_interval(statistic, samples: tuple, n_resamples: int, point: float) -> dict:
    """The percentile bootstrap interval of ``statistic`` over paired ``samples`` (scipy.stats.bootstrap)."""
    result = stats.bootstrap(
        samples,
        statistic,
        paired=True,
        vectorized=True,
        n_resamples=n_resamples,
        confidence_level=BOOTSTRAP_CONFIDENCE,
        method="percentile",
        batch=100,  # resamples per vectorized call: bounds memory on 10k-pair datasets
        rng=np.random.default_rng(BOOTSTRAP_SEED),
    )
    # + 0.0 turns a -0.0 percentile into 0.0, so an identical candidate reads [+0.0000, +0.0000].
    low, high = float(result.confidence_interval.low) + 0.0, float(result.confidence_interval.high) + 0.0
    return {"delta": float(point), "low": low, "high": high, "contains_zero": bool(low <= 0.0 <= high)}


def sts_delta_intervals(candidate_scores, reference_scores, gold, n_resamples: int, point: dict) -> dict:
    """Bootstrap intervals of the Spearman and Pearson deltas, resampling pairs."""
    samples = tuple(
        np.round(np.asarray(v, dtype=np.float64), SCORE_DECIMALS) for v in (candidate_scores, reference_scores)
    ) + (np.asarray(gold, dtype=np.float64),)
    if len(samples[0]) < MIN_BOOTSTRAP_SAMPLES:
        return {}
    return {m: paired_interval(_correlation_delta(m), samples, n_resamples, point[m]) for m in point}


def mean_delta_intervals(candidate: dict, reference: dict, n_resamples: int) -> dict:
    """Bootstrap intervals of per-query-mean deltas (MRR@10, NDCG@10, ...), resampling queries."""
    intervals = {}
    if any(len(v) < MIN_BOOTSTRAP_SAMPLES for v in candidate.values()):
        return intervals
    for metric in candidate:
        cand, ref = np.asarray(candidate[metric], dtype=np.float64), np.asarray(reference[metric], dtype=np.float64)
        intervals[metric] = paired_interval(_mean_delta, (cand, ref), n_resamples, cand.mean() - ref.mean())
    return intervals
