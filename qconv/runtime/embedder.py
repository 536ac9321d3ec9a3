"""Run an artifact with onnxruntime and tokenizers only (no torch import on this path)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from qconv.artifact import Artifact, open_artifact
from qconv.errors import QconvError, one_line
from qconv.runtime.template import pad_batch

# Padded tokens per batch (rows x longest row): bounds the activations of a batch whatever the texts' lengths,
# while short texts still fill --batch-size rows. A text at the artifact's max length runs alone.
DEFAULT_BATCH_TOKENS = 8192


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
        raise QconvError(f"onnxruntime cannot load {model_path}: {one_line(exc)}") from exc


def load_fast_tokenizer(artifact_dir: Path, *, padding_side: str, max_length: int):
    from tokenizers import Tokenizer

    tokenizer_file = artifact_dir / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise QconvError(f"{artifact_dir} has no tokenizer.json")
    try:
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
    except Exception as exc:  # the tokenizers library raises a bare Exception for a corrupt file
        raise QconvError(f"{tokenizer_file} is not a readable tokenizer ({one_line(exc)})") from exc
    config_file = artifact_dir / "tokenizer_config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise QconvError(f"{config_file} is not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise QconvError(f"{config_file} is not a JSON object")
    pad_token = config.get("pad_token")
    if isinstance(pad_token, dict):
        pad_token = pad_token.get("content")
    pad_id = tokenizer.token_to_id(pad_token) if pad_token else None
    if pad_id is None:
        raise QconvError(f"{artifact_dir}: the tokenizer has no pad token")
    tokenizer.enable_padding(direction=padding_side, pad_id=pad_id, pad_token=pad_token)
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def token_batches(lengths: Sequence[int], batch_size: int, batch_tokens: int = DEFAULT_BATCH_TOKENS):
    """Yield index batches, longest first (little padding), each of at most ``batch_size`` rows and at most
    ``batch_tokens`` padded tokens; a row longer than the budget goes alone."""
    if batch_size < 1 or batch_tokens < 1:
        raise QconvError(f"batch size and token budget must be positive, got {batch_size} and {batch_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batch: list[int] = []
    for i in order:
        # Sorted longest first: the batch's padded width is its first row's length.
        if batch and (len(batch) >= batch_size or (len(batch) + 1) * lengths[batch[0]] > batch_tokens):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


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
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        dim: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embed ``texts`` (with ``prompt`` or a named prompt prefixed); optional Matryoshka ``dim``.

        Texts longer than the artifact's max length are truncated (see ``tokenize``); batches hold at most
        ``batch_size`` texts and ``batch_tokens`` padded tokens."""
        prefix = prompt if prompt is not None else self.prompt(prompt_name)
        encodings = self.tokenize([prefix + t for t in texts])
        out = self.encode_tokens(encodings, batch_size=batch_size, batch_tokens=batch_tokens, progress=progress)
        return truncate_dim(out, dim, renormalize=True) if dim else out

    def tokenize(self, inputs: Sequence[str]) -> list:
        """Unpadded encodings, truncated to the artifact's max length (``encoding.overflowing`` is then set)."""
        padding = self.tokenizer.padding
        self.tokenizer.no_padding()
        try:
            return self.tokenizer.encode_batch(list(inputs))
        finally:
            if padding:
                self.tokenizer.enable_padding(**padding)

    def encode_tokens(
        self,
        encodings: Sequence,
        *,
        batch_size: int = 32,
        batch_tokens: int = DEFAULT_BATCH_TOKENS,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embeddings of ``tokenize``'s encodings, padded per batch as the tokenizer is configured to pad."""
        padding = self.tokenizer.padding or {"pad_id": 0, "direction": self.settings["padding_side"]}
        out = np.empty((len(encodings), self.dimension), dtype=np.float32)
        for idx in token_batches([len(e.ids) for e in encodings], batch_size, batch_tokens):
            ids, mask = pad_batch([encodings[i].ids for i in idx], padding["pad_id"], padding["direction"])
            feeds = {k: v for k, v in {"input_ids": ids, "attention_mask": mask}.items() if k in self._input_names}
            (embedding,) = self.session.run(["sentence_embedding"], feeds)
            out[idx] = embedding
            if progress is not None:
                progress(len(idx))
        return out


def truncate_dim(embeddings: np.ndarray, dim: int, renormalize: bool = True) -> np.ndarray:
    """Matryoshka truncation: keep the first ``dim`` components and (by default) renormalise."""
    if dim > embeddings.shape[1]:
        raise QconvError(f"--dim {dim} is larger than the embedding size {embeddings.shape[1]}")
    cut = embeddings[:, :dim]
    if renormalize:
        norms = np.linalg.norm(cut, axis=1, keepdims=True)
        cut = cut / np.maximum(norms, 1e-12)
    return cut.astype(np.float32)
