"""Score (query, document) pairs with a reranker artifact: onnxruntime + tokenizers only (no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from qconv.artifact import Artifact, open_artifact
from qconv.runtime.embedder import (
    DEFAULT_BATCH_TOKENS,
    load_fast_tokenizer,
    open_session,
    resolve_providers,
    token_batches,
)
from qconv.runtime.template import PairEncoder, RerankTemplate, last_token_index, pad_batch, resolve_instruction


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


def yes_probability(fmt: str, logits: np.ndarray, attention_mask: np.ndarray, yes_id: int, no_id: int) -> np.ndarray:
    """P("yes") from either graph format.

    seq-cls: one logit, w = W[yes] - W[no], so sigmoid(logit) = softmax([logit_no, logit_yes])[yes].
    causal-lm: full-vocabulary logits; take the last real token's yes/no logits and softmax them.
    """
    if fmt == "seq-cls":
        return sigmoid(logits[:, 0])
    rows = np.arange(logits.shape[0])
    at_last = logits[rows, last_token_index(attention_mask)] if logits.ndim == 3 else logits
    return sigmoid(at_last[:, yes_id].astype(np.float64) - at_last[:, no_id].astype(np.float64))


class Reranker:
    """Relevance scores P(yes) for (query, document) pairs, with the artifact's template and truncation.

    >>> Reranker("artifacts/Qwen3-Reranker-0.6B-seq-cls").rank("what is onnx?", ["ONNX is ...", "Bananas"])
    """

    def __init__(
        self,
        artifact: str | Path | Artifact,
        variant: str = "model",
        providers: Sequence[str] | str | None = None,
        threads: int | None = None,
    ):
        self.artifact = open_artifact(artifact, "reranker")
        settings = self.artifact.manifest["reranker"]
        self.settings = settings
        self.format = settings["format"]
        self.providers = resolve_providers(providers)
        self.session = open_session(self.artifact.variant_path(variant), self.providers, threads)
        tokenizer = load_fast_tokenizer(
            self.artifact.path, padding_side=settings["padding_side"], max_length=settings["max_length"]
        )
        tokenizer.no_truncation()  # the pair encoder truncates the body itself, keeping prefix and suffix
        tokenizer.no_padding()
        self.encoder = PairEncoder(
            tokenizer, RerankTemplate.from_manifest(settings["template"]), settings["max_length"]
        )

    def score_ids(
        self,
        sequences: Sequence[Sequence[int]],
        batch_size: int = 8,
        progress: Callable[[int], None] | None = None,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
    ) -> np.ndarray:
        scores = np.empty(len(sequences), dtype=np.float64)
        for idx in token_batches([len(s) for s in sequences], batch_size, batch_tokens):
            ids, mask = pad_batch(
                [sequences[i] for i in idx], self.settings["pad_token_id"], self.settings["padding_side"]
            )
            (logits,) = self.session.run(["logits"], {"input_ids": ids, "attention_mask": mask})
            scores[idx] = yes_probability(
                self.format, logits, mask, self.settings["yes_token_id"], self.settings["no_token_id"]
            )
            if progress is not None:
                progress(len(idx))
        return scores

    def score(
        self, query: str, documents: Sequence[str], *, instruction: str | None = None, batch_size: int = 8
    ) -> np.ndarray:
        """P(yes) for each document (``instruction``: None = the artifact's default, '' = none)."""
        if not documents:
            return np.zeros(0)
        return self.score_ids(
            self.encoder.encode_pairs(query, documents, resolve_instruction(instruction, self.settings["instruction"])),
            batch_size=batch_size,
        )

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_k: int | None = None,
        instruction: str | None = None,
        batch_size: int = 8,
    ) -> list[dict]:
        scores = self.score(query, documents, instruction=instruction, batch_size=batch_size)
        order = sorted(range(len(documents)), key=lambda i: -scores[i])[:top_k]
        return [{"index": i, "score": float(scores[i]), "document": documents[i]} for i in order]
