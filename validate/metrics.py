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
