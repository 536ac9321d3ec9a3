"""qconv testmodel create: the published Qwen3 shapes, checked without allocating."""

import json

import pytest

from qconv.testing.testmodels import PUBLISHED_SHAPES, parameter_count


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


def _forward_stats(model_dir, texts):
    """Residual stream after every decoder layer and every RMSNorm's output, through forward hooks."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    residual, normed = {}, []
    hooks = [
        layer.register_forward_hook(lambda m, i, o, k=k: residual.__setitem__(k, o[0] if isinstance(o, tuple) else o))
        for k, layer in enumerate(model.layers)
    ]
    for layer in model.layers:
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            hooks.append(norm.register_forward_hook(lambda m, i, o: normed.append(o)))
    with torch.no_grad():
        model(**batch)
    for hook in hooks:
        hook.remove()
    return batch, residual, normed


def test_outlier_model_has_the_published_activation_shape(outlier_qwen3):
    """Massive activations from the generator layer on, on delimiter tokens; fixed outlier channels post-norm."""
    import torch

    planted = json.loads((outlier_qwen3 / "qconv_outliers.json").read_text())
    texts = [
        "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery: what is RMSNorm?",
        "Hello, world. 如何提高借款额度？",
        "no delimiter here at all",
    ]
    batch, residual, normed = _forward_stats(outlier_qwen3, texts)
    mask = batch["attention_mask"].bool()
    trigger = torch.isin(batch["input_ids"], torch.tensor(planted["trigger_token_ids"])) & mask
    ordinary = mask & ~trigger
    assert trigger.sum() >= 5
    gen, layers = planted["generator_layer"], len(residual)
    assert gen == 2
    for k in range(layers):
        values = residual[k][mask].abs()
        peak_on_trigger = residual[k][trigger].abs().max(dim=-1).values
        if gen <= k < layers - 1:
            assert values.max() >= 1e4, k
            assert (peak_on_trigger >= 1e3 * values.median()).all(), k  # every trigger token
            assert residual[k][trigger][:, planted["massive_dims"]].abs().min() >= 1e3
        elif k < gen:
            assert values.max() < 100, k  # nothing massive before the generator layer
    before_last = residual[layers - 2][trigger][:, planted["massive_dims"][0]].abs().mean()
    assert residual[layers - 1][trigger][:, planted["massive_dims"][0]].abs().mean() < 0.5 * before_last
    assert residual[layers - 1][ordinary].abs().max() < 1e3  # ordinary tokens never carry it
    for out in normed:
        values = out[mask].abs()
        channel_peak = out[ordinary][:, planted["channel_dims"]].abs().max(dim=-1).values
        assert (channel_peak >= 50 * values.median()).all()  # on every ordinary token, after every norm


def test_outlier_weights_stay_inside_fp16_at_the_0_6b_shape(tmp_path):
    """Trained checkpoints store every weight in fp16/bf16 range; at the 0.6B shape the generator's down_proj
    once needed 2.3e7 (its units read the trigger dim with weight 1.0, which the wide norm shrinks to ~0.05)."""
    import torch
    from transformers import AutoModel

    from qconv.testing.testmodels import create_test_model

    path = create_test_model(tmp_path / "m", "qwen3-0.6b", "embedding", layers=4, outliers=True)
    model = AutoModel.from_pretrained(path, dtype=torch.float32)
    largest = {name: float(p.detach().abs().max()) for name, p in model.named_parameters()}
    outside = {name: value for name, value in largest.items() if value >= 65504}
    assert not outside, outside
    assert largest["layers.2.mlp.down_proj.weight"] < 1e3  # the generator writes ~1.4e4 with moderate weights


def test_outlier_model_fp16_holds_and_plain_int8_collapses(outlier_copy):
    """Realistic, not adversarial: fp16 stays at cosine >= 0.999 and weight-only 8-bit (fp32 compute) at
    >= 0.99, as on trained checkpoints; today's plain INT8 fails (cos_min < 0.9) on the activations alone."""
    from qconv.convert.quantize import QuantizeOptions, detect_preset, quantize

    _, fp16 = quantize(outlier_copy, "fp16")
    _, weight_only = quantize(outlier_copy, "q8", options=QuantizeOptions(accuracy_level=1))
    _, int8 = quantize(outlier_copy, "int8", options=QuantizeOptions(preset=detect_preset()))
    assert fp16["check"]["cosine_min"] >= 0.999
    assert weight_only["check"]["cosine_min"] >= 0.99
    assert int8["check"]["cosine_min"] < 0.9


def test_outlier_reranker_scores_spread_like_a_trained_one(tmp_path):
    """The planted score head: one query's documents spread by ~2.5 logits (a random head leaves them tied),
    measured on fresh random pairs, not the planting ones; the head reads none of the planted outlier dims."""
    import torch
    from tokenizers import Tokenizer
    from transformers import Qwen3ForCausalLM

    from qconv.runtime.template import QWEN3_RERANKER_TEMPLATE
    from qconv.testing.testmodels import TINY, create_qwen3_reranker

    def within_query_spread(model, seed: int) -> float:
        from qconv.testing.score_head import _last_states, _pairs

        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        ends = [tokenizer.encode(t, add_special_tokens=False).ids for t in (template.prefix, template.suffix)]
        states = _last_states(model, _pairs(*ends, model.config.vocab_size, seed))
        head = model.get_output_embeddings().weight.detach().double()
        scores = states @ (head[yes] - head[no])
        return float((scores - scores.mean(dim=1, keepdim=True)).std())

    template, yes, no = QWEN3_RERANKER_TEMPLATE, 9693, 2152
    path = create_qwen3_reranker(tmp_path / "r", shape=TINY, outliers=True)
    planted = json.loads((path / "qconv_outliers.json").read_text())
    model = Qwen3ForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    spread = within_query_spread(model, seed=1234)
    assert 1.5 <= spread <= 3.5, spread  # held-out random pairs (planted for 2.5 on its own; measured 1.86)
    head = model.get_output_embeddings().weight.detach()
    outlier_dims = [planted["trigger_dim"], *planted["massive_dims"], *planted["channel_dims"]]
    assert float((head[yes] - head[no])[outlier_dims].abs().max()) < 1e-6
    plain = Qwen3ForCausalLM.from_pretrained(create_qwen3_reranker(tmp_path / "p", shape=TINY), dtype=torch.float32)
    tied = within_query_spread(plain.eval(), seed=1234)
    assert tied < spread / 4, (tied, spread)  # a random head: nearly tied (measured 0.32)


def test_create_outlier_model_cli(run_cli, tmp_path):
    code, out, err = run_cli(
        "testmodel", "create", tmp_path / "r", "--shape", "tiny", "--kind", "reranker", "--outliers"
    )
    assert code == 0, err
    assert "outliers" in out
    note = json.loads((tmp_path / "r" / "qconv_testmodel.json").read_text())
    assert note["outliers"] and (tmp_path / "r" / "qconv_outliers.json").is_file()
    code, _, err = run_cli("testmodel", "create", tmp_path / "x", "--shape", "tiny", "--layers", "1", "--outliers")
    assert code == 2 and "at least 2 layers" in err and not (tmp_path / "x").exists()
