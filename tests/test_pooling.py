import json

import pytest
import torch

from qconv.convert.pooling import pool, read_st_pooling, resolve_pooling
from qconv.convert.specs import embedding_spec
from qconv.convert.st_files import check_supported_modules
from qconv.errors import QconvError


def hidden_for(lengths, pad_side, seq=5, dim=3):
    """Hidden states whose vector at each real token encodes (row, token index within the text)."""
    hidden = torch.full((len(lengths), seq, dim), float("nan"))
    mask = torch.zeros(len(lengths), seq, dtype=torch.long)
    for row, n in enumerate(lengths):
        start = seq - n if pad_side == "left" else 0
        for k in range(n):
            hidden[row, start + k] = torch.tensor([row, k, 1.0])
        mask[row, start : start + n] = 1
    return torch.nan_to_num(hidden, nan=99.0), mask


@pytest.mark.parametrize("side", ["left", "right"])
def test_lasttoken_and_cls_follow_the_mask(side):
    hidden, mask = hidden_for([2, 5, 1], side)
    last = pool(hidden, mask, "lasttoken")
    first = pool(hidden, mask, "cls")
    assert last[:, 1].tolist() == [1, 4, 0]  # index of the last real token of each text
    assert first[:, 1].tolist() == [0, 0, 0]
    assert last[:, 0].tolist() == [0, 1, 2]


@pytest.mark.parametrize("side", ["left", "right"])
def test_mean_ignores_padding(side):
    hidden, mask = hidden_for([2, 5, 1], side)
    mean = pool(hidden, mask, "mean")
    assert mean[:, 1].tolist() == pytest.approx([0.5, 2.0, 0.0])


def test_st_pooling_config(minilm_dir, tiny_qwen3, tiny_qwen3_plain):
    assert read_st_pooling(minilm_dir).mode == "mean"
    assert read_st_pooling(minilm_dir).st_normalize is True
    assert read_st_pooling(tiny_qwen3).mode == "lasttoken"
    assert read_st_pooling(tiny_qwen3_plain) is None
    assert resolve_pooling(tiny_qwen3_plain, "auto", embedding_spec("qwen3")).mode == "lasttoken"
    assert resolve_pooling(minilm_dir, "cls", embedding_spec("bert")).mode == "cls"
    with pytest.raises(QconvError, match="unknown pooling"):
        resolve_pooling(minilm_dir, "max", embedding_spec("bert"))


def test_unsupported_st_modules_are_refused(tmp_path):
    (tmp_path / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
            ]
        )
    )
    with pytest.raises(QconvError, match="'Dense' is not supported"):
        check_supported_modules(tmp_path)


def test_max_pooling_config_is_refused(tmp_path):
    (tmp_path / "modules.json").write_text(
        json.dumps([{"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}])
    )
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_max_tokens": True}))
    with pytest.raises(QconvError, match="not supported"):
        read_st_pooling(tmp_path)


def test_unknown_architecture_lists_supported():
    with pytest.raises(QconvError, match="unsupported architecture 'gpt2'.*bert, qwen3"):
        embedding_spec("gpt2")
