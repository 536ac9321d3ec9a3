"""Run an artifact with onnxruntime and tokenizers only (no torch import on this path)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .artifact import Artifact, open_artifact
from .errors import QconvError, one_line


def _available_providers() -> list[str]:
    import onnxruntime as ort

    return ort.get_available_providers()


def resolve_providers(providers: Sequence[str] | str | None) -> list[str]:
    """Validate provider names; default CPU. Unknown or unavailable names are user errors."""
    if providers is None or providers == "" or providers == []:
        return ["CPUExecutionProvider"]
    names = [p.strip() for p in (providers.split(",") if isinstance(providers, str) else providers) if p.strip()]
    available = _available_providers()
    for name in names:
        if name not in available:
            raise QconvError(
                f"execution provider '{name}' is not available in this onnxruntime (available: {', '.join(available)})"
            )
    return names


def open_session(model_path: Path, providers: Sequence[str], threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(model_path), sess_options=options, providers=list(providers))
    except Exception as exc:  # onnxruntime raises its own exception types for corrupt or invalid graphs
        raise QconvError(f"onnxruntime cannot load {model_path}: {one_line(exc)}") from None


def load_fast_tokenizer(artifact_dir: Path, *, padding_side: str, max_length: int):
    from tokenizers import Tokenizer

    tokenizer_file = artifact_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise QconvError(f"{artifact_dir} has no tokenizer.json")
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    config_file = artifact_dir / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    pad_token = config.get("pad_token")
    if isinstance(pad_token, dict):
        pad_token = pad_token.get("content")
    pad_id = tokenizer.token_to_id(pad_token) if pad_token else None
    if pad_id is None:
        raise QconvError(f"{artifact_dir}: the tokenizer has no pad token")
    tokenizer.enable_padding(direction=padding_side, pad_id=pad_id, pad_token=pad_token)
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def batched(texts: Sequence[str], batch_size: int):
    """Yield (indices, texts) batches, longest first, so that padding is minimal within each batch."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield idx, [texts[i] for i in idx]


class Embedder:
    """Sentence embeddings from an exported artifact.

    >>> Embedder("artifacts/Qwen3-Embedding-0.6B").encode(["hello"], prompt_name="query")
    """

    def __init__(
        self,
        artifact: str | Path | Artifact,
        variant: str = "model",
        providers: Sequence[str] | str | None = None,
        threads: int | None = None,
    ):
        self.artifact = open_artifact(artifact, "embedding")
        settings = self.artifact.manifest["embedding"]
        self.variant = variant
        self.providers = resolve_providers(providers)
        self.settings = settings
        self.session = open_session(self.artifact.variant_path(variant), self.providers, threads)
        self.tokenizer = load_fast_tokenizer(
            self.artifact.path, padding_side=settings["padding_side"], max_length=settings["max_length"]
        )
        self._input_names = {i.name for i in self.session.get_inputs()}

    @property
    def dimension(self) -> int:
        return int(self.settings["dimension"])

    def prompt(self, prompt_name: str | None) -> str:
        if prompt_name is None:
            return ""
        prompts = self.settings.get("prompts") or {}
        if prompt_name not in prompts:
            raise QconvError(f"unknown prompt name '{prompt_name}' (known: {', '.join(prompts) or 'none'})")
        return prompts[prompt_name]

    def encode(
        self,
        texts: Sequence[str],
        *,
        prompt: str | None = None,
        prompt_name: str | None = None,
        batch_size: int = 32,
        dim: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embed ``texts`` (with ``prompt`` or a named prompt prefixed); optional Matryoshka ``dim``."""
        prefix = prompt if prompt is not None else self.prompt(prompt_name)
        inputs = [prefix + t for t in texts]
        out = np.empty((len(inputs), self.dimension), dtype=np.float32)
        for idx, chunk in batched(inputs, batch_size):
            encodings = self.tokenizer.encode_batch(chunk)
            feeds = {
                "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            }
            feeds = {k: v for k, v in feeds.items() if k in self._input_names}
            (embedding,) = self.session.run(["sentence_embedding"], feeds)
            out[idx] = embedding
            if progress is not None:
                progress(len(idx))
        return truncate_dim(out, dim, renormalize=True) if dim else out


def truncate_dim(embeddings: np.ndarray, dim: int, renormalize: bool = True) -> np.ndarray:
    """Matryoshka truncation: keep the first ``dim`` components and (by default) renormalise."""
    if dim > embeddings.shape[1]:
        raise QconvError(f"--dim {dim} is larger than the embedding size {embeddings.shape[1]}")
    cut = embeddings[:, :dim]
    if renormalize:
        norms = np.linalg.norm(cut, axis=1, keepdims=True)
        cut = cut / np.maximum(norms, 1e-12)
    return cut.astype(np.float32)
