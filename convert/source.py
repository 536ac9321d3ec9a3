"""Where a source model comes from: a local directory or a Hub id (downloaded at a revision)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from qconv.artifact import sha256_file
from qconv.errors import QconvError, first_sentence

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# Files that make up a model's behaviour; their hashes identify a local model without a revision.
_IDENTITY_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model", ".tiktoken")
_DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "1_Pooling/*", "*/config.json"]
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)


@dataclass(frozen=True)
class SourceModel:
    path: Path  # a local directory holding config, tokenizer and weights
    id: str  # what the user passed: Hub id or the directory
    kind: str  # "local" or "hub"
    revision: str | None
    content_sha256: str

    @property
    def name(self) -> str:
        return self.id.rstrip("/").split("/")[-1] if self.kind == "hub" else self.path.name

    def to_manifest(self) -> dict:
        manifest = {
            "model": self.id,
            "kind": self.kind,
            "path": str(self.path) if self.kind == "local" else None,
            "revision": self.revision,
            "content_sha256": self.content_sha256,
        }
        from qconv.testing.testmodels import RANDOM_WEIGHTS_NOTE, is_random_weight_model

        if is_random_weight_model(self.path):
            manifest["weights"] = RANDOM_WEIGHTS_NOTE  # echoed by reports and the model card
        return manifest


def content_hash(directory: Path) -> str:
    """A hash over the files that define the model (weights, configs, tokenizer), by relative path."""
    digest = hashlib.sha256()
    for path in sorted(directory.rglob("*")):
        rel = path.relative_to(directory)
        if path.is_file() and path.suffix in _IDENTITY_SUFFIXES and not rel.parts[0].startswith("."):
            if rel.parts[0] in ("onnx", "reports"):
                continue
            digest.update(rel.as_posix().encode() + b"\0" + sha256_file(path).encode() + b"\n")
    return digest.hexdigest()


def resolve_source(model: str, revision: str | None = None) -> SourceModel:
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise QconvError(f"model path {path} is a file; pass the model directory")
        if not (path / "config.json").is_file():
            raise QconvError(f"{path} is not a model directory (no config.json)")
        return SourceModel(path.resolve(), str(model), "local", revision, content_hash(path.resolve()))
    if model.startswith((".", "/", "~")) or not _HUB_ID.match(model):
        raise QconvError(f"model directory {model} does not exist")
    return _download(model, revision)


def _download(repo_id: str, revision: str | None) -> SourceModel:
    try:
        from huggingface_hub import HfApi, snapshot_download

        local = snapshot_download(repo_id, revision=revision, allow_patterns=_DOWNLOAD_PATTERNS)
        resolved = revision
        try:
            resolved = HfApi().model_info(repo_id, revision=revision).sha
        except Exception:  # offline with a warm cache: the snapshot directory name is the commit
            resolved = Path(local).name
    except Exception as exc:  # any Hub failure (offline, 404, auth) becomes one actionable line
        reason = _hub_failure_reason(exc)
        raise QconvError(
            f"could not get '{repo_id}' from the Hugging Face Hub ({reason}); offline or without access, "
            f"pass --model DIR with a local copy"
        ) from exc
    local_path = Path(local)
    return SourceModel(local_path, repo_id, "hub", resolved, content_hash(local_path))


def _hub_failure_reason(exc: BaseException) -> str:
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    known = [
        (GatedRepoError, "the repository is gated: accept its terms and set HF_TOKEN"),
        (RevisionNotFoundError, "no such revision"),
        (RepositoryNotFoundError, "no such repository, or it is private"),
        (LocalEntryNotFoundError, "the Hub is unreachable and the model is not in the local cache"),
    ]
    return next((text for kind, text in known if isinstance(exc, kind)), first_sentence(exc))


def load_config_dict(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise QconvError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise QconvError(f"{path} is not a model config (a JSON object), it is a JSON {type(config).__name__}")
    return config


def require_tokenizer(model_dir: Path, model_type: str) -> None:
    if not any((model_dir / name).is_file() for name in _TOKENIZER_FILES):
        raise QconvError(
            f"{model_dir} has no tokenizer: '{model_type}' does not look like a text model "
            f"(qconv exports text embedding and reranker models)"
        )
