"""Small numeric helpers shared by export parity, the recovery ladder and validation."""

from __future__ import annotations

import numpy as np

_ZERO = 1e-12


def normalize_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _ZERO)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two (n, d) arrays, in float64. Two all-zero rows count as identical (1.0):
    a zero vector can be a legitimate output (a zero embedding row), and must not read as a mismatch."""
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    cos = (normalize_rows(a) * normalize_rows(b)).sum(axis=1)
    both_zero = (np.linalg.norm(a, axis=1) < _ZERO) & (np.linalg.norm(b, axis=1) < _ZERO)
    return np.where(both_zero, 1.0, cos)


def _corr(name: str, x, y) -> float:
    from scipy import stats  # lazily: the runtime install has no scipy

    if np.std(x) == 0 or np.std(y) == 0:
        return float("nan")  # a constant vector has no defined correlation; NaN fails any gate
    return float(getattr(stats, name)(x, y)[0])


def spearman(x, y) -> float:
    return _corr("spearmanr", np.asarray(x), np.asarray(y))


def pearson(x, y) -> float:
    return _corr("pearsonr", np.asarray(x), np.asarray(y))


def ranking(scores, doc_ids) -> np.ndarray:
    """Indices by descending score, ties by descending document id: trec_eval's order (the tests check it against
    trec_eval), so the rank of a tied passage never depends on where it sat in the candidate list."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(doc_ids) != len(scores):
        raise ValueError(f"{len(scores)} scores for {len(doc_ids)} document ids")
    # lexsort's last key is the primary one: score descending, then the id's rank (ascending order) descending.
    id_rank = np.argsort(np.argsort(np.asarray(doc_ids, dtype=object), kind="stable"), kind="stable")
    return np.lexsort((-id_rank, -scores))


def query_parity(reference: list[np.ndarray], candidate: list[np.ndarray], doc_ids: list[list[str]], k: int = 10):
    """Per-query agreement between two scorers over the same candidates: one dict per query."""
    rows = []
    for r, c, ids in zip(reference, candidate, doc_ids):
        ref_order, cand_order = ranking(r, ids), ranking(c, ids)
        rows.append(
            {
                "spearman": spearman(c, r) if len(r) > 1 else float("nan"),
                "max_abs_diff": float(np.abs(np.asarray(c, dtype=np.float64) - r).max()),
                "top1_agrees": bool(ref_order[0] == cand_order[0]),
                f"identical_top{k}": bool(np.array_equal(ref_order[:k], cand_order[:k])),
            }
        )
    return rows


def rerank_parity(per_query: list[dict], candidate: list[np.ndarray], k: int = 10) -> dict[str, float]:
    """The per-query agreement (``query_parity``) summarised over queries."""
    spearmans = [q["spearman"] for q in per_query if not np.isnan(q["spearman"])]
    return {
        "n_scores": int(sum(len(c) for c in candidate)),
        "max_abs_diff": float(max(q["max_abs_diff"] for q in per_query)),
        "mean_query_spearman": float(np.mean(spearmans)) if spearmans else float("nan"),
        "top1_agreement": float(np.mean([q["top1_agrees"] for q in per_query])),
        f"identical_top{k}_fraction": float(np.mean([q[f"identical_top{k}"] for q in per_query])),
        "finite": bool(all(np.isfinite(c).all() for c in candidate)),
    }
