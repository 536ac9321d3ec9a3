"""An artifact directory: its manifest (``qconv.json``), its ONNX variants, and atomic writes.

The manifest is the single source of truth about how every file was made. Writers never touch a
finished artifact in place: they build in a sibling temporary directory and swap it in when complete.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from .errors import QconvError

MANIFEST = "qconv.json"
MANIFEST_VERSION = 1
ONNX_DIR = "onnx"
REPORTS_DIR = "reports"
CACHE_DIR = ".cache"
BASE_VARIANT = "model"
# Packages whose versions decide what an artifact contains; recorded in every manifest.
RECORDED_PACKAGES = (
    "qconv",
    "torch",
    "transformers",
    "tokenizers",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "optimum",
    "optimum-onnx",
    "sentence-transformers",
    "datasets",
    "numpy",
)
_NOT_HASHED_DIRS = {CACHE_DIR}
# What every reader of a manifest relies on: a hand-edited or damaged manifest is named up front, not a KeyError.
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "": ("task", "source", "variants"),
    "source": ("model", "kind", "content_sha256"),
    "embedding": ("pooling", "normalize", "dimension", "padding_side", "max_length"),
    "reranker": (
        "format",
        "padding_side",
        "max_length",
        "template",
        "instruction",
        "yes_token_id",
        "no_token_id",
        "pad_token_id",
    ),
}


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def hash_tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative POSIX paths), except the manifest and caches."""
    hashes: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or rel.parts[0] in _NOT_HASHED_DIRS or rel.as_posix() == MANIFEST:
            continue
        hashes[rel.as_posix()] = sha256_file(path)
    return hashes


def variant_file(variant: str) -> str:
    """``model`` -> ``onnx/model.onnx``; ``O2`` -> ``onnx/model_O2.onnx`` (sentence-transformers layout)."""
    return f"{ONNX_DIR}/model.onnx" if variant == BASE_VARIANT else f"{ONNX_DIR}/model_{variant}.onnx"


def refuse_existing_output(target: Path, overwrite: bool) -> None:
    """The output check, callable before any slow work (model loading) as well as when staging."""
    target = Path(target).resolve()
    if target.exists() and not target.is_dir():
        raise QconvError(f"output {target} is a file, not a directory")
    blocking = next((p for p in target.parents if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise QconvError(f"output {target}: {blocking} is a file, not a directory")
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise QconvError(f"output directory {target} already exists and is not empty (pass --overwrite to replace it)")


@contextlib.contextmanager
def staged_directory(target: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``target`` only if the block completes.

    On any exception the temporary directory is removed and ``target`` is left exactly as it was.
    """
    target = Path(target).resolve()
    refuse_existing_output(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    backup = None
    if target.exists():
        backup = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, backup)
    os.replace(tmp, target)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write through a temp file in the same directory, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as exc:  # a full disk fails in write() or close(), which name no file
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


class Artifact:
    """A directory holding ``qconv.json`` and the files it describes."""

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()
        manifest = self.path / MANIFEST
        if self.path.is_file():
            hint = f"; pass its directory {self.path.parent}" if self.path.name == MANIFEST else ""
            raise QconvError(f"{self.path} is a file, not an artifact directory{hint}")
        if not self.path.is_dir():
            raise QconvError(f"artifact directory {self.path} does not exist")
        if not manifest.is_file():
            raise QconvError(f"{self.path} is not a qconv artifact (no {MANIFEST}); create one with 'qconv export'")
        try:
            self.manifest: dict[str, Any] = json.loads(manifest.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise QconvError(f"{manifest} is not valid JSON ({exc})") from exc
        if not isinstance(self.manifest, dict) or "task" not in self.manifest:
            raise QconvError(f"{manifest} is not a qconv manifest (no 'task' field)")
        check_manifest(self.manifest, manifest)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def variants(self) -> dict[str, dict[str, Any]]:
        return self.manifest.setdefault("variants", {})

    def variant_path(self, variant: str) -> Path:
        if variant not in self.variants:
            known = ", ".join(sorted(self.variants)) or "none"
            raise QconvError(f"artifact {self.name} has no variant '{variant}' (variants: {known})")
        path = self.path / self.variants[variant]["file"]
        if not path.is_file():
            raise QconvError(f"variant '{variant}' is listed in the manifest but {path} is missing")
        return path

    def reports_dir(self) -> Path:
        path = self.path / REPORTS_DIR
        path.mkdir(exist_ok=True)
        return path

    def cache_dir(self, kind: str) -> Path:
        path = self.path / CACHE_DIR / kind
        path.mkdir(parents=True, exist_ok=True)
        return path

    def add_stage(self, stage: dict[str, Any]) -> None:
        self.manifest.setdefault("stages", []).append({"time": now_iso(), **stage})

    def save(self) -> None:
        """Rewrite the manifest with fresh file hashes (reports and variants may have been added)."""
        self.manifest["files"] = hash_tree(self.path)
        self.manifest["updated"] = now_iso()
        write_json_atomic(self.path / MANIFEST, self.manifest)


def check_manifest(manifest: dict[str, Any], where: Path) -> None:
    """Every key qconv reads later is there, with the right shape; else one line naming what is missing."""
    sections = {"": manifest, "source": manifest.get("source"), manifest.get("task"): manifest.get(manifest["task"])}
    if manifest["task"] not in ("embedding", "reranker"):
        raise QconvError(f"{where}: unknown task '{manifest['task']}' (embedding or reranker)")
    for name, section in sections.items():
        label = f"'{name}'" if name else "the manifest"
        if not isinstance(section, dict):
            raise QconvError(f"{where} is damaged: {label} is missing or not an object; re-export the artifact")
        missing = [key for key in REQUIRED_KEYS[name] if key not in section]
        if missing:
            raise QconvError(f"{where} is damaged: {label} lacks {', '.join(missing)}; re-export the artifact")
    variants = manifest["variants"]
    if not isinstance(variants, dict):
        raise QconvError(f"{where} is damaged: 'variants' is not an object; re-export the artifact")
    bad = [name for name, entry in variants.items() if not isinstance(entry, dict) or "file" not in entry]
    if bad:
        raise QconvError(f"{where} is damaged: variant entries without a 'file': {', '.join(bad)}")


def open_artifact(artifact: "Artifact | str | Path", task: str) -> "Artifact":
    """An artifact that must be of ``task`` (embedding or reranker)."""
    art = artifact if isinstance(artifact, Artifact) else Artifact(artifact)
    if art.task != task:
        article = "an" if task[0] in "aeiou" else "a"
        raise QconvError(f"{art.name} is a {art.task} artifact, not {article} {task} artifact")
    return art


def base_variant_entry(external_data: bool) -> dict[str, Any]:
    """The manifest entry of the exported fp32 graph, ``onnx/model.onnx``."""
    return {"file": variant_file(BASE_VARIANT), "precision": "fp32", "stage": "export", "external_data": external_data}


def write_new_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    manifest = {"manifest_version": MANIFEST_VERSION, "created": now_iso(), **manifest}
    manifest["packages"] = package_versions()
    manifest["files"] = hash_tree(directory)
    write_json_atomic(directory / MANIFEST, manifest)


def find_artifact(path: str | Path | None, root: str | Path = "artifacts") -> Artifact:
    """The artifact named on the command line, else ``$QCONV_ARTIFACT``, else the only one under ``root``."""
    if path:
        return Artifact(path)
    env = os.environ.get("QCONV_ARTIFACT")
    if env:
        return Artifact(env)
    root = Path(root)
    found = sorted(p.parent for p in root.glob(f"*/{MANIFEST}")) if root.is_dir() else []
    if not found:
        raise QconvError(
            f"no artifact given and none found under {root.resolve()}/ (pass ARTIFACT or set QCONV_ARTIFACT)"
        )
    if len(found) > 1:
        names = ", ".join(str(p) for p in found)
        raise QconvError(f"several artifacts under {root}/, pass one of: {names}")
    return Artifact(found[0])
