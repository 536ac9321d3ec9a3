"""Task and parity metrics. Pure numpy/scipy: no model code here."""

from __future__ import annotations

import numpy as np
from scipy import stats

from qconv.numerics import cosine_rows as cosine_pairs


def _corr(fn, x, y) -> float:
    if np.std(x) == 0 or np.std(y) == 0:
        return float("nan")  # a constant vector has no defined correlation; NaN fails any gate
    return float(fn(x, y)[0])


def spearman(x, y) -> float:
    return _corr(stats.spearmanr, np.asarray(x), np.asarray(y))


def pearson(x, y) -> float:
    return _corr(stats.pearsonr, np.asarray(x), np.asarray(y))


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


def ranking(scores: np.ndarray) -> np.ndarray:
    """Indices by descending score; ties keep the given order (stable)."""
    return np.argsort(-np.asarray(scores), kind="stable")


def rank_metrics(scores: np.ndarray, relevant: np.ndarray, k: int = 10) -> dict[str, float]:
    """MRR@k, NDCG@k (binary gains) and Recall@k for one query."""
    relevant = np.asarray(relevant, dtype=bool)
    top = ranking(scores)[:k]
    hits = relevant[top]
    first = np.flatnonzero(hits)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = discounts[: min(int(relevant.sum()), k)].sum()
    return {
        f"mrr@{k}": float(1.0 / (first[0] + 1)) if first.size else 0.0,
        f"ndcg@{k}": float((hits * discounts[: len(hits)]).sum() / ideal) if ideal > 0 else 0.0,
        f"recall@{k}": float(hits.sum() / relevant.sum()) if relevant.any() else 0.0,
    }


def rerank_parity(reference: list[np.ndarray], candidate: list[np.ndarray], k: int = 10) -> dict[str, float]:
    """Per-query agreement between two scorers over the same candidates."""
    spearmans = [spearman(c, r) for c, r in zip(candidate, reference) if len(r) > 1]
    spearmans = [s for s in spearmans if not np.isnan(s)]
    return {
        "n_scores": int(sum(len(r) for r in reference)),
        "max_abs_diff": float(max(np.abs(c - r).max() for c, r in zip(candidate, reference))),
        "mean_query_spearman": float(np.mean(spearmans)) if spearmans else float("nan"),
        "top1_agreement": float(np.mean([ranking(c)[0] == ranking(r)[0] for c, r in zip(candidate, reference)])),
        f"identical_top{k}_fraction": float(
            np.mean([np.array_equal(ranking(c)[:k], ranking(r)[:k]) for c, r in zip(candidate, reference)])
        ),
        "finite": bool(all(np.isfinite(c).all() for c in candidate)),
    }
