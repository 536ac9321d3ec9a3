"""``qconv demo``: export + validate end to end, offline, on built-in random Qwen3 models.

An embedding model (validated on the bundled STS12 sample) and a reranker (converted to a seq-cls head,
validated on the bundled MS MARCO sample). Both have random weights: task metrics are meaningless, the
parity with PyTorch is real.
"""

from __future__ import annotations

import os
from pathlib import Path

from .console import console
from .errors import QconvError
from .testmodels import RANDOM_WEIGHTS_NOTE, create_qwen3_embedding, create_qwen3_reranker

DEMO_MODEL_NAME = "qwen3-embedding-tiny-random"
DEMO_RERANKER_NAME = "qwen3-reranker-tiny-random"
DEMO_TASKS = ("embedding", "reranker", "all")


def demo_source_dir(name: str) -> Path:
    root = os.environ.get("QCONV_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "qconv")
    return Path(root) / "models" / name


def _source(name: str, create) -> Path:
    source = demo_source_dir(name)
    if not (source / "model.safetensors").is_file():
        with console.status(f"building {name} (random Qwen3, real Qwen vocabulary)"):
            create(source)
    return source


def run_demo(output_root: str | Path = "artifacts", limit: int | None = None, task: str = "all") -> list[dict]:
    from qconv.convert.export import export_embedding
    from qconv.convert.reranker_export import export_reranker
    from qconv.validate.embedding import validate_embedding
    from qconv.validate.rerank import validate_reranker

    if task not in DEMO_TASKS:
        raise QconvError(f"unknown demo task '{task}' (choose {', '.join(DEMO_TASKS)})")
    console.print(f"[bold yellow]demo models: {RANDOM_WEIGHTS_NOTE}[/]")
    reports = []
    if task in ("embedding", "all"):
        source = _source(DEMO_MODEL_NAME, create_qwen3_embedding)
        result = export_embedding(str(source), Path(output_root) / DEMO_MODEL_NAME, overwrite=True)
        reports.append(validate_embedding(result.path, "sts12", offline=True, limit=limit, note=RANDOM_WEIGHTS_NOTE))
    if task in ("reranker", "all"):
        source = _source(DEMO_RERANKER_NAME, create_qwen3_reranker)
        result = export_reranker(str(source), Path(output_root) / f"{DEMO_RERANKER_NAME}-seq-cls", overwrite=True)
        reports.append(
            validate_reranker(result.path, "msmarco", offline=True, limit=limit or 30, note=RANDOM_WEIGHTS_NOTE)
        )
    console.print(
        f"[bold yellow]reminder: {RANDOM_WEIGHTS_NOTE}. Real checkpoints: 'qconv export embedding "
        f"--model DIR', 'qconv export reranker --seq-cls --model DIR'.[/]"
    )
    return reports
