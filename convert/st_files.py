"""sentence-transformers module files of an artifact, kept consistent with the exported graph.

sentence-transformers' ONNX backend reads ``last_hidden_state`` and applies its own Pooling and
Normalize modules, so these files must describe exactly what the graph's ``sentence_embedding`` does.
"""

from __future__ import annotations

import json
from pathlib import Path

from qconv.errors import QconvError

from .pooling import POOLING_MODES

_SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")


def check_supported_modules(model_dir: Path) -> None:
    """Refuse pipelines with modules the graph would silently drop (Dense projections, etc.)."""
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        return
    for module in json.loads(modules_file.read_text(encoding="utf-8")):
        kind = module.get("type", "").rsplit(".", 1)[-1]
        if kind not in _SUPPORTED_MODULES:
            raise QconvError(
                f"{modules_file}: sentence-transformers module '{kind}' is not supported "
                f"(supported: {', '.join(_SUPPORTED_MODULES)})"
            )


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def source_prompts(model_dir: Path, default: dict[str, str]) -> tuple[dict, str]:
    """The config_sentence_transformers.json to ship, and where its prompts came from."""
    config = read_json(model_dir / "config_sentence_transformers.json")
    if config:
        return config, "config_sentence_transformers.json"
    return {
        "prompts": dict(default),
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    }, "architecture default"


def write_st_files(
    out: Path, *, pooling: str, normalize: bool, dimension: int, max_length: int, do_lower_case: bool, st_config: dict
) -> list[str]:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    pooling_config = {
        "word_embedding_dimension": dimension,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "include_prompt": True,
    }
    for mode in POOLING_MODES:
        key = {
            "lasttoken": "pooling_mode_lasttoken",
            "mean": "pooling_mode_mean_tokens",
            "cls": "pooling_mode_cls_token",
        }[mode]
        pooling_config[key] = mode == pooling
    files = {
        "modules.json": modules,
        "1_Pooling/config.json": pooling_config,
        "sentence_bert_config.json": {"max_seq_length": max_length, "do_lower_case": do_lower_case},
        "config_sentence_transformers.json": st_config,
    }
    for rel, content in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if normalize:
        (out / "2_Normalize").mkdir(exist_ok=True)
    return sorted(files)
