"""Reranker export (seq-cls and causal-LM formats), runtime, truncation and MS MARCO validation."""

import json

import numpy as np
import onnx
import pytest
import torch
from tokenizers import Tokenizer

from qconv.artifact import Artifact
from qconv.runtime.reranker import Reranker
from qconv.runtime.template import QWEN3_RERANKER_TEMPLATE, PairEncoder, pad_batch
from qconv.validate.reference_reranker import TorchReranker
from qconv.validate.rerank import validate_reranker

QUERY = "what is the capital of china?"
DOCS = [
    "The capital of China is Beijing.",
    "Bananas are yellow.",
    "",
    "Beijing is the capital city of China. " * 30,
    "北京是中国的首都。",
]


def test_manifest_and_graph(seqcls_artifact, tiny_qwen3_reranker):
    manifest = Artifact(seqcls_artifact).manifest
    settings = manifest["reranker"]
    assert manifest["task"] == "reranker" and settings["format"] == "seq-cls"
    assert settings["yes_token_id"] == 9693 and settings["no_token_id"] == 2152
    assert settings["template"]["prefix"].startswith("<|im_start|>system\nJudge whether the Document")
    assert settings["template"]["suffix"] == "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert settings["instruction"] == "Given a web search query, retrieve relevant passages that answer the query"
    assert manifest["conversion"]["passed"] and manifest["conversion"]["max_abs_diff"] <= 1e-5
    assert manifest["source"]["format"] == "causal-lm"
    graph = onnx.load(str(seqcls_artifact / "onnx" / "model.onnx"), load_external_data=False).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in graph.output] == ["logits"]
    dims = graph.output[0].type.tensor_type.shape.dim
    assert len(dims) == 2 and dims[1].dim_value == 1


def test_saved_pytorch_checkpoint_equals_causal_lm(seqcls_artifact, tiny_qwen3_reranker):
    """The converted checkpoint, run by transformers itself, against the original causal LM."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    classifier = AutoModelForSequenceClassification.from_pretrained(seqcls_artifact).eval()
    causal = AutoModelForCausalLM.from_pretrained(tiny_qwen3_reranker).eval()
    assert classifier.config.num_labels == 1 and classifier.config.pad_token_id == 151643
    tok = Tokenizer.from_file(str(seqcls_artifact / "tokenizer.json"))
    encoder = PairEncoder(tok, QWEN3_RERANKER_TEMPLATE, 512)
    ids, mask = pad_batch(encoder.encode_pairs(QUERY, DOCS), 151643, "left")
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    with torch.inference_mode():
        head = torch.sigmoid(classifier(input_ids=ids_t, attention_mask=mask_t).logits[:, 0])
        last = causal(input_ids=ids_t, attention_mask=mask_t).logits[:, -1]
        p_yes = torch.softmax(last[:, [2152, 9693]], dim=-1)[:, 1]
    assert (head - p_yes).abs().max() <= 1e-5


def test_onnx_matches_causal_reference_any_padding_and_batch(seqcls_artifact, tiny_qwen3_reranker):
    reranker = Reranker(seqcls_artifact)
    sequences = reranker.encoder.encode_pairs(QUERY, DOCS, None)
    reference = TorchReranker(tiny_qwen3_reranker, "causal-lm", 9693, 2152, 151643).score(sequences)
    batched = reranker.score_ids(sequences, batch_size=len(DOCS))
    singles = np.array([reranker.score_ids([s])[0] for s in sequences])
    reranker.settings = {**reranker.settings, "padding_side": "right"}
    right = reranker.score_ids(sequences, batch_size=len(DOCS))
    for scores in (batched, singles, right):
        assert np.abs(scores - reference).max() <= 1e-5
    assert np.abs(reranker.score(QUERY, DOCS) - batched).max() <= 1e-5


def test_rank_orders_by_score(seqcls_artifact):
    ranked = Reranker(seqcls_artifact).rank(QUERY, DOCS, top_k=3)
    assert len(ranked) == 3
    assert [r["score"] for r in ranked] == sorted((r["score"] for r in ranked), reverse=True)
    assert all(DOCS[r["index"]] == r["document"] for r in ranked)


def test_causal_lm_format_gives_the_same_p_yes(causal_artifact, seqcls_artifact):
    manifest = Artifact(causal_artifact).manifest
    assert manifest["reranker"]["format"] == "causal-lm"
    assert manifest["variants"]["model"]["external_data"] is True
    assert (causal_artifact / "onnx" / "model.onnx_data").is_file()
    graph = onnx.load(str(causal_artifact / "onnx" / "model.onnx"), load_external_data=False).graph
    assert len(graph.output[0].type.tensor_type.shape.dim) == 3  # (batch, seq, vocab)
    causal = Reranker(causal_artifact).score(QUERY, DOCS, batch_size=2)
    seqcls = Reranker(seqcls_artifact).score(QUERY, DOCS, batch_size=2)
    assert np.abs(causal - seqcls).max() <= 1e-5


def test_truncation_keeps_prefix_and_suffix(seqcls_artifact):
    tok = Tokenizer.from_file(str(seqcls_artifact / "tokenizer.json"))
    encoder = PairEncoder(tok, QWEN3_RERANKER_TEMPLATE, 120)
    long_doc = "The capital of China is Beijing. " * 200
    ids = encoder.encode(QUERY, long_doc)
    assert len(ids) == 120
    assert ids[: len(encoder.prefix_ids)] == encoder.prefix_ids
    assert ids[-len(encoder.suffix_ids) :] == encoder.suffix_ids
    body = tok.decode(ids[len(encoder.prefix_ids) : -len(encoder.suffix_ids)])
    assert f"<Query>: {QUERY}\n<Document>: The capital" in body  # the document was shortened, not the query
    naive = tok.encode(
        QWEN3_RERANKER_TEMPLATE.prefix + encoder.body(QUERY, long_doc, None) + QWEN3_RERANKER_TEMPLATE.suffix,
        add_special_tokens=False,
    ).ids[:120]
    assert naive[-len(encoder.suffix_ids) :] != encoder.suffix_ids  # what naive truncation gets wrong
    long_query = "capital " * 300
    ids = encoder.encode(long_query, long_doc)
    assert len(ids) == 120 and ids[-len(encoder.suffix_ids) :] == encoder.suffix_ids


def test_truncated_pairs_still_match_the_reference(seqcls_artifact, tiny_qwen3_reranker):
    reranker = Reranker(seqcls_artifact)
    encoder = PairEncoder(reranker.encoder.tokenizer, QWEN3_RERANKER_TEMPLATE, 100)
    sequences = encoder.encode_pairs(QUERY, ["Beijing. " * 300, "Paris. " * 300])
    reference = TorchReranker(tiny_qwen3_reranker, "causal-lm", 9693, 2152, 151643).score(sequences)
    assert np.abs(reranker.score_ids(sequences) - reference).max() <= 1e-5


def test_shipped_chat_template_renders_the_exact_text(seqcls_artifact):
    """chat_template.jinja keeps every character, the suffix's two trailing newlines included."""
    from transformers import AutoTokenizer

    settings = Artifact(seqcls_artifact).manifest["reranker"]
    assert settings["chat_template"] == "chat_template.jinja" and (seqcls_artifact / "chat_template.jinja").is_file()
    tokenizer = AutoTokenizer.from_pretrained(seqcls_artifact)
    assert tokenizer.model_max_length == settings["max_length"] and tokenizer.padding_side == "left"
    messages = [{"role": "query", "content": QUERY}, {"role": "document", "content": DOCS[0]}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == QWEN3_RERANKER_TEMPLATE.text(QUERY, DOCS[0], settings["instruction"])
    assert rendered.endswith("</think>\n\n")
    custom = tokenizer.apply_chat_template(messages, tokenize=False, instruction="Find the city")
    assert custom == QWEN3_RERANKER_TEMPLATE.text(QUERY, DOCS[0], "Find the city")


def test_cross_encoder_scores_like_qconv(seqcls_artifact, optimum_ort):
    """Plain (query, document) pairs in CrossEncoder: the shipped template and max length do the rest."""
    from sentence_transformers import CrossEncoder

    reranker = Reranker(seqcls_artifact)
    cross = CrossEncoder(str(seqcls_artifact), backend="onnx", device="cpu")
    assert cross.max_seq_length == reranker.settings["max_length"]
    got = np.asarray(cross.predict([(QUERY, d) for d in DOCS]), dtype=np.float64)
    assert np.abs(got - reranker.score(QUERY, DOCS)).max() <= 1e-5


def test_cross_encoder_truncation_keeps_the_suffix(seqcls_artifact, optimum_ort):
    """Over the max length, sentence-transformers writes the template suffix back over the cut pair, which
    is qconv's truncation (document cut from its end, suffix whole); without that restore it scores another
    position. 128 tokens stands in for the artifact's 8192 to keep the test small."""
    from sentence_transformers import CrossEncoder

    reranker = Reranker(seqcls_artifact)
    reranker.encoder = PairEncoder(reranker.encoder.tokenizer, reranker.encoder.template, 128)
    docs = ["Beijing is the capital. " * 200, "Paris. " * 500, DOCS[0]]
    assert [len(reranker.encoder.encode(QUERY, d)) for d in docs[:2]] == [128, 128]
    ours = reranker.score(QUERY, docs)
    cross = CrossEncoder(str(seqcls_artifact), backend="onnx", device="cpu", max_length=128)
    pairs = [(QUERY, d) for d in docs]
    assert np.abs(np.asarray(cross.predict(pairs), dtype=np.float64) - ours).max() <= 1e-5
    cut = cross.predict(pairs, processing_kwargs={"chat_template": {"restore_suffix": False}})
    assert np.abs(np.asarray(cut, dtype=np.float64) - ours)[:2].max() > 1e-4


def test_cross_encoder_torch_backend_scores_like_qconv(seqcls_artifact):
    """The converted PyTorch checkpoint in CrossEncoder's default backend (no optimum needed) reads the same
    chat template."""
    from sentence_transformers import CrossEncoder

    cross = CrossEncoder(str(seqcls_artifact), device="cpu")
    got = np.asarray(cross.predict([(QUERY, d) for d in DOCS]), dtype=np.float64)
    assert np.abs(got - Reranker(seqcls_artifact).score(QUERY, DOCS)).max() <= 1e-5


def test_loads_in_optimum(seqcls_artifact, optimum_ort):
    ORTModelForSequenceClassification = optimum_ort.ORTModelForSequenceClassification

    reranker = Reranker(seqcls_artifact)
    texts = [QWEN3_RERANKER_TEMPLATE.text(QUERY, d) for d in DOCS[:3]]
    tok = reranker.encoder.tokenizer
    ort = ORTModelForSequenceClassification.from_pretrained(
        str(seqcls_artifact), subfolder="onnx", file_name="model.onnx"
    )
    ids, mask = pad_batch([tok.encode(t).ids for t in texts], 151643, "left")
    logits = ort(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask)).logits.numpy()
    assert logits.shape == (3, 1)
    assert np.abs(1 / (1 + np.exp(-logits[:, 0].astype(np.float64))) - reranker.score(QUERY, DOCS[:3])).max() <= 1e-5


def test_validate_msmarco_bundled_slice(seqcls_copy, run_cli):
    report = validate_reranker(seqcls_copy, "msmarco", limit=12, max_candidates=10)
    for key in (
        "dataset",
        "n_queries",
        "source",
        "variant",
        "reference",
        "candidate",
        "delta",
        "parity",
        "thresholds",
        "passed",
    ):
        assert key in report
    assert report["metric"] == "mrr@10" and report["source"] == "bundled-sample" and report["n_queries"] == 12
    assert report["thresholds"] == {"max_score_diff": 1e-4, "min_top1": 1.0}
    assert report["parity"]["max_abs_diff"] <= 1e-4 and report["parity"]["top1_agreement"] == 1.0
    for m in ("mrr@10", "ndcg@10", "recall@10"):
        assert 0.0 <= report["reference"][m] <= 1.0
    assert report["passed"] and report["reference"]["cached"] is False
    saved = json.loads((seqcls_copy / "reports" / "validate-model-msmarco.json").read_text())
    assert saved["candidate"]["metric_value"] == report["candidate"]["metric_value"]
    assert Artifact(seqcls_copy).manifest["validation"]["model"]["msmarco"]["passed"]
    code, out, err = run_cli(
        "validate", seqcls_copy, "--dataset", "msmarco", "--limit", "12", "--max-candidates", "10", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["reference"]["cached"] is True
    code, out, err = run_cli(
        "validate",
        seqcls_copy,
        "--dataset",
        "msmarco",
        "--limit",
        "12",
        "--max-candidates",
        "10",
        "--max-score-diff",
        "0",
    )
    assert code == 1


def test_validate_msmarco_report_states_how_it_measured(seqcls_copy):
    report = validate_reranker(seqcls_copy, "msmarco", limit=6, max_candidates=8, bootstrap=200)
    assert report["relevance"]["graded"] is True and report["relevance"]["threshold"] == 2
    assert report["settings"]["relevance_threshold"] == 2 and "trec_eval" in report["relevance"]["library"]
    assert "TREC-DL" in report["candidates"]["definition"] and report["candidates"]["per_query_max"] <= 8
    assert report["full_split"] is False and report["real_weights"] is False
    assert report["instruction_rule"].startswith("default")
    assert set(report["delta_ci"]) == {"mrr@10", "ndcg@10", "recall@10"}
    for m, interval in report["delta_ci"].items():
        assert interval["low"] <= interval["delta"] <= interval["high"]
        assert interval["delta"] == pytest.approx(report["candidate"][m] - report["reference"][m], abs=1e-12)
    assert report["bootstrap"]["n_resamples"] == 200 and report["bootstrap"]["resampled"] == "queries"
    worst = report["worst"]["items"]
    assert len(worst) == 5 and all(w["query"] and "spearman" in w for w in worst)
    markdown = (seqcls_copy / "reports" / "validate-model-msmarco.md").read_text()
    assert "delta [95% CI]" in markdown and "Worst 5" in markdown and "grade >= 2" in markdown
    summary = Artifact(seqcls_copy).manifest["validation"]["model"]["msmarco"]
    assert summary["delta_ci"] == [report["delta_ci"]["mrr@10"]["low"], report["delta_ci"]["mrr@10"]["high"]]


def test_empty_instruction_means_none_for_rerankers(seqcls_copy, run_cli):
    """'' is "no instruction" (the template's slot left empty, as Qwen3-Reranker's own code does), not the default."""
    reranker = Reranker(seqcls_copy)
    body = reranker.encoder.body(QUERY, DOCS[0], "")
    assert body == f"<Instruct>: \n<Query>: {QUERY}\n<Document>: {DOCS[0]}"
    default = reranker.settings["instruction"]
    assert reranker.encoder.body(QUERY, DOCS[0], None) == body.replace("<Instruct>: ", f"<Instruct>: {default}")
    empty = reranker.score(QUERY, DOCS, instruction="")
    assert np.array_equal(empty, reranker.score_ids(reranker.encoder.encode_pairs(QUERY, DOCS, "")))
    assert not np.array_equal(empty, reranker.score(QUERY, DOCS))
    code, out, err = run_cli(
        "validate", seqcls_copy, "--dataset", "msmarco", "--limit", "3", "--max-candidates", "4",
        "--instruction", "", "--bootstrap", "0", "--json",
    )  # fmt: skip
    assert code == 0, err
    report = json.loads(out)
    assert report["instruction"] == "" and report["instruction_rule"].startswith("none")
    assert report["delta_ci"] == {} and report["bootstrap"]["n_resamples"] == 0


def test_converted_checkpoint_exports_without_conversion(seqcls_artifact, tmp_path):
    """An already converted Qwen3ForSequenceClassification (here: the artifact's own checkpoint)."""
    from qconv.convert.reranker_export import export_reranker

    result = export_reranker(str(seqcls_artifact), tmp_path / "again")
    manifest = Artifact(result.path).manifest
    assert manifest["source"]["format"] == "seq-cls" and manifest["conversion"] is None
    a = Reranker(result.path).score(QUERY, DOCS)
    b = Reranker(seqcls_artifact).score(QUERY, DOCS)
    assert np.abs(a - b).max() <= 1e-5
    report = validate_reranker(result.path, "msmarco", limit=3, max_candidates=5)
    assert report["reference"]["format"] == "seq-cls" and report["passed"]
