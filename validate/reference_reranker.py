"""Reference relevance scores from the original PyTorch model, cached on disk.

The reference is the *original* checkpoint (the causal LM, scored the way Qwen3-Reranker's own code does:
left padding, next-token logits at the last position, softmax over [no, yes]), not qconv's converted head,
so a validation covers conversion and export end to end.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from qconv.artifact import Artifact
from qconv.console import console
from qconv.runtime.embedder import DEFAULT_BATCH_TOKENS, token_batches
from qconv.runtime.template import pad_batch

from .reference import cached_reference


def ids_fingerprint(sequences: Sequence[Sequence[int]]) -> str:
    digest = hashlib.sha256()
    for seq in sequences:
        digest.update(np.asarray(seq, dtype=np.int64).tobytes() + b"|")
    return digest.hexdigest()


class TorchReranker:
    def __init__(self, model_dir: Path, source_format: str, yes_id: int, no_id: int, pad_id: int):
        from qconv.convert.reranker_export import _load

        self.model = _load(model_dir, source_format)
        self.format = source_format
        self.yes_id, self.no_id, self.pad_id = yes_id, no_id, pad_id

    def score(
        self,
        sequences: Sequence[Sequence[int]],
        batch_size: int = 8,
        progress: Callable[[int], None] | None = None,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
    ) -> np.ndarray:
        import torch

        scores = np.empty(len(sequences), dtype=np.float64)
        with torch.inference_mode():
            for idx in token_batches([len(s) for s in sequences], batch_size, batch_tokens):
                ids, mask = pad_batch([sequences[i] for i in idx], self.pad_id, "left")
                ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
                if self.format == "seq-cls":
                    out = torch.sigmoid(self.model(input_ids=ids_t, attention_mask=mask_t).logits[:, 0].double())
                else:
                    last = self.model(input_ids=ids_t, attention_mask=mask_t, use_cache=False, logits_to_keep=1).logits[
                        :, -1, :
                    ]
                    out = torch.softmax(last[:, [self.no_id, self.yes_id]].double(), dim=-1)[:, 1]
                scores[idx] = out.numpy()
                if progress is not None:
                    progress(len(idx))
        return scores


def reference_scores(
    artifact: Artifact,
    sequences: Sequence[Sequence[int]],
    *,
    batch_size: int,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    reference: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, dict]:
    from qconv.convert.reranker_export import source_format
    from qconv.convert.source import load_config_dict
    from qconv.convert.specs import reranker_spec

    settings = artifact.manifest["reranker"]

    def compute(source, info) -> np.ndarray:
        config = load_config_dict(source.path)
        fmt = source_format(config, reranker_spec(config.get("model_type", "")), source.id)
        info["format"] = fmt
        with console.status(f"loading the PyTorch reference {source.id} ({fmt})"):
            runner = TorchReranker(
                source.path, fmt, settings["yes_token_id"], settings["no_token_id"], settings["pad_token_id"]
            )
        return runner.score(sequences, batch_size=batch_size, progress=progress, batch_tokens=batch_tokens)

    key_material = {
        "task": "rerank",
        "ids": ids_fingerprint(sequences),
        "yes": settings["yes_token_id"],
        "no": settings["no_token_id"],
    }
    return cached_reference(artifact, reference, key_material, len(sequences), compute, progress)
