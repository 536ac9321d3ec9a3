"""Embedding export on tiny random Qwen3 models: layout, manifest, graph, padding, loaders."""

import json

import numpy as np
import onnx
import pytest

from qconv.artifact import Artifact, hash_tree
from qconv.convert.torch_embedding import TorchEmbedder
from qconv.runtime.embedder import Embedder

TEXTS = [
    "What is the capital of China?",
    "",
    "x",
    "如何提高借款额度",
    "Gravity is a force that attracts two bodies towards each other. " * 20,
    "The quick brown fox jumps over the lazy dog.",
]


def cosine_min(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def test_layout_and_manifest(qwen3_artifact, tiny_qwen3):
    for rel in (
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "modules.json",
        "1_Pooling/config.json",
        "sentence_bert_config.json",
        "config_sentence_transformers.json",
        "onnx/model.onnx",
        "qconv.json",
    ):
        assert (qwen3_artifact / rel).is_file(), rel
    manifest = Artifact(qwen3_artifact).manifest
    assert manifest["task"] == "embedding"
    assert manifest["source"]["path"] == str(tiny_qwen3)
    assert len(manifest["source"]["content_sha256"]) == 64
    emb = manifest["embedding"]
    assert emb["pooling"] == "lasttoken" and emb["normalize"] is True and emb["padding_side"] == "left"
    assert emb["prompts"]["query"].startswith("Instruct: ")
    assert manifest["export"]["opset"] == 18
    assert manifest["export"]["exporter_rewrites_skipped"] == ["SlicesSplit"]
    assert manifest["packages"]["torch"].startswith("2.13.0")
    assert manifest["packages"]["onnxruntime"]
    assert [s["stage"] for s in manifest["stages"]][0] == "export"
    assert manifest["stages"][0]["parity"]["passed"] is True
    entry = dict(manifest["variants"]["model"])
    assert len(entry.pop("build_id")) == 32  # one id per build (a rebuild re-runs what was measured on it)
    assert entry == {
        "file": "onnx/model.onnx",
        "precision": "fp32",
        "stage": "export",
        "external_data": False,
    }


def test_manifest_hashes_every_file(qwen3_artifact):
    manifest = json.loads((qwen3_artifact / "qconv.json").read_text())
    current = hash_tree(qwen3_artifact)
    # validation may have added reports since; everything the export wrote is still as recorded
    for rel, digest in manifest["files"].items():
        assert current[rel] == digest, rel
    assert "onnx/model.onnx" in manifest["files"] and "tokenizer.json" in manifest["files"]


def test_graph_inputs_and_outputs(qwen3_artifact):
    graph = onnx.load(str(qwen3_artifact / "onnx" / "model.onnx"), load_external_data=False).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in graph.output] == ["last_hidden_state", "sentence_embedding"]


def test_matches_pytorch_with_left_and_right_padding(qwen3_artifact, tiny_qwen3):
    torch_left = TorchEmbedder(tiny_qwen3, pooling="lasttoken", normalize=True, padding_side="left", max_length=512)
    torch_right = TorchEmbedder(tiny_qwen3, pooling="lasttoken", normalize=True, padding_side="right", max_length=512)
    onnx_left = Embedder(qwen3_artifact)
    singles = np.concatenate([onnx_left.encode([t]) for t in TEXTS])  # batch 1: no padding at all
    batched = onnx_left.encode(TEXTS, batch_size=len(TEXTS))
    onnx_left.tokenizer.enable_padding(direction="right", pad_id=151643, pad_token="<|endoftext|>")
    batched_right = onnx_left.encode(TEXTS, batch_size=len(TEXTS))
    for other in (
        batched,
        batched_right,
        torch_left.encode(TEXTS, batch_size=len(TEXTS)),
        torch_right.encode(TEXTS, batch_size=len(TEXTS)),
    ):
        assert cosine_min(singles, other) >= 0.99999
        assert np.abs(singles - other).max() < 1e-4
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)


def test_last_token_is_the_pad_id_and_still_pooled(qwen3_artifact):
    """Qwen3-Embedding's trap: the appended <|endoftext|> is the pad id; pooling by pad id would be wrong."""
    embedder = Embedder(qwen3_artifact)
    encodings = embedder.tokenizer.encode_batch(["short", "a much longer text than the other one"])
    assert encodings[0].ids[-1] == encodings[1].ids[-1] == 151643
    assert encodings[0].ids[0] == 151643 and encodings[0].attention_mask[0] == 0  # left padding
    a, b = embedder.encode(["short", "a much longer text than the other one"])
    assert not np.allclose(a, b)


def test_sentence_transformers_onnx_backend(qwen3_artifact, optimum_ort):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(qwen3_artifact), backend="onnx", device="cpu")
    st = model.encode(TEXTS, batch_size=3, normalize_embeddings=False)
    ours = Embedder(qwen3_artifact).encode(TEXTS)
    assert cosine_min(st, ours) >= 0.99999
    query = model.encode(["hello"], prompt_name="query")
    assert cosine_min(query, Embedder(qwen3_artifact).encode(["hello"], prompt_name="query")) >= 0.99999


def test_optimum_feature_extraction(qwen3_artifact, optimum_ort):
    from optimum.onnxruntime import ORTModelForFeatureExtraction
    from transformers import AutoTokenizer

    model = ORTModelForFeatureExtraction.from_pretrained(str(qwen3_artifact), subfolder="onnx", file_name="model.onnx")
    tokenizer = AutoTokenizer.from_pretrained(str(qwen3_artifact))
    batch = tokenizer(TEXTS[:3], padding=True, return_tensors="pt")
    hidden = model(**batch).last_hidden_state.numpy()
    assert hidden.shape[:2] == tuple(batch["input_ids"].shape)
    last = hidden[:, -1]  # left padding: the last column is every text's last token
    ours = Embedder(qwen3_artifact).encode(TEXTS[:3])
    assert cosine_min(last, ours) >= 0.99999


def test_plain_checkpoint_generates_st_files_and_external_data(qwen3_plain_artifact):
    """No sentence-transformers files in the source, --no-normalize and forced external data."""
    art = Artifact(qwen3_plain_artifact)
    assert art.manifest["embedding"]["pooling"] == "lasttoken"
    assert art.manifest["embedding"]["pooling_source"] == "qwen3 default"
    assert art.manifest["embedding"]["normalize"] is False
    assert art.manifest["embedding"]["padding_side"] == "right"
    assert art.manifest["embedding"]["prompts_source"] == "architecture default"
    modules = json.loads((qwen3_plain_artifact / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling"]
    assert art.manifest["variants"]["model"]["external_data"] is True
    data = qwen3_plain_artifact / "onnx" / "model.onnx_data"
    assert data.is_file() and data.stat().st_size > (qwen3_plain_artifact / "onnx" / "model.onnx").stat().st_size
    assert "onnx/model.onnx_data" in art.manifest["files"]
    vectors = Embedder(art).encode(TEXTS)
    assert not np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    reference = TorchEmbedder(
        art.manifest["source"]["path"], pooling="lasttoken", normalize=False, padding_side="right", max_length=512
    ).encode(TEXTS)
    assert cosine_min(vectors, reference) >= 0.99999


def test_external_data_loads_in_sentence_transformers(qwen3_plain_artifact, optimum_ort):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(qwen3_plain_artifact), backend="onnx", device="cpu")
    st = model.encode(TEXTS[:3])
    assert cosine_min(st, Embedder(qwen3_plain_artifact).encode(TEXTS[:3])) >= 0.99999


@pytest.mark.parametrize("dim", [16, 64])
def test_matryoshka_truncation(qwen3_artifact, dim):
    vectors = Embedder(qwen3_artifact).encode(TEXTS, dim=dim)
    assert vectors.shape == (len(TEXTS), dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_exporter_optimizer_skips_the_quadratic_slice_rule(tiny_qwen3, tmp_path):
    """Without onnxscript's SlicesSplit rule the exported graph is the same, node for node (see onnx_graph)."""
    from onnxscript import rewriter

    from qconv.convert.export import EMBEDDING_AXES, EMBEDDING_INPUTS, EMBEDDING_OUTPUTS
    from qconv.convert.onnx_graph import export_module, exporter_rewrites_without
    from qconv.convert.torch_embedding import build_embedding_module, load_base_model, load_tokenizer

    def rule_names():
        return [getattr(rule, "name", None) for rule in rewriter._DEFAULT_REWRITE_RULES]

    default = rule_names()
    with exporter_rewrites_without() as removed:
        assert removed == ("SlicesSplit",)
        assert "SlicesSplit" not in rule_names() and len(rule_names()) == len(default) - 1
    assert rule_names() == default

    module = build_embedding_module(load_base_model(tiny_qwen3), "lasttoken", True)
    example = load_tokenizer(tiny_qwen3)(["a short text", "a longer second text"], padding=True, return_tensors="pt")
    graphs = {}
    for label, skipped in (("skipped", ("SlicesSplit",)), ("default", ())):
        path = tmp_path / label / "model.onnx"
        exported = export_module(
            module,
            (example["input_ids"], example["attention_mask"]),
            path,
            input_names=EMBEDDING_INPUTS,
            output_names=EMBEDDING_OUTPUTS,
            dynamic_axes=EMBEDDING_AXES,
            opset=18,
            external_data=False,
            skip_rewrites=skipped,
        )
        assert exported.rewrites_skipped == skipped and exported.external_data is False
        graphs[label] = [(n.op_type, len(n.input)) for n in onnx.load(str(path)).graph.node]
    assert graphs["skipped"] == graphs["default"]
    assert any(op == "Slice" for op, _ in graphs["default"])  # the rule had candidates to try
