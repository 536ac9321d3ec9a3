"""``qconv demo``: export + validate end to end, offline, on a built-in random Qwen3 embedding model."""

from __future__ import annotations

import os
from pathlib import Path

from .console import console
from .testmodels import RANDOM_WEIGHTS_NOTE, create_qwen3_embedding

DEMO_MODEL_NAME = "qwen3-embedding-tiny-random"


def demo_source_dir() -> Path:
    root = os.environ.get("QCONV_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "qconv")
    return Path(root) / "models" / DEMO_MODEL_NAME


def run_demo(output_root: str | Path = "artifacts", limit: int | None = None) -> dict:
    from qconv.convert.export import export_embedding
    from qconv.validate.embedding import validate_embedding

    console.print(f"[bold yellow]demo model {DEMO_MODEL_NAME}: {RANDOM_WEIGHTS_NOTE}[/]")
    source = demo_source_dir()
    if not (source / "model.safetensors").is_file():
        with console.status("building the demo model (random Qwen3, real Qwen vocabulary)"):
            create_qwen3_embedding(source)
    result = export_embedding(str(source), Path(output_root) / DEMO_MODEL_NAME, overwrite=True)
    report = validate_embedding(result.path, "sts12", offline=True, limit=limit, note=RANDOM_WEIGHTS_NOTE)
    console.print(f"[bold yellow]reminder: {RANDOM_WEIGHTS_NOTE}; export a real checkpoint with "
                  f"'qconv export embedding --model DIR'[/]")
    return report
