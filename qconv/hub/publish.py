"""``qconv publish``: an artifact to the Hugging Face Hub, or a clean publishable copy (or archive).

What is published is exactly what the manifest records (its ``files`` hashes, plus ``qconv.json``), minus
anything that is never meant to leave the machine: caches, staging and temporary files, locks. Uploads
come from a staged copy holding only those files, so nothing else in the directory can leak; the copy's
manifest lists exactly the files published. An artifact whose validation failed or is missing is refused
unless forced. The Hub token is read from ``HF_TOKEN`` only, and is never printed or written anywhere.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from qconv.artifact import (
    MANIFEST,
    Artifact,
    check_output_dir,
    clean_artifact_staging,
    clean_stale_staging,
    staged_directory,
    staging_prefix,
)
from qconv.console import console
from qconv.errors import QconvError, one_line
from qconv.hub.card import CARD_FILE, human_size, render_model_card, stale_validations, write_model_card

# Never published: temporary, lock and editor files (hidden paths, e.g. .cache/, are excluded as a whole).
_EXCLUDED_SUFFIXES = (".tmp", ".temp", ".lock", ".part", ".incomplete", ".pyc", ".swp", "~")
_EXCLUDED_NAMES = {"__pycache__", "Thumbs.db"}
# Remote paths qconv owns: stale files there (a variant removed since the last upload) are deleted.
HUB_MANAGED = ["onnx/*", "reports/*"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
ARCHIVE_SUFFIX = ".tar.gz"
# transformers.js loads dtype "q8" from this name; the recommended INT8 variant is published under it too.
QUANTIZED_ALIAS = "onnx/model_quantized.onnx"
CONFIG = "config.json"


@dataclass
class PublishResult:
    target: str  # "hub", "dir", "archive" or "dry-run"
    destination: str
    files: list[tuple[str, int]] = field(default_factory=list)  # (relative path, bytes), as published
    commit: str | None = None

    @property
    def total_bytes(self) -> int:
        return sum(size for _, size in self.files)


def is_publishable(rel: str) -> bool:
    """Whether a relative path may leave the machine (no cache, staging or temporary file)."""
    parts = PurePosixPath(rel).parts
    if not parts or any(p.startswith(".") or p in _EXCLUDED_NAMES or ".tmp-" in p for p in parts):
        return False
    return not parts[-1].endswith(_EXCLUDED_SUFFIXES)


def publishable_files(art: Artifact) -> list[str]:
    """Relative paths to publish: the manifest's recorded files that belong on the Hub, and the manifest."""
    recorded = art.manifest.get("files") or {}
    return sorted({rel for rel in recorded if is_publishable(rel)} | {MANIFEST})


def quantized_alias(art: Artifact, rels: list[str]) -> str | None:
    """The variant to publish also as ``onnx/model_quantized.onnx``: the one the card recommends, when it is
    a validated INT8 graph in one file (an alias of a graph with external data would need its data renamed)."""
    from qconv.hub.card import recommended_variant

    if QUANTIZED_ALIAS in art.manifest.get("files", {}):
        return None
    variant = recommended_variant(art)
    entry = art.variants.get(variant) or {}
    file = entry.get("file", "")
    if (
        entry.get("precision") != "int8"
        or entry.get("external_data")
        or any(r != file and r.startswith(file) for r in rels)
    ):
        return None
    return variant


def check_publishable(art: Artifact, force: bool = False) -> list[str]:
    """Problems that make ``art`` unfit to publish (variants failed, not validated, or rebuilt since).

    Raises QconvError naming them unless ``force``; returns them (for a warning) otherwise.
    """
    validation = art.manifest.get("validation") or {}
    stale = stale_validations(art)
    problems = []
    for variant in sorted(art.variants):
        results = validation.get(variant) or {}
        failed = sorted(d for d, s in results.items() if not s.get("passed"))
        outdated = sorted(d for d in results if (variant, d) in stale)
        if not results:
            problems.append(f"{variant} is not validated")
        if failed:
            problems.append(f"{variant} failed validation on {', '.join(failed)}")
        if outdated:
            problems.append(f"{variant} was rebuilt after its validation on {', '.join(outdated)}")
    if problems and not force:
        raise QconvError(
            f"refusing to publish {art.name}: {'; '.join(problems)} "
            f"(run 'qconv validate --variant V --dataset D', or pass --force)"
        )
    for problem in problems:
        console.print(f"[yellow]warning: {problem} (published anyway: --force)[/]")
    return problems


def verify_files(art: Artifact, force: bool = False, dry_run: bool = False) -> None:
    """Every recorded file exists and still has the hash its stage recorded, and every variant's graph is
    recorded (else a changed, truncated or deleted file would be published under validation results that no
    longer describe it). Publishing verifies; it never re-records a hash."""
    unrecorded = [v for v in sorted(art.variants) if art.variants[v].get("file") not in art.files]
    if unrecorded:
        raise QconvError(
            f"variant {', '.join(unrecorded)} of {art.name} has no recorded hash in the manifest; "
            f"rebuild it with the stage that makes it"
        )
    rels = [rel for rel in publishable_files(art) if rel not in (MANIFEST, CARD_FILE)]
    missing = [rel for rel in rels if not (art.path / rel).is_file()]
    if missing:
        raise QconvError(f"{', '.join(missing)} is recorded in {art.name}'s manifest but missing from {art.path}")
    changed = art.changed_files(rels, remember=not dry_run)
    if changed and not force:
        raise QconvError(
            f"{', '.join(changed)} changed since qconv recorded {'it' if len(changed) == 1 else 'them'} in "
            f"{art.name}'s manifest (sha256 differs): rebuild and revalidate, or pass --force"
        )


def published_manifest(
    art: Artifact, rels: list[str], written: dict[str, str] | None = None, aliases: dict[str, str] | None = None
) -> bytes:
    """The manifest as published: its ``files`` narrowed to the files that are published with it, with the
    hashes of the files publishing itself wrote (``written``) and the alias names (file -> variant)."""
    manifest = dict(art.manifest)
    manifest["files"] = {k: v for k, v in (art.manifest.get("files") or {}).items() if k in set(rels)}
    manifest["files"].update(written or {})
    if aliases:
        manifest["aliases"] = aliases
    return (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


class _Bundle:
    """What one publication holds: the relative paths, the published manifest, and each file's size.

    ``card_text``: a card rendered in memory (a dry run writes nothing, not even the card)."""

    def __init__(self, art: Artifact, card_text: str | None = None):
        self.art = art
        self.rels = publishable_files(art)
        self.sources = {rel: art.path / rel for rel in self.rels if rel != MANIFEST}
        self.generated: dict[str, bytes] = {}
        files: dict[str, str] = {}
        if card_text is not None:  # a dry run: the card is rendered in memory, never written
            self.sources.pop(CARD_FILE, None)
            self.generated[CARD_FILE] = card_text.encode("utf-8")
            self.rels = sorted({*self.rels, CARD_FILE})
            files[CARD_FILE] = hashlib.sha256(self.generated[CARD_FILE]).hexdigest()
        alias = quantized_alias(art, self.rels)
        if alias is not None:
            # The same bytes under transformers.js's q8 name: hard-linked in copies, one LFS object on the Hub.
            self.sources[QUANTIZED_ALIAS] = art.path / art.variants[alias]["file"]
            self.rels = sorted([*self.rels, QUANTIZED_ALIAS])
            files[QUANTIZED_ALIAS] = (art.manifest.get("files") or {}).get(art.variants[alias]["file"])
            if CONFIG in self.sources:
                config = json.loads(self.sources.pop(CONFIG).read_text(encoding="utf-8"))
                config["transformers.js_config"] = {"dtype": "q8"}  # the validated INT8 by default
                self.generated[CONFIG] = (json.dumps(config, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
                files[CONFIG] = hashlib.sha256(self.generated[CONFIG]).hexdigest()
        self.manifest = published_manifest(art, self.rels, files, {QUANTIZED_ALIAS: alias} if alias else None)
        self.generated[MANIFEST] = self.manifest

    @property
    def files(self) -> list[tuple[str, int]]:
        return [
            (rel, len(self.generated[rel]) if rel in self.generated else self.sources[rel].stat().st_size)
            for rel in self.rels
        ]

    def fill(self, target: Path, link: bool = False) -> None:
        """Copy (or hard-link, falling back to a copy) the files into ``target``; an alias is a hard link
        to its file's copy, so a copy holds the bytes once."""
        placed: dict[Path, Path] = {}
        for rel in self.rels:
            dst = target / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if rel in self.generated:
                dst.write_bytes(self.generated[rel])
                continue
            src = self.sources[rel]
            for origin in ([src] if link else []) + ([placed[src]] if src in placed else []):
                try:
                    os.link(origin, dst)
                    break
                except OSError:
                    pass
            else:
                shutil.copy2(src, dst)
            placed.setdefault(src, dst)

    def write_archive(self, destination: Path) -> None:
        """A gzipped tar with one top-level directory named after the archive, written atomically."""
        root = destination.name[: -len(ARCHIVE_SUFFIX)] or self.art.name

        def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            return info

        destination.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_staging(destination.parent)  # only pid-named staging: never a user's file
        fd, tmp = tempfile.mkstemp(prefix=staging_prefix(destination.name), suffix=".tmp", dir=destination.parent)
        os.close(fd)
        try:
            with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
                for rel in self.rels:
                    if rel in self.generated:
                        info = clean(tarfile.TarInfo(f"{root}/{rel}"))
                        info.size, info.mode = len(self.generated[rel]), 0o644
                        info.mtime = int((self.art.path / MANIFEST).stat().st_mtime)
                        tar.addfile(info, io.BytesIO(self.generated[rel]))
                    else:
                        tar.add(self.sources[rel], arcname=f"{root}/{rel}", recursive=False, filter=clean)
            os.chmod(tmp, 0o644)  # mkstemp's 0600 is for the temporary file, not the archive
            os.replace(tmp, destination)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _prepare(art: Artifact, force: bool, model_id: str | None = None, dry_run: bool = False) -> _Bundle:
    """After the validation check: the files still match the manifest, a fresh card, the bundle. A dry run
    renders the card in memory and writes nothing."""
    verify_files(art, force, dry_run)
    if dry_run:
        return _Bundle(art, card_text=render_model_card(art, model_id=model_id))
    write_model_card(art, model_id=model_id, verify=False)  # verified just above (or forced)
    return _Bundle(art)


def print_file_list(files: list[tuple[str, int]], header: str) -> None:
    console.print(header, markup=False, soft_wrap=True)
    for rel, size in files:
        console.print(f"{human_size(size):>10}  {rel}", markup=False, soft_wrap=True)
    console.print(f"{len(files)} files, {human_size(sum(s for _, s in files))}", markup=False)


def _record(art: Artifact, stage: dict) -> None:
    art.add_stage({"stage": "publish", **stage})
    art.save()


# Archive names qconv does not write: a directory called foo.zip would only mislead.
_OTHER_ARCHIVES = (".zip", ".tar", ".tgz", ".gz", ".bz2", ".xz", ".zst", ".7z", ".rar")


def _archive_path(to: Path, archive: bool) -> Path | None:
    if to.name.endswith(ARCHIVE_SUFFIX):
        _require_directory_parent(to)
        return to
    if to.name.lower().endswith(_OTHER_ARCHIVES):
        raise QconvError(f"--to {to}: qconv writes a directory or a {ARCHIVE_SUFFIX} archive, not {to.suffix}")
    _require_directory_parent(to)
    return to.with_name(to.name + ARCHIVE_SUFFIX) if archive else None


def _require_directory_parent(to: Path) -> None:
    for parent in Path(to).resolve().parents:
        if parent.exists():
            if not parent.is_dir():
                raise QconvError(f"--to {to}: {parent} is a file, not a directory")
            return


def publish_to_dir(
    art: Artifact | str | Path,
    to: str | Path,
    *,
    force: bool = False,
    archive: bool = False,
    overwrite: bool = False,
    dry_run: bool = False,
) -> PublishResult:
    """A clean, publishable copy of ``art`` in ``to`` (a ``.tar.gz`` when ``archive`` or ``to`` ends so)."""
    art = art if isinstance(art, Artifact) else Artifact(art)
    tarball = _archive_path(Path(to), archive)
    destination = (tarball or Path(to)).expanduser().resolve()
    if destination == art.path or art.path in destination.parents:
        raise QconvError(f"--to {destination} is inside the artifact {art.path}; choose a path outside it")
    if tarball is not None:
        check_archive_target(destination, overwrite=overwrite, protected=[art.path])
    else:
        # --overwrite replaces only a copy qconv published (its manifest records every file in it), never the
        # artifact's parent, the artifact itself or a folder of the user's.
        check_output_dir(destination, overwrite=overwrite, protected=[art.path])
    check_publishable(art, force)
    bundle = _prepare(art, force, dry_run=dry_run)
    files = bundle.files
    if dry_run:
        print_file_list(files, f"would write {len(files)} files to {destination}:")
        return PublishResult("dry-run", str(destination), files)
    if tarball is not None:
        bundle.write_archive(destination)
    else:
        with staged_directory(destination, overwrite=overwrite, protected=[art.path]) as tmp:
            bundle.fill(tmp)
            tmp.chmod(0o755)  # mkdtemp's 0700 is for staging, not for a copy meant to be shared
    kind = "archive" if tarball is not None else "dir"
    total = sum(s for _, s in files)
    _record(art, {"target": kind, "path": str(destination), "files": len(files), "bytes": total})
    console.print(f"[green]published[/] {len(files)} files ({human_size(total)}) to {destination}", soft_wrap=True)
    return PublishResult(kind, str(destination), files)


def check_archive_target(destination: Path, *, overwrite: bool, protected: list[Path]) -> None:
    """An archive may replace only an archive qconv wrote (one top-level folder holding a qconv.json)."""
    for path in protected:
        if path in destination.parents:
            raise QconvError(f"--to {destination} is inside {path}; choose a path outside it")
    if not destination.exists():
        return
    if destination.is_dir():
        raise QconvError(f"{destination} is a directory; pass another --to")
    if not overwrite:
        raise QconvError(f"{destination} already exists and is not empty (pass --overwrite to replace it)")
    try:
        with tarfile.open(destination, "r:gz") as tar:
            names = tar.getnames()
    except (OSError, tarfile.TarError, EOFError):
        names = []
    roots = {PurePosixPath(n).parts[0] for n in names if PurePosixPath(n).parts}
    if len(roots) != 1 or f"{next(iter(roots))}/{MANIFEST}" not in names:
        raise QconvError(
            f"refusing to replace {destination}: it is not an archive qconv published (no {MANIFEST} inside); "
            f"remove it yourself or choose another --to"
        )


def hub_token() -> str:
    """The Hub token, from ``HF_TOKEN`` only (never from a file, never printed)."""
    token = os.environ.get("HF_TOKEN", "").strip()
    if not token:
        raise QconvError(
            "HF_TOKEN is not set: export a Hugging Face token with write access as HF_TOKEN "
            "(or use --dry-run, or --to DIR for a local copy)"
        )
    return token


def _scrub(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


def publish_to_hub(
    art: Artifact | str | Path,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool = False,
    dry_run: bool = False,
    force: bool = False,
) -> PublishResult:
    """Upload ``art`` to the Hub model repository ``repo_id`` (created if needed; branch ``revision``)."""
    art = art if isinstance(art, Artifact) else Artifact(art)
    if not _REPO_ID.match(repo_id or "") or "--" in repo_id or ".." in repo_id:
        raise QconvError(f"--repo-id must look like ORG/NAME, got '{repo_id}'")
    check_publishable(art, force)
    token = None if dry_run else hub_token()
    bundle = _prepare(art, force, model_id=repo_id, dry_run=dry_run)
    files = bundle.files
    total = sum(s for _, s in files)
    where = f"{repo_id}" + (f"@{revision}" if revision else "")
    if dry_run:
        print_file_list(files, f"would upload {len(files)} files to https://huggingface.co/{where}:")
        return PublishResult("dry-run", where, files)

    from huggingface_hub import HfApi

    from qconv import __version__

    clean_artifact_staging(art.path)
    staging = Path(tempfile.mkdtemp(prefix=staging_prefix(f"{art.name}.publish"), dir=art.path.parent))
    try:
        bundle.fill(staging, link=True)
        api = HfApi(token=token)
        with console.status(f"uploading {len(files)} files ({human_size(total)}) to {where}"):
            api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
            if revision:
                api.create_branch(repo_id=repo_id, branch=revision, repo_type="model", exist_ok=True)
            info = api.upload_folder(
                repo_id=repo_id,
                folder_path=str(staging),
                repo_type="model",
                revision=revision,
                commit_message=f"Upload {art.name} (qconv {__version__})",
                delete_patterns=HUB_MANAGED,
            )
    except QconvError:
        raise
    except Exception as exc:  # any Hub failure (auth, network, permissions) becomes one line, token scrubbed
        raise QconvError(f"upload of {art.name} to {where} failed: {_scrub(one_line(exc), token or '')}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    commit = getattr(info, "oid", None)
    _record(
        art,
        {
            "target": "hub",
            "repo_id": repo_id,
            "revision": revision,
            "private": private,
            "files": len(files),
            "bytes": total,
            "commit": commit,
        },
    )
    url = getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}"
    console.print(f"[green]published[/] {len(files)} files ({human_size(total)}) to {where}: {url}", soft_wrap=True)
    return PublishResult("hub", where, files, commit=commit)
