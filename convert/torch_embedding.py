"""The PyTorch side of an embedding model: the module that is exported, and the reference encoder.

Both use the same pooling code as the graph, so any ONNX/PyTorch difference is the export's alone;
tests check this encoder against sentence-transformers independently.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from qconv.errors import QconvError, one_line

from .pooling import pool


def _torch():
    import torch

    return torch


def build_embedding_module(base_model, pooling: str, normalize: bool):
    """Wrap a transformers base model so that it returns (last_hidden_state, sentence_embedding)."""
    torch = _torch()

    class EmbeddingModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = base_model

        def forward(self, input_ids, attention_mask):
            # No position_ids: RoPE depends only on relative positions, so left padding needs no shift,
            # and a graph without that input loads in optimum and sentence-transformers as is.
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            embedding = pool(hidden, attention_mask, pooling)
            if normalize:
                embedding = torch.nn.functional.normalize(embedding, p=2.0, dim=-1)
            return hidden, embedding

    return EmbeddingModule().eval()


def require_safetensors(model_dir: Path) -> None:
    if not any(Path(model_dir).glob("*.safetensors")):
        raise QconvError(f"{model_dir} has no .safetensors weights (qconv does not unpickle .bin checkpoints)")


def load_base_model(model_dir: Path):
    """Load the transformers base model (fp32, safetensors only, no remote code)."""
    from safetensors import SafetensorError
    from transformers import AutoModel

    from qconv.console import quiet_libraries

    quiet_libraries()
    require_safetensors(model_dir)
    try:
        model = AutoModel.from_pretrained(
            model_dir,
            dtype=_torch().float32,
            trust_remote_code=False,
            use_safetensors=True,
            attn_implementation="sdpa",
        )
    except (OSError, ValueError, KeyError, SafetensorError) as exc:  # SafetensorError: a truncated or corrupt file
        raise QconvError(f"could not load the model in {model_dir}: {one_line(exc)}") from exc
    return model.eval()


def load_tokenizer(model_dir: Path, padding_side: str | None = None):
    from transformers import AutoTokenizer

    from qconv.console import quiet_libraries

    quiet_libraries()
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False, use_fast=True)
    except Exception as exc:  # the tokenizers library raises a bare Exception for a corrupt tokenizer.json
        raise QconvError(f"could not load the tokenizer in {model_dir}: {one_line(exc)}") from exc
    if not tokenizer.is_fast:
        raise QconvError(f"{model_dir}: qconv needs a fast (tokenizer.json) tokenizer")
    if padding_side:
        tokenizer.padding_side = padding_side
    if tokenizer.pad_token is None:
        raise QconvError(f"{model_dir}: the tokenizer has no pad token")
    return tokenizer


class TorchEmbedder:
    """Encode texts with the PyTorch original: same tokenizer, pooling, normalisation and prompt."""

    def __init__(self, model_dir: Path, *, pooling: str, normalize: bool, padding_side: str, max_length: int):
        self.tokenizer = load_tokenizer(model_dir, padding_side)
        self.module = build_embedding_module(load_base_model(model_dir), pooling, normalize)
        self.max_length = max_length

    def encode(
        self,
        texts: Sequence[str],
        *,
        prompt: str | None = None,
        batch_size: int = 32,
        batch_tokens: int | None = None,
        progress=None,
    ) -> np.ndarray:
        """Embeddings, truncated to ``max_length`` tokens, batched (like the ONNX runtime) by token length:
        at most ``batch_size`` texts and ``batch_tokens`` padded tokens per batch."""
        from qconv.runtime.embedder import DEFAULT_BATCH_TOKENS, token_batches
        from qconv.runtime.template import pad_batch

        torch = _torch()
        inputs = [(prompt or "") + t for t in texts]
        token_ids = self.tokenizer(inputs, truncation=True, max_length=self.max_length)["input_ids"] if inputs else []
        pad_id, side = self.tokenizer.pad_token_id, self.tokenizer.padding_side
        out: np.ndarray | None = None
        with torch.inference_mode():
            for idx in token_batches([len(t) for t in token_ids], batch_size, batch_tokens or DEFAULT_BATCH_TOKENS):
                ids, mask = pad_batch([token_ids[i] for i in idx], pad_id, side)
                _, emb = self.module(torch.from_numpy(ids), torch.from_numpy(mask))
                if out is None:
                    out = np.empty((len(inputs), emb.shape[-1]), dtype=np.float32)
                out[idx] = emb.float().numpy()
                if progress is not None:
                    progress(len(idx))
        return out if out is not None else np.zeros((0, 0), dtype=np.float32)
