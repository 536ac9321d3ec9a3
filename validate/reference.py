"""Reference embeddings from the PyTorch original, cached on disk.

The cache key covers the model's identity (content hash), the exact texts and every setting that
changes an embedding, so validating several variants runs PyTorch once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from qconv.artifact import Artifact
from qconv.console import console
from qconv.errors import QconvError


def texts_fingerprint(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for t in texts:
        digest.update(t.encode("utf-8") + b"\0")
    return digest.hexdigest()


def resolve_reference(artifact: Artifact, reference: str | None):
    """The reference model's (source, identity): ``--reference`` or the manifest's source."""
    from qconv.convert.source import SourceModel, content_hash, resolve_source

    if reference:
        source = resolve_source(reference)
        return source, source.content_sha256
    recorded = artifact.manifest["source"]

    def load() -> SourceModel:
        target = recorded["path"] if recorded["kind"] == "local" else recorded["model"]
        if recorded["kind"] == "local" and not Path(target).is_dir():
            raise QconvError(f"the reference model {target} recorded in the manifest is gone; pass --reference M")
        source = resolve_source(target, recorded.get("revision"))
        if recorded["kind"] == "local" and content_hash(source.path) != recorded["content_sha256"]:
            raise QconvError(
                f"the reference model in {target} changed since export (content hash differs); "
                f"pass --reference M to validate against it anyway"
            )
        return source

    return load, recorded["content_sha256"]


def cached_reference(
    artifact: Artifact,
    reference: str | None,
    key_material: dict,
    count: int,
    compute: Callable,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, dict]:
    """Reference values (one row per input) from the cache, or ``compute(source, info)`` and cache them.

    The key covers the reference model's identity and ``key_material`` (inputs and settings).
    """
    source_or_loader, identity = resolve_reference(artifact, reference)
    key = hashlib.sha256(json.dumps({"model": identity, **key_material}, sort_keys=True).encode()).hexdigest()[:32]
    cache_file = artifact.cache_dir("reference") / f"{key}.npy"
    info = {
        "model": reference or artifact.manifest["source"]["model"],
        "content_sha256": identity,
        "cache_key": key,
        "cached": cache_file.is_file(),
    }
    if cache_file.is_file():
        values = np.load(cache_file)
        if values.shape[0] == count:
            if progress is not None:
                progress(count)
            return values, info
    source = source_or_loader if not callable(source_or_loader) else source_or_loader()
    values = compute(source, info)
    tmp = cache_file.with_suffix(".tmp.npy")
    np.save(tmp, values)
    tmp.replace(cache_file)
    info["cached"] = False
    return values, info


def reference_embeddings(
    artifact: Artifact,
    texts: Sequence[str],
    *,
    prompt: str | None,
    batch_size: int,
    batch_tokens: int | None = None,
    reference: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, dict]:
    from qconv.convert.torch_embedding import TorchEmbedder

    settings = artifact.manifest["embedding"]

    def compute(source, info) -> np.ndarray:
        with console.status(f"loading the PyTorch reference {source.id}"):
            encoder = TorchEmbedder(
                source.path,
                pooling=settings["pooling"],
                normalize=settings["normalize"],
                padding_side=settings["padding_side"],
                max_length=settings["max_length"],
            )
        return encoder.encode(texts, prompt=prompt, batch_size=batch_size, batch_tokens=batch_tokens, progress=progress)

    key_material = {
        "texts": texts_fingerprint(texts),
        "prompt": prompt,
        **{k: settings[k] for k in ("pooling", "normalize", "padding_side", "max_length")},
    }
    return cached_reference(artifact, reference, key_material, len(texts), compute, progress)
