"""Export-time parity: the ONNX graph against the PyTorch module on built-in sentences.

Run under right padding, left padding and batch 1, so a pooling or mask bug cannot hide.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qconv.errors import QconvError
from qconv.numerics import cosine_rows

PARITY_TEXTS: tuple[str, ...] = (
    "What is the capital of China?",
    "Explain gravity",
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other. It gives weight to physical objects "
    "and is responsible for the movement of planets around the sun. " * 3,
    "如何提高借款额度",
    "为什么我的全部还完之后就没有额度啦？",
    "",
    "a",
    "Ωμέγα, русский, 日本語, emoji 🤗 and code: print('hi')",
)


@dataclass(frozen=True)
class ParityThresholds:
    min_cosine: float = 0.99999
    # On embeddings scaled to unit max magnitude, so unnormalised outputs are judged alike.
    max_rel_abs_diff: float = 1e-4


def embedding_reference(module, tokenizer, max_length: int) -> list[dict]:
    """The PyTorch outputs of every parity run. Computed before the ONNX session opens, so the caller can
    free the PyTorch model first: export memory peaks at one copy of the weights, not two."""
    import torch

    original_side = tokenizer.padding_side
    reference = []
    try:
        runs = [("right", list(PARITY_TEXTS)), ("left", list(PARITY_TEXTS))] + [("single", [t]) for t in PARITY_TEXTS]
        for side, texts in runs:
            tokenizer.padding_side = original_side if side == "single" else side
            enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="np")
            feeds = {
                "input_ids": enc["input_ids"].astype(np.int64),
                "attention_mask": enc["attention_mask"].astype(np.int64),
            }
            with torch.inference_mode():
                hidden, emb = module(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]))
            reference.append({"side": side, "feeds": feeds, "hidden": hidden.numpy(), "embedding": emb.numpy()})
    finally:
        tokenizer.padding_side = original_side
    return reference


def compare_embedding_parity(
    reference: list[dict],
    onnx_path: Path,
    thresholds: ParityThresholds = ParityThresholds(),
    invariant_sides: tuple[str, ...] = ("right", "left"),
) -> dict:
    from qconv.runtime.embedder import open_session

    session = open_session(onnx_path, ["CPUExecutionProvider"])
    ref_rows, onnx_rows, hidden_diffs = [], [], []
    batched_by_side: dict[str, np.ndarray] = {}
    for run in reference:
        feeds = run["feeds"]
        onnx_hidden, onnx_emb = session.run(["last_hidden_state", "sentence_embedding"], feeds)
        attended = feeds["attention_mask"].astype(bool)
        hidden_diffs.append(float(np.abs(onnx_hidden[attended] - run["hidden"][attended]).max()))
        ref_rows.append(run["embedding"])
        onnx_rows.append(onnx_emb)
        if run["side"] in invariant_sides:
            batched_by_side[run["side"]] = onnx_emb
    ref = np.concatenate(ref_rows)
    got = np.concatenate(onnx_rows)
    singles = np.concatenate(onnx_rows[2:])
    finite = bool(np.isfinite(got).all() and np.isfinite(ref).all())
    scale = max(float(np.abs(ref).max()), 1e-12)
    cosine = cosine_rows(got, ref)
    padding_cos = min(float(cosine_rows(batched_by_side[s], singles).min()) for s in batched_by_side)
    result = {
        "texts": len(PARITY_TEXTS),
        "runs": "right-padded batch, left-padded batch, batch 1",
        "padding_invariance_sides": list(invariant_sides),
        "cosine_min": float(cosine.min()) if finite else float("nan"),
        "max_abs_diff": float(np.abs(got - ref).max()),
        "max_rel_abs_diff": float(np.abs(got - ref).max() / scale),
        "hidden_max_abs_diff": max(hidden_diffs),
        "padding_invariance_cosine_min": padding_cos,
        "finite": finite,
        "thresholds": {"min_cosine": thresholds.min_cosine, "max_rel_abs_diff": thresholds.max_rel_abs_diff},
    }
    result["passed"] = bool(
        finite
        and result["cosine_min"] >= thresholds.min_cosine
        and result["max_rel_abs_diff"] <= thresholds.max_rel_abs_diff
        and padding_cos >= thresholds.min_cosine
    )
    return result


def require_parity(result: dict) -> None:
    if not result["passed"]:
        raise QconvError(
            "export parity check failed (ONNX vs PyTorch): cosine_min={cosine_min:.7f}, "
            "max_abs_diff={max_abs_diff:.2e}, padding_invariance_cosine_min={padding_invariance_cosine_min:.7f}, "
            "finite={finite}; nothing was written".format(**result)
        )


def reranker_reference(module, sequences: list[list[int]], pad_id: int) -> list[dict]:
    """The PyTorch logits of every parity run (computed first, so the caller can free the model)."""
    import torch

    from qconv.runtime.template import pad_batch

    reference = []
    runs = [("left", sequences), ("right", sequences)] + [(f"single{i}", [s]) for i, s in enumerate(sequences)]
    for name, batch in runs:
        ids, mask = pad_batch(batch, pad_id, "right" if name == "right" else "left")
        with torch.inference_mode():
            logits = module(torch.from_numpy(ids), torch.from_numpy(mask)).float().numpy()
        reference.append({"name": name, "ids": ids, "mask": mask, "logits": logits})
    return reference


def compare_reranker_parity(
    reference: list[dict], fmt: str, onnx_path: Path, yes_id: int | None, no_id: int | None, tolerance: float = 1e-5
) -> dict:
    from qconv.runtime.embedder import open_session
    from qconv.runtime.reranker import yes_probability

    session = open_session(onnx_path, ["CPUExecutionProvider"])
    diffs, by_run = [], {}
    sequences = [run for run in reference if run["name"].startswith("single")]
    for run in reference:
        ids, mask = run["ids"], run["mask"]
        (onnx_logits,) = session.run(["logits"], {"input_ids": ids, "attention_mask": mask})
        ref = yes_probability(fmt, run["logits"], mask, yes_id, no_id)
        got = yes_probability(fmt, onnx_logits, mask, yes_id, no_id)
        diffs.append(float(np.abs(ref - got).max()))
        by_run[run["name"]] = got
    singles = np.concatenate([by_run[f"single{i}"] for i in range(len(sequences))])
    padding = max(float(np.abs(by_run[side] - singles).max()) for side in ("left", "right"))
    finite = all(np.isfinite(v).all() for v in by_run.values())
    max_diff = max(diffs)
    return {
        "pairs": len(sequences),
        "runs": "left-padded batch, right-padded batch, batch 1",
        "max_abs_diff": max_diff,
        "padding_invariance_max_abs_diff": padding,
        "finite": bool(finite),
        "tolerance": tolerance,
        "passed": bool(finite and max_diff <= tolerance and padding <= tolerance),
    }


def require_reranker_parity(result: dict) -> None:
    if not result["passed"]:
        raise QconvError(
            "export parity check failed (ONNX vs PyTorch P(yes)): max_abs_diff={max_abs_diff:.2e}, "
            "padding_invariance_max_abs_diff={padding_invariance_max_abs_diff:.2e}, finite={finite}; "
            "nothing was written".format(**result)
        )
