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
import re
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Iterator

from qconv.errors import QconvError

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
# qconv's own staging names carry the writer's pid, so a later writer can tell an interrupted run's
# leftovers (its process is gone) from a concurrent writer's work in progress (still alive).
STAGING_MARK = ".qstage-"
_STAGING_NAME = re.compile(r"^\.(?:.*)\.qstage-(?P<pid>\d+)-[^/]*$")
# Names of earlier qconv versions (no pid), matched exactly as they were made (``tempfile`` suffixes of 8
# characters, or a pid): inside an artifact's onnx/, and for one artifact name beside it (never a pattern
# that could match a user's own hidden files in a shared parent directory).
_LEGACY_IN_ONNX = re.compile(r"^\.(?:quantize|optimize)-[a-z0-9_]{8}$")


def _legacy_beside(name: str) -> re.Pattern:
    return re.compile(rf"^\.{re.escape(name)}\.(?:(?:tmp|publish)-[a-z0-9_]{{8}}|old-\d+)$")


# What every reader of a manifest relies on: a hand-edited or damaged manifest is named up front, not a KeyError.
# The task's own section lists its keys in its Task (``manifest_keys``, qconv/tasks).
REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "": ("task", "source", "variants"),
    "source": ("model", "kind", "content_sha256"),
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
    """sha256 of every file under ``root`` (relative POSIX paths), except the manifest, caches and staging."""
    return {rel: sha256_file(root / rel) for rel in tree_files(root)}


def tree_files(root: Path) -> list[str]:
    """Relative POSIX paths of the files under ``root`` that belong to an artifact: not the manifest,
    caches, or qconv's staging and temporary files (hidden names)."""
    files = []
    for path in sorted(Path(root).rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] in _NOT_HASHED_DIRS or rel.as_posix() == MANIFEST or not path.is_file():
            continue
        if any(part.startswith(".") for part in rel.parts):
            continue
        files.append(rel.as_posix())
    return files


def staging_prefix(name: str) -> str:
    """The prefix of a staging path qconv makes for ``name`` (hidden, with this process's pid)."""
    return f".{name}{STAGING_MARK}{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale_staging(path: Path, legacy: re.Pattern | None = None) -> bool:
    """A staging or temporary path of qconv's own naming whose writer is no longer running (``legacy``: a
    name an earlier qconv version used there)."""
    match = _STAGING_NAME.match(path.name)
    if match:
        return not _pid_alive(int(match.group("pid")))
    return bool(legacy and legacy.match(path.name))


def clean_stale_staging(directory: Path, legacy: re.Pattern | None = None) -> list[Path]:
    """Remove what interrupted qconv writers left in ``directory`` (never anything of another name)."""
    removed = []
    directory = Path(directory)
    if not directory.is_dir():
        return removed
    for path in directory.iterdir():
        if is_stale_staging(path, legacy):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()
            removed.append(path)
    return removed


def clean_artifact_staging(art_path: Path) -> None:
    """Leftovers of interrupted writers in an artifact: its top level, ``onnx/``, ``reports/``, and the
    export/publish staging beside it."""
    art_path = Path(art_path)
    clean_stale_staging(art_path)
    clean_stale_staging(art_path / ONNX_DIR, _LEGACY_IN_ONNX)
    clean_stale_staging(art_path / REPORTS_DIR)
    clean_stale_staging(art_path.parent, _legacy_beside(art_path.name))


def variant_file(variant: str) -> str:
    """``model`` -> ``onnx/model.onnx``; ``O2`` -> ``onnx/model_O2.onnx`` (sentence-transformers layout)."""
    return f"{ONNX_DIR}/model.onnx" if variant == BASE_VARIANT else f"{ONNX_DIR}/model_{variant}.onnx"


def _nested(a: Path, b: Path) -> bool:
    return a == b or b in a.parents or a in b.parents


def check_output_dir(
    target: Path, *, overwrite: bool, protected: Iterable[Path] = (), flag: str = "--overwrite"
) -> Path:
    """Raise unless ``target`` may be written: it is absent or empty, or (with ``overwrite``) a directory
    qconv made. Never one that holds, or lies inside, a ``protected`` path (the source model, the artifact
    being read): replacing it would delete what qconv is reading. Returns the resolved target."""
    target = Path(target).expanduser().resolve()
    for path in protected:
        path = Path(path).expanduser().resolve()
        if _nested(target, path):
            where = "is" if target == path else ("is inside" if path in target.parents else "holds")
            raise QconvError(f"output {target} {where} {path}, which this command reads; choose another output")
    if target.exists() and not target.is_dir():
        raise QconvError(f"output {target} is a file, not a directory; choose another output")
    blocking = next((p for p in target.parents if p.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise QconvError(f"output {target}: {blocking} is a file, not a directory")
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise QconvError(f"output directory {target} already exists and is not empty (pass {flag} to replace it)")
        require_qconv_made(target)
    return target


def require_qconv_made(directory: Path) -> None:
    """Raise unless ``directory`` is one qconv made and holds nothing else: a qconv manifest (artifacts and
    published copies carry one) that records every file in it. A user's folder, a model checkpoint or an
    artifact someone added files to is never replaced."""
    manifest_path = directory / MANIFEST
    manifest = None
    if manifest_path.is_file():
        with contextlib.suppress(OSError, ValueError):
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if not isinstance(manifest, dict) or "task" not in manifest:
        raise QconvError(
            f"refusing to replace {directory}: it was not made by qconv (no {MANIFEST} manifest); "
            f"remove it yourself or choose another output"
        )
    recorded = manifest.get("files") if isinstance(manifest.get("files"), dict) else {}
    foreign = [rel for rel in tree_files(directory) if rel not in recorded]
    foreign += [
        p.name
        for p in directory.iterdir()
        if p.name.startswith(".") and p.name != CACHE_DIR and not is_stale_staging(p)
    ]
    if foreign:
        shown = ", ".join(sorted(foreign)[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise QconvError(
            f"refusing to replace {directory}: it holds files qconv did not record ({shown}); "
            f"move them away or choose another output"
        )


@contextlib.contextmanager
def staged_directory(target: Path, overwrite: bool = False, protected: Iterable[Path] = ()) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``target`` only if the block completes.

    ``target`` must pass :func:`check_output_dir` (checked again here, before anything is written). On any
    exception the temporary directory is removed and ``target`` is left exactly as it was.
    """
    target = check_output_dir(target, overwrite=overwrite, protected=protected)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(target.parent, _legacy_beside(target.name))
    tmp = Path(tempfile.mkdtemp(prefix=staging_prefix(target.name), dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    backup = None
    if target.exists():
        backup = target.parent / f"{staging_prefix(target.name)}old"
        os.replace(target, backup)
    try:
        os.replace(tmp, target)
    except BaseException:
        if backup is not None:
            os.replace(backup, target)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write through a temp file in the same directory, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=staging_prefix(path.name), dir=path.parent)
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

    def variant_path(self, variant: str, verify: bool = False) -> Path:
        """The variant's graph file. ``verify``: also check that it (and its external data) still has the
        hash its stage recorded, so no stage builds on, validates or measures a damaged file."""
        if variant not in self.variants:
            known = ", ".join(sorted(self.variants)) or "none"
            raise QconvError(f"artifact {self.name} has no variant '{variant}' (variants: {known})")
        path = self.path / self.variants[variant]["file"]
        if not path.is_file():
            raise QconvError(f"variant '{variant}' is listed in the manifest but {path} is missing")
        if verify:
            self.require_intact(self.variant_files(variant), f"variant '{variant}'")
        return path

    def cache_dir(self, kind: str) -> Path:
        path = self.path / CACHE_DIR / kind
        path.mkdir(parents=True, exist_ok=True)
        return path

    def add_stage(self, stage: dict[str, Any]) -> None:
        self.manifest.setdefault("stages", []).append({"time": now_iso(), **stage})

    @property
    def files(self) -> dict[str, str]:
        """Relative path -> sha256, as recorded by the stage that wrote each file."""
        return self.manifest.setdefault("files", {})

    def record_files(self, *rels: str) -> None:
        """Record the hashes of files this stage has just written (a path no longer there is forgotten)."""
        for rel in rels:
            path = self.path / rel
            if path.is_file():
                self.files[rel] = sha256_file(path)
                _hash_cache_put(self, rel, path, self.files[rel])
            else:
                self.files.pop(rel, None)
        self.manifest["files"] = dict(sorted(self.files.items()))

    def changed_files(self, rels: Iterable[str] | None = None, remember: bool = True) -> list[str]:
        """Recorded files (all, or ``rels``) that are missing or whose content no longer has the recorded
        hash. A (size, mtime_ns, inode) cache avoids re-reading unchanged multi-GB graphs on every check;
        ``remember=False`` (a dry run) leaves even that cache untouched."""
        changed = []
        for rel in self.files if rels is None else rels:
            digest = self.files.get(rel)
            path = self.path / rel
            if digest is None or not path.is_file() or _current_hash(self, rel, path, remember) != digest:
                changed.append(rel)
        return changed

    def variant_files(self, variant: str) -> list[str]:
        """The graph of ``variant`` and its external data file, as relative paths (those recorded)."""
        graph = self.variants[variant]["file"]
        return [graph] + sorted(k for k in self.files if k.startswith(graph + "_data"))

    def require_intact(self, rels: Iterable[str], what: str) -> None:
        """Raise unless every file in ``rels`` still has the hash its stage recorded."""
        changed = self.changed_files(list(rels))
        if changed:
            if all(not (self.path / rel).is_file() for rel in changed):
                how = "is missing"
            elif all(rel not in self.files for rel in changed):
                how = "has no hash recorded by the stage that made it"
            else:
                how = "changed since qconv recorded it (sha256 differs)"
            raise QconvError(
                f"{what}: {', '.join(changed)} {how} in {self.name}; rebuild it (re-run the stage that made it)"
            )

    @contextlib.contextmanager
    def staged_outputs(self, subdir: str = REPORTS_DIR) -> Iterator[Path]:
        """Write a stage's output files as one step: yield a staging directory; files written there (flat)
        replace ``<subdir>/<name>`` only when the block completes, and the manifest (changed inside the
        block) is saved last with their hashes. On any failure (a full disk while writing a report or the
        manifest) the old files and the old manifest are left exactly as they were."""
        import copy

        final_dir = self.path / subdir if subdir else self.path
        final_dir.mkdir(parents=True, exist_ok=True)
        clean_artifact_staging(self.path)
        before = copy.deepcopy(self.manifest)
        stage = Path(tempfile.mkdtemp(prefix=staging_prefix(subdir or "outputs"), dir=final_dir))
        backup = stage / ".old"
        moved: list[tuple[Path, Path | None]] = []
        try:
            yield stage
            produced = sorted(p for p in stage.iterdir() if p.is_file())
            backup.mkdir()
            for path in produced:
                final = final_dir / path.name
                kept = None
                if final.exists():
                    kept = backup / path.name
                    os.replace(final, kept)
                os.replace(path, final)
                moved.append((final, kept))
            self.record_files(*(f.relative_to(self.path).as_posix() for f, _ in moved))
            self.save()
        except BaseException:
            for final, kept in reversed(moved):
                with contextlib.suppress(OSError):
                    if kept is not None:
                        os.replace(kept, final)
                    else:
                        final.unlink()
            self.manifest.clear()
            self.manifest.update(before)
            raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def save(self) -> None:
        """Rewrite the manifest atomically. File hashes are recorded by the stage that wrote each file
        (``record_files``), never re-read here: a damaged file must not become "good" by a later save."""
        self.manifest["updated"] = now_iso()
        write_json_atomic(self.path / MANIFEST, self.manifest)


def check_manifest(manifest: dict[str, Any], where: Path) -> None:
    """Every key qconv reads later is there, with the right shape; else one line naming what is missing."""
    from qconv.tasks import TASKS  # here, not at the top: task modules may import the artifact core

    task = manifest["task"]
    if task not in TASKS:
        raise QconvError(f"{where}: unknown task '{task}' ({' or '.join(TASKS)})")
    sections = {"": manifest, "source": manifest.get("source"), task: manifest.get(task)}
    required = {**REQUIRED_KEYS, task: TASKS[task].manifest_keys}
    for name, section in sections.items():
        label = f"'{name}'" if name else "the manifest"
        if not isinstance(section, dict):
            raise QconvError(f"{where} is damaged: {label} is missing or not an object; re-export the artifact")
        missing = [key for key in required[name] if key not in section]
        if missing:
            raise QconvError(f"{where} is damaged: {label} lacks {', '.join(missing)}; re-export the artifact")
    variants = manifest["variants"]
    if not isinstance(variants, dict):
        raise QconvError(f"{where} is damaged: 'variants' is not an object; re-export the artifact")
    bad = [name for name, entry in variants.items() if not isinstance(entry, dict) or "file" not in entry]
    if bad:
        raise QconvError(f"{where} is damaged: variant entries without a 'file': {', '.join(bad)}")


def open_artifact(artifact: "Artifact | str | Path", task: str) -> "Artifact":
    """An artifact that must be of ``task`` (a name in qconv.tasks.TASKS)."""
    art = artifact if isinstance(artifact, Artifact) else Artifact(artifact)
    if art.task != task:
        article = "an" if task[0] in "aeiou" else "a"
        raise QconvError(f"{art.name} is a {art.task} artifact, not {article} {task} artifact")
    return art


def new_build_id() -> str:
    """A fresh id for every (re)build of a variant: what was validated, benchmarked or reported is tied to
    one build, so a rebuilt variant re-runs them even when its bytes come out the same."""
    import uuid

    return uuid.uuid4().hex


def base_variant_entry(external_data: bool) -> dict[str, Any]:
    """The manifest entry of the exported fp32 graph, ``onnx/model.onnx``."""
    return {
        "file": variant_file(BASE_VARIANT),
        "precision": "fp32",
        "stage": "export",
        "external_data": external_data,
        "build_id": new_build_id(),
    }


def _hash_cache_path(art: Artifact) -> Path:
    return art.path / CACHE_DIR / "hashes.json"


def _hash_cache(art: Artifact) -> dict:
    cache = getattr(art, "_hash_cache", None)
    if cache is None:
        try:
            cache = json.loads(_hash_cache_path(art).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cache = {}
        art._hash_cache = cache if isinstance(cache, dict) else {}
    return art._hash_cache


def _stat_key(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def _hash_cache_put(art: Artifact, rel: str, path: Path, digest: str) -> None:
    cache = _hash_cache(art)
    cache[rel] = [*_stat_key(path), digest]
    with contextlib.suppress(OSError):  # only a cache: a read-only or full disk just means re-reading later
        _hash_cache_path(art).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(_hash_cache_path(art), cache)


def _current_hash(art: Artifact, rel: str, path: Path, remember: bool = True) -> str:
    entry = _hash_cache(art).get(rel)
    if isinstance(entry, list) and len(entry) == 4 and entry[:3] == _stat_key(path):
        return entry[3]
    digest = sha256_file(path)
    if remember:
        _hash_cache_put(art, rel, path, digest)
    return digest


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
