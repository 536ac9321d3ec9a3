"""Parity of a rewritten graph with the graph it was made from, on synthetic token batches.

Both graphs get the same inputs: batch 1 at each length, and batches of three sequences of different
lengths (longest, a third of it, 1) padded on the left and on the right. Every output is compared; rows of
per-token outputs are compared only where the attention mask is 1 (padding positions are nobody's result),
vector rows by cosine, one-value rows (a reranker's logit) by absolute difference relative to the largest
source value. No tokenizer and no torch: this checks the rewrite, not the export.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qconv.runtime.template import pad_batch

DEFAULT_LENGTHS = (1, 5, 37, 128)


@dataclass(frozen=True)
class ParityGate:
    min_cosine: float = 0.99999
    max_rel_scalar_diff: float = 1e-4


def token_batches(lengths, *, vocab: int, pad_id: int = 0, seed: int = 0):
    """(label, input_ids, attention_mask) for batch 1 at each length and mixed batches padded both ways."""
    rng = np.random.default_rng(seed)
    high = max(2, min(vocab, 150_000))
    low = min(1000, high - 1)

    def ids(n):
        return rng.integers(low, high, size=n, dtype=np.int64)

    for n in lengths:
        yield f"batch1/len{n}", ids(n)[None, :], np.ones((1, n), dtype=np.int64)
    for longest in lengths:
        if longest < 2:
            continue
        rows = [ids(n) for n in (longest, max(1, longest // 3), 1)]
        for side in ("left", "right"):
            input_ids, mask = pad_batch(rows, pad_id, side)
            yield f"batch{len(rows)}/{side}/len{longest}", input_ids, mask


def _rows(output: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Rows to compare: per-token outputs at attended positions, per-sequence outputs whole."""
    batch, seq = mask.shape
    if output.ndim >= 3 and output.shape[:2] == (batch, seq):
        return output[mask.astype(bool)].reshape(-1, int(np.prod(output.shape[2:])))
    return output.reshape(batch, -1)


def compare_sessions(new_path: Path, old_path: Path, lengths=DEFAULT_LENGTHS, *, vocab: int, threads=None) -> dict:
    """Run both graphs on the same batches; cosine_min over vector rows, max relative diff over scalar rows."""
    from qconv.numerics import cosine_rows
    from qconv.runtime.embedder import open_session

    providers = ["CPUExecutionProvider"]
    new, old = open_session(new_path, providers, threads), open_session(old_path, providers, threads)
    names = [o.name for o in old.get_outputs()]
    inputs = {i.name for i in old.get_inputs()}
    cos_min, cos_sum, cos_n = 1.0, 0.0, 0
    max_abs, max_rel, scalar_n = 0.0, 0.0, 0
    finite, worst = True, {}
    runs = 0
    for label, input_ids, mask in token_batches(lengths, vocab=vocab):
        feeds = {k: v for k, v in {"input_ids": input_ids, "attention_mask": mask}.items() if k in inputs}
        got, want = new.run(names, feeds), old.run(names, feeds)
        runs += 1
        for name, a, b in zip(names, got, want):
            finite = finite and bool(np.isfinite(_rows(a, mask)).all())
            ra, rb = _rows(a.astype(np.float64), mask), _rows(b.astype(np.float64), mask)
            diff = float(np.abs(ra - rb).max()) if ra.size else 0.0
            max_abs = max(max_abs, diff)
            if ra.shape[1] == 1:
                rel = diff / max(float(np.abs(rb).max()), 1e-6)
                if rel >= max_rel:
                    max_rel, worst["scalar"] = rel, f"{label}:{name}"
                scalar_n += ra.shape[0]
                continue
            cos = cosine_rows(ra, rb)
            if float(cos.min()) <= cos_min:
                cos_min, worst["cosine"] = float(cos.min()), f"{label}:{name}"
            cos_sum += float(cos.sum())
            cos_n += cos.size
    return {
        "runs": runs,
        "batches": "batch 1 at each length; 3 sequences (longest, longest/3, 1) padded left and right",
        "lengths": list(lengths),
        "outputs": names,
        "cosine_min": cos_min if cos_n else None,  # None: no vector outputs (a reranker's logit)
        "cosine_mean": cos_sum / cos_n if cos_n else None,
        "worst": worst,  # the batch (and output) of the lowest cosine / largest relative difference
        "max_abs_diff": max_abs,
        "max_rel_scalar_diff": max_rel if scalar_n else None,  # None: no one-value outputs
        "finite": finite,
    }


def passes(result: dict, gate: ParityGate) -> bool:
    cosine, scalar = result["cosine_min"], result["max_rel_scalar_diff"]
    return bool(
        result["finite"]
        and (cosine is None or cosine >= gate.min_cosine)
        and (scalar is None or scalar <= gate.max_rel_scalar_diff)
    )
