"""Writing a new variant beside the others: a staging directory inside ``onnx/``, a check while the file is
registered provisionally, the move into place, and the facts every manifest entry records.

Shared by ``quantize`` and ``optimize``: the new file never replaces an old one unless its check passed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

from qconv.artifact import ONNX_DIR, Artifact, clean_artifact_staging, staging_prefix

from .onnx_graph import EXTERNAL_DATA_THRESHOLD, external_data_name, read_onnx
from .onnx_proto import save_with_external_data


def onnx_bytes(path: Path) -> int:
    """Size of an ONNX file plus its external data file, if any."""
    path = Path(path)
    return path.stat().st_size + sum(p.stat().st_size for p in path.parent.glob(external_data_name(path)))


def needs_external_data(source: Path) -> bool:
    return onnx_bytes(source) > EXTERNAL_DATA_THRESHOLD


def save_model(model, path: Path, external: bool) -> None:
    """Save an onnx ModelProto, weights in ``<file>_data`` when ``external``; ``model`` is left as it was."""
    import onnx

    if external:
        save_with_external_data(model, path, external_data_name(path))
    else:
        onnx.save_model(model, str(path))


def save_probe(model, values: list[str], path: Path) -> None:
    """Save ``model`` with the intermediate ``values`` as extra outputs (to read activations), untouched."""
    save_with_external_data(model, path, external_data_name(path), extra_outputs=tuple(values))


def op_counts(path: Path) -> dict[str, int]:
    """op_type -> count for an ONNX file (graph only, weights not read), most common first."""
    model = read_onnx(path, load_external_data=False)
    return dict(Counter(n.op_type for n in model.graph.node).most_common())


@contextlib.contextmanager
def staging_dir(art: Artifact, prefix: str) -> Iterator[Path]:
    """A temporary directory inside the artifact's ``onnx/`` (same filesystem: the final move is a rename).
    What interrupted writers left there before is removed first."""
    clean_artifact_staging(art.path)
    work = Path(tempfile.mkdtemp(prefix=staging_prefix(prefix), dir=art.path / ONNX_DIR))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check_staged(art: Artifact, variant: str, staged: Path, precision: str, check: Callable[[str], dict]) -> dict:
    """Run ``check(provisional_variant_name)`` while the staged file is registered under a temporary name."""
    name = f"{variant}.staged"
    art.variants[name] = {"file": staged.relative_to(art.path).as_posix(), "precision": precision}
    try:
        return check(name)
    finally:
        del art.variants[name]


def install_staged(art: Artifact, staged: Path, target: Path) -> None:
    """Replace ``target`` (and its external data) with the staged file (and its external data), and record
    the new files' hashes (this stage wrote them)."""
    for path in (target, target.parent / external_data_name(target)):
        if path.exists():
            path.unlink()
    for produced in (staged, staged.parent / external_data_name(staged)):
        if produced.exists():
            name = target.name if produced == staged else external_data_name(target)
            os.replace(produced, target.parent / name)
            # Some writers create their files 0600 (tempfile): give the variant the same mode as its siblings.
            os.chmod(target.parent / name, 0o666 & ~_umask())
    rels = [p.relative_to(art.path).as_posix() for p in (target, target.parent / external_data_name(target))]
    art.record_files(*rels)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_facts(target: Path) -> dict:
    """size_bytes, external_data and op_counts of an installed variant."""
    return {
        "size_bytes": onnx_bytes(target),
        "external_data": (target.parent / external_data_name(target)).exists(),
        "op_counts": op_counts(target),
    }
