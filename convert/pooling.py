"""Pooling, identical in the exported graph and in the PyTorch reference, and its resolution.

Positions are found from the attention mask, never from the pad id: Qwen3-Embedding appends
<|endoftext|>, which is also its pad token, so the real last token *is* the pad id. Indexing by the
mask is correct for left and right padding alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from qconv.errors import QconvError

from .specs import POOLING_MODES, EmbeddingSpec


def pool(hidden, attention_mask, mode: str):
    """(batch, seq, dim) hidden states -> (batch, dim) sentence vectors."""
    import torch

    mask = attention_mask.to(hidden.dtype)
    if mode == "mean":
        summed = (hidden * mask.unsqueeze(-1)).sum(dim=1)
        return summed / mask.sum(dim=1, keepdim=True).clamp(min=1e-9)
    # ArgMax over float, not int64: CUDA registers ArgMax for float types only, and an int64 ArgMax would
    # send the pooling to the CPU (a fallback and two copies per run). Positions < 2**24 are exact in fp32.
    positions = torch.arange(attention_mask.shape[1], device=hidden.device, dtype=torch.float32).unsqueeze(0)
    mask_f = attention_mask.to(torch.float32)
    if mode == "lasttoken":
        index = (mask_f * positions).argmax(dim=-1)
    elif mode == "cls":
        # First attended token: position 0 under right padding, the first real token under left padding.
        index = (mask_f * (attention_mask.shape[1] - positions)).argmax(dim=-1)
    else:
        raise ValueError(f"unknown pooling mode {mode!r}")
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]


@dataclass(frozen=True)
class PoolingChoice:
    mode: str
    source: str  # where the choice came from, for the manifest
    st_normalize: bool | None  # whether the sentence-transformers pipeline has a Normalize module


_ST_MODE_KEYS = {
    "pooling_mode_lasttoken": "lasttoken",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
}


def read_st_pooling(model_dir: Path) -> PoolingChoice | None:
    """The pooling declared by sentence-transformers files (modules.json + its Pooling config), if any."""
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        return None
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise QconvError(f"{modules_file} is not valid JSON ({exc})") from exc
    pooling_module = next((m for m in modules if m.get("type", "").endswith(".Pooling")), None)
    normalize = any(m.get("type", "").endswith(".Normalize") for m in modules)
    if pooling_module is None:
        return None
    config_file = model_dir / pooling_module.get("path", "") / "config.json"
    if not config_file.is_file():
        raise QconvError(f"{modules_file} names a Pooling module but {config_file} is missing")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if "pooling_mode" in config:  # newer sentence-transformers writes a single key
        modes = [config["pooling_mode"].replace("_token", "").replace("mean_tokens", "mean")]
    else:
        modes = [mode for key, mode in _ST_MODE_KEYS.items() if config.get(key)]
        unsupported = [
            k
            for k in (
                "pooling_mode_max_tokens",
                "pooling_mode_mean_sqrt_len_tokens",
                "pooling_mode_weightedmean_tokens",
            )
            if config.get(k)
        ]
        if unsupported:
            raise QconvError(
                f"{config_file}: pooling {', '.join(unsupported)} is not supported "
                f"(supported: {', '.join(POOLING_MODES)})"
            )
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise QconvError(
            f"{config_file}: expected exactly one of {', '.join(POOLING_MODES)} pooling, found {modes or 'none'}"
        )
    if config.get("include_prompt") is False:
        raise QconvError(f"{config_file}: include_prompt=false (prompt tokens excluded from pooling) is not supported")
    return PoolingChoice(modes[0], f"sentence-transformers ({config_file.parent.name}/config.json)", normalize)


def resolve_pooling(model_dir: Path, requested: str, spec: EmbeddingSpec) -> PoolingChoice:
    if requested != "auto":
        if requested not in POOLING_MODES:
            raise QconvError(f"unknown pooling '{requested}' (choose auto, {', '.join(POOLING_MODES)})")
        st = read_st_pooling(model_dir)
        return PoolingChoice(requested, "--pooling", st.st_normalize if st else None)
    return read_st_pooling(model_dir) or PoolingChoice(spec.default_pooling, f"{spec.model_type} default", None)
