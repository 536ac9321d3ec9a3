"""qconv testmodel create: the published Qwen3 shapes, checked without allocating."""

import json

import pytest

from qconv.testmodels import PUBLISHED_SHAPES, parameter_count


def test_published_parameter_counts_on_the_meta_device():
    assert parameter_count(PUBLISHED_SHAPES["qwen3-0.6b"], "embedding") == pytest.approx(0.596e9, rel=0.01)
    assert parameter_count(PUBLISHED_SHAPES["qwen3-4b"], "embedding") == pytest.approx(4.02e9, rel=0.01)
    # 8B does not tie its LM head: the reranker (causal LM) carries a second 151669 x 4096 matrix
    emb8, lm8 = (
        parameter_count(PUBLISHED_SHAPES["qwen3-8b"], "embedding"),
        parameter_count(PUBLISHED_SHAPES["qwen3-8b"], "reranker"),
    )
    assert emb8 == pytest.approx(7.57e9, rel=0.01) and lm8 - emb8 == 151669 * 4096


def test_create_shrunk_model(run_cli, tmp_path):
    from transformers import AutoConfig

    code, out, err = run_cli(
        "testmodel", "create", tmp_path / "m", "--shape", "qwen3-0.6b", "--kind", "reranker", "--layers", "1"
    )
    assert code == 0, err
    assert "random weights" in out
    config = AutoConfig.from_pretrained(tmp_path / "m")
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (1024, 1, 151669)
    assert config.architectures == ["Qwen3ForCausalLM"]
    note = json.loads((tmp_path / "m" / "qconv_testmodel.json").read_text())
    assert "random weights" in note["weights"] and note["layers"] == 1
    code, _, err = run_cli("testmodel", "create", tmp_path / "x", "--shape", "qwen3-70b")
    assert code == 2 and "unknown shape 'qwen3-70b'" in err
