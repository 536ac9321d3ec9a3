"""Validation statistics without a model: trec_eval ranking metrics (ties, grades, thresholds), the order
independence of every rank metric, and the paired bootstrap intervals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qconv.validate import metrics
from qconv.validate.datasets import dataset_spec, load_rerank


def _log2(x: float) -> float:
    return float(np.log2(x))


# Two queries. In "a", d1 (grade 3) ties d2 (grade 0) and d3 (grade 2) ties d4 (grade 1): trec_eval puts the
# larger document id first, so the ranking is d2, d1, d4, d3, d5. In "b" eleven passages all tie and the only
# relevant one, b00, has the smallest id: it ranks 11th, outside the top 10.
QUERY_A = {"ids": ["d1", "d2", "d3", "d4", "d5"], "grades": [3, 0, 2, 1, 0], "scores": [0.9, 0.9, 0.5, 0.5, 0.1]}
QUERY_B = {"ids": [f"b{i:02d}" for i in range(11)], "grades": [2] + [0] * 10, "scores": [0.5] * 11}


def _metrics(queries, threshold):
    return metrics.rank_metrics(
        [np.array(q["scores"]) for q in queries],
        [q["ids"] for q in queries],
        [q["grades"] for q in queries],
        threshold=threshold,
    )


def test_ties_and_grades_give_hand_computed_trec_eval_numbers():
    a, b = _metrics([QUERY_A, QUERY_B], threshold=2)
    # The parity figures (top-1 agreement, identical top 10) rank the same way trec_eval does.
    order = metrics.ranking(QUERY_A["scores"], QUERY_A["ids"])
    assert [QUERY_A["ids"][i] for i in order] == ["d2", "d1", "d4", "d3", "d5"]
    # trec_eval's NDCG: gain = grade, discount log2(rank + 1); ideal order 3, 2, 1.
    dcg = 3 / _log2(3) + 1 / _log2(4) + 2 / _log2(5)
    ideal = 3 / _log2(2) + 2 / _log2(3) + 1 / _log2(4)
    assert a["ndcg@10"] == pytest.approx(dcg / ideal, abs=1e-12)
    assert a["mrr@10"] == 0.5  # d1 (grade 3) is second: d2 wins the tie by id
    assert a["recall@10"] == 1.0
    assert b == {"mrr@10": 0.0, "ndcg@10": 0.0, "recall@10": 0.0}  # trec_eval's recip_rank is 1/11: cut at 10
    # Grade 1 counts from threshold 1 on (MS MARCO dev's rule); NDCG does not depend on the threshold.
    (a1,) = _metrics([QUERY_A], threshold=1)
    assert a1["mrr@10"] == 0.5 and a1["ndcg@10"] == a["ndcg@10"]
    (a3,) = _metrics([QUERY_A], threshold=3)
    assert a3["recall@10"] == 1.0 and a3["mrr@10"] == 0.5


def test_rank_metrics_are_the_librarys_numbers():
    """Against trec_eval itself (pytrec_eval), queried directly for every measure."""
    import pytrec_eval

    rng = np.random.default_rng(3)
    queries = []
    for q in range(6):
        n = int(rng.integers(3, 15))
        scores = np.round(rng.random(n), 1)  # one decimal: plenty of ties
        grades = rng.integers(0, 4, n).tolist()
        queries.append({"ids": [f"q{q}d{i}" for i in range(n)], "grades": grades, "scores": scores})
    ours = _metrics(queries, threshold=2)
    qrels = {str(i): dict(zip(q["ids"], map(int, q["grades"]))) for i, q in enumerate(queries)}
    run = {str(i): dict(zip(q["ids"], map(float, q["scores"]))) for i, q in enumerate(queries)}
    theirs = pytrec_eval.RelevanceEvaluator(
        qrels, {"recip_rank", "success.10", "ndcg_cut.10", "recall.10"}, relevance_level=2
    ).evaluate(run)
    for i, mine in enumerate(ours):
        t = theirs[str(i)]
        assert mine["ndcg@10"] == t["ndcg_cut_10"] and mine["recall@10"] == t["recall_10"]
        assert mine["mrr@10"] == (t["recip_rank"] if t["success_10"] else 0.0)


def test_shuffling_the_candidates_changes_no_metric():
    rng = np.random.default_rng(0)
    n = 25
    ids = [f"p{i}" for i in range(n)]
    grades = rng.integers(0, 4, n)
    reference = np.round(rng.random(n), 1)  # ties
    candidate = np.round(reference + rng.normal(0, 0.05, n), 1)
    base = _metrics([{"ids": ids, "grades": grades, "scores": candidate}], threshold=2)
    parity = metrics.query_parity([reference], [candidate], [ids])
    order = [ids[i] for i in metrics.ranking(candidate, ids)]
    for seed in range(5):
        p = np.random.default_rng(seed + 10).permutation(n)
        shuffled_ids = [ids[i] for i in p]
        assert _metrics([{"ids": shuffled_ids, "grades": grades[p], "scores": candidate[p]}], threshold=2) == base
        assert metrics.query_parity([reference[p]], [candidate[p]], [shuffled_ids]) == parity
        assert [shuffled_ids[i] for i in metrics.ranking(candidate[p], shuffled_ids)] == order


def test_all_tied_scores_no_longer_favour_the_positives_listed_first():
    """The bug the issue measured: a scorer whose scores all tie got MRR@10 1.0 because positives came first."""
    ids = ["a", "b", "c", "d"]  # the positive, listed first, has the smallest id: trec_eval ranks it last
    (m,) = _metrics([{"ids": ids, "grades": [2, 0, 0, 0], "scores": [0.5] * 4}], threshold=2)
    assert m["mrr@10"] == 0.25


def test_bundled_msmarco_sample_carries_grades_and_ids():
    data = load_rerank(dataset_spec("msmarco"), limit=5, offline=True)
    assert data.source == "bundled-sample" and data.graded and data.relevance_threshold == 2
    assert not data.full_split
    q = data.queries[0]
    assert set(q.grades) <= {0, 2, 3} and 3 in q.grades and len(set(q.doc_ids)) == len(q.doc_ids)
    assert "TREC-DL" in data.candidates and "first 30 per query" in data.candidates


def test_binary_labels_and_hashed_ids_without_the_fields(tmp_path):
    rows = [
        {
            "query_id": "1",
            "query": "q",
            "positive_passages": [{"text": "yes"}],
            "negative_passages": [{"text": "no"}, {"text": "nope"}, {"text": "no"}],  # "no" twice: kept once
        }
    ]
    path = tmp_path / "rerank.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    data = load_rerank(dataset_spec("msmarco"), data_files=path)
    (q,) = data.queries
    assert q.grades == [1, 0, 0] and not data.graded and data.relevance_threshold == 1
    assert data.duplicates_dropped == 1 and all(d.startswith("sha256:") for d in q.doc_ids)


def test_bootstrap_of_an_identical_candidate_is_exactly_zero():
    rng = np.random.default_rng(1)
    reference = rng.random(200)
    gold = rng.random(200)
    point = {"cosine_spearman": 0.0, "cosine_pearson": 0.0}
    intervals = metrics.sts_delta_intervals(reference.copy(), reference, gold, 1000, point)
    from qconv.validate.report import format_interval

    for interval in intervals.values():
        assert (interval["low"], interval["high"]) == (0.0, 0.0) and interval["contains_zero"]
        assert format_interval(interval["delta"], interval) == "+0.0000 [+0.0000, +0.0000]"  # no "-0.0000"
    per_query = {"mrr@10": rng.random(40).tolist(), "ndcg@10": rng.random(40).tolist()}
    for interval in metrics.mean_delta_intervals(per_query, dict(per_query), 1000).values():
        assert (interval["low"], interval["high"], interval["delta"]) == (0.0, 0.0, 0.0)


def test_bootstrap_is_seeded_and_brackets_a_real_difference():
    rng = np.random.default_rng(2)
    gold = rng.random(300)
    reference = gold + rng.normal(0, 0.1, 300)
    candidate = gold + rng.normal(0, 0.5, 300)  # much noisier: clearly worse
    point = {
        "cosine_spearman": metrics.spearman(candidate, gold) - metrics.spearman(reference, gold),
        "cosine_pearson": metrics.pearson(candidate, gold) - metrics.pearson(reference, gold),
    }
    first = metrics.sts_delta_intervals(candidate, reference, gold, 500, point)
    assert first == metrics.sts_delta_intervals(candidate, reference, gold, 500, point)
    for name, interval in first.items():
        assert interval["low"] <= interval["delta"] <= interval["high"] < 0 and not interval["contains_zero"]


def test_interval_format():
    from qconv.validate.report import format_interval

    assert format_interval(-0.0012, {"low": -0.0031, "high": 0.0006}) == "-0.0012 [-0.0031, +0.0006]"
    assert format_interval(0.0, [0.0, 0.0]) == "+0.0000 [+0.0000, +0.0000]"
    assert format_interval(2e-7, None) == "+2.0e-07"
    assert format_interval(-0.0044, [-0.0097, -1.8e-5]) == "-0.0044 [-0.0097, -0.0000]"
    assert format_interval(2e-7, [-1e-6, 3e-6]) == "+2.0e-07 [-1.0e-06, +3.0e-06]"
