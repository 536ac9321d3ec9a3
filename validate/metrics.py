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


def sts_metrics(pair_scores: np.ndarray, gold) -> dict[str, float]:
    """mteb's STS scores for cosine similarity: Spearman is the main score."""
    return {"cosine_spearman": spearman(pair_scores, gold), "cosine_pearson": pearson(pair_scores, gold)}


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
