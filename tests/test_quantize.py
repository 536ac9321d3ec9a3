"""qconv quantize: every mode on tiny Qwen3 embedding and reranker artifacts, real-weight proof, bad input."""

import json
import logging
from collections import Counter

import numpy as np
import onnx
import pytest

from qconv.artifact import Artifact
from qconv.convert.quantize import QuantizeOptions, detect_preset, quantize
from qconv.errors import QconvError
from qconv.runtime.embedder import Embedder


def op_types(path):
    return Counter(n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node)


def fp32_matmuls(artifact) -> tuple[int, int]:
    """(all MatMuls, activation MatMuls) of the exported graph: weight MatMuls are quantized, the others
    (attention; in transformers 4.x also the rotary inv_freq x positions product) stay fp32."""
    graph = onnx.load(str(artifact / "onnx" / "model.onnx"), load_external_data=False).graph
    weights = {i.name for i in graph.initializer if len(i.dims) == 2}
    matmuls = [n for n in graph.node if n.op_type == "MatMul"]
    return len(matmuls), sum(n.input[1] not in weights for n in matmuls)


def initializer_types(path):
    model = onnx.load(str(path))
    return Counter(onnx.TensorProto.DataType.Name(i.data_type) for i in model.graph.initializer), model


def test_int8_weight_matmuls_and_embedding_table(artifact_copy, caplog):
    caplog.set_level(logging.WARNING)
    variant, entry = quantize(artifact_copy, "int8", options=QuantizeOptions(preset="avx2"))
    assert "pre-processing" not in caplog.text  # onnxruntime's generic advice is not shown to users
    assert variant == "qint8_avx2" and entry["file"] == "onnx/model_qint8_avx2.onnx"
    path = artifact_copy / entry["file"]
    ops = op_types(path)
    assert ops["MatMulInteger"] == 14 and ops["DynamicQuantizeLinear"] > 0  # 2 layers x 7 weight MatMuls
    assert ops["MatMul"] == fp32_matmuls(artifact_copy)[1] >= 4  # activation x activation stay fp32
    types, model = initializer_types(path)
    table = next(i for i in model.graph.initializer if i.name.endswith("_int8") and i.dims[0] == 151669)
    assert onnx.TensorProto.DataType.Name(table.data_type) == "INT8"
    tables = entry["details"]["embedding_tables"]
    assert (
        tables["quantized"] and tables["bytes_after"] < tables["bytes_before"] / 3.7
    )  # int8 rows + one fp32 scale each
    assert entry["size_bytes"] < (artifact_copy / "onnx" / "model.onnx").stat().st_size / 3
    assert entry["check"]["finite"] and entry["check"]["cosine_mean"] >= 0.99  # the int8 mode's gate
    manifest = Artifact(artifact_copy).manifest
    assert manifest["variants"]["qint8_avx2"]["precision"] == "int8"
    assert manifest["stages"][-1]["stage"] == "quantize"
    assert "onnx/model_qint8_avx2.onnx" in manifest["files"]


def test_int8_without_embedding_table_and_per_tensor(artifact_copy):
    _, entry = quantize(
        artifact_copy,
        "int8",
        options=QuantizeOptions(preset="avx512_vnni", per_channel=False, quantize_embeddings=False),
    )
    types, _ = initializer_types(artifact_copy / entry["file"])
    assert entry["options"]["per_channel"] is False and "embedding_tables" not in entry["details"]
    assert entry["size_bytes"] > 151669 * 64 * 4  # the fp32 table is still there
    assert entry["details"]["reduce_range"] is False


def test_q4_and_q4f16(artifact_copy):
    _, q4 = quantize(artifact_copy, "q4", options=QuantizeOptions(block_size=32))
    ops = op_types(artifact_copy / q4["file"])
    assert ops["MatMulNBits"] == 14 and ops["MatMul"] == fp32_matmuls(artifact_copy)[1]
    _, q4f16 = quantize(artifact_copy, "q4f16")
    types, model = initializer_types(artifact_copy / q4f16["file"])
    assert op_types(artifact_copy / q4f16["file"])["MatMulNBits"] == 14
    assert types["FLOAT16"] > 0
    graph_io = [i.type.tensor_type.elem_type for i in list(model.graph.input) + list(model.graph.output)]
    assert onnx.TensorProto.FLOAT16 not in graph_io  # io types kept
    for entry in (q4, q4f16):
        assert entry["check"]["finite"] and entry["check"]["cosine_mean"] >= 0.9
    vectors = Embedder(artifact_copy, variant="q4f16").encode(["hello", "如何提高借款额度"])
    assert vectors.dtype == np.float32 and np.isfinite(vectors).all()


def test_fp16(artifact_copy):
    _, entry = quantize(artifact_copy, "fp16")
    types, model = initializer_types(artifact_copy / entry["file"])
    assert types["FLOAT16"] >= 15 and entry["converter"].startswith("qconv selective fp16")
    assert entry["check"]["cosine_min"] >= 0.999  # the fp16 mode's gate
    assert entry["size_bytes"] < (artifact_copy / "onnx" / "model.onnx").stat().st_size * 0.55


def test_exclude_keeps_matching_nodes_in_full_precision(artifact_copy):
    _, entry = quantize(artifact_copy, "int8", options=QuantizeOptions(preset="avx2", exclude=["model.layers.1.mlp.*"]))
    assert op_types(artifact_copy / entry["file"])["MatMulInteger"] == 11  # 3 MLP MatMuls of layer 1 stay fp32
    _, entry = quantize(artifact_copy, "fp16", options=QuantizeOptions(exclude=["model.layers.0.mlp.down_proj"]))
    matmuls = fp32_matmuls(artifact_copy)[0]  # 19 on transformers 4.57, 18 on 5.x (no rotary MatMul)
    assert entry["details"]["fp16"]["fp16_nodes"] == matmuls + 1 - 1  # the MatMuls + 1 Gather, minus the excluded one


def test_every_mode_on_a_reranker(seqcls_copy):
    from qconv.runtime.reranker import Reranker

    base = Reranker(seqcls_copy).score("what is the capital of china?", ["Beijing is.", "Bananas."])
    for mode, bound in (("int8", 0.05), ("q4", 0.1), ("q4f16", 0.1), ("fp16", 1e-3)):
        variant, entry = quantize(seqcls_copy, mode)
        assert entry["check"]["finite"] and entry["check"]["max_abs_score_diff"] <= bound, (mode, entry["check"])
        scores = Reranker(seqcls_copy, variant=variant).score(
            "what is the capital of china?", ["Beijing is.", "Bananas."]
        )
        assert np.isfinite(scores).all() and np.abs(scores - base).max() <= bound


def test_quantize_an_ort_optimized_graph(artifact_copy):
    """ORT-optimized graphs lose value types the quantizer needs; qconv pre-processes and retries."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(artifact_copy / "onnx" / "model_ortopt.onnx")
    ort.InferenceSession(str(artifact_copy / "onnx" / "model.onnx"), options, providers=["CPUExecutionProvider"])
    art = Artifact(artifact_copy)
    art.variants["ortopt"] = {"file": "onnx/model_ortopt.onnx", "precision": "fp32", "stage": "test"}
    art.record_files("onnx/model_ortopt.onnx")  # the stage that wrote it records its hash
    art.save()
    variant, entry = quantize(art, "int8", source_variant="ortopt", options=QuantizeOptions(preset="avx2"))
    assert variant == "ortopt_qint8_avx2" and entry["check"]["finite"]
    assert op_types(artifact_copy / entry["file"])["MatMulInteger"] > 0


def test_fp16_stays_finite_where_naive_fp16_overflows(tiny_qwen3, tmp_path):
    """Scale the embedding table so hidden values reach ~3e4: x**2 in RMSNorm overflows fp16 (max 65504)."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from qconv.convert.export import export_embedding

    source = tmp_path / "hot"
    shutil.copytree(tiny_qwen3, source)
    weights = load_file(str(source / "model.safetensors"))
    table = weights["embed_tokens.weight"]
    weights["embed_tokens.weight"] = table * (30000.0 / table.abs().max())
    save_file(weights, str(source / "model.safetensors"), metadata={"format": "pt"})
    assert np.isinf(np.float16(30000.0) * np.float16(30000.0))  # what a naive fp16 RMSNorm computes
    art = export_embedding(str(source), tmp_path / "art").path
    _, entry = quantize(art, "fp16")
    texts = ["hello world", "如何提高借款额度", "a"]
    fp16 = Embedder(art, variant="fp16").encode(texts)
    fp32 = Embedder(art).encode(texts)
    assert np.isfinite(fp16).all()
    assert (fp16 * fp32).sum(axis=1).min() >= 0.999
    del torch


def test_real_weights_int8_fp16_on_sts12(minilm_artifact, tmp_path):
    """all-MiniLM-L6-v2: INT8 and fp16 validated on the bundled STS12 sample (figures in the README)."""
    import shutil

    from qconv.validate.embedding import validate_embedding

    art = tmp_path / "minilm"
    shutil.copytree(minilm_artifact, art, ignore=shutil.ignore_patterns(".cache"))
    results = {}
    for mode in ("int8", "fp16", "q4"):
        variant, _ = quantize(art, mode, options=QuantizeOptions(preset="avx2") if mode == "int8" else None)
        results[mode] = validate_embedding(art, "sts12", variant=variant)
    assert results["int8"]["passed"] and abs(results["int8"]["delta"]) <= 0.01
    assert results["int8"]["parity"]["cosine_mean"] >= 0.99
    assert results["fp16"]["passed"] and results["fp16"]["parity"]["cosine_min"] >= 0.999
    assert results["q4"]["passed"] and abs(results["q4"]["delta"]) <= 0.02
    summary = {m: round(r["delta"], 6) for m, r in results.items()}
    (tmp_path / "deltas.json").write_text(json.dumps(summary))


def test_bad_input(artifact_copy, run_cli, monkeypatch):
    code, _, err = run_cli("quantize", artifact_copy, "--mode", "int3")
    assert code == 2 and "unknown mode 'int3'" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("quantize", artifact_copy, "--mode", "int8", "--preset", "avx9")
    assert code == 2 and "unknown --preset 'avx9'" in err
    code, _, err = run_cli("quantize", artifact_copy, "--mode", "q4", "--block-size", "48")
    assert code == 2 and "--block-size 48" in err
    code, _, err = run_cli("quantize", artifact_copy, "--mode", "fp16", "--exclude", "nothing.like.this")
    assert code == 2 and "matches no node" in err
    code, _, err = run_cli("quantize", artifact_copy, "--mode", "fp16", "--from", "O2")
    assert code == 2 and "no variant 'O2'" in err
    assert run_cli("quantize", artifact_copy, "--mode", "fp16")[0] == 0
    code, _, err = run_cli("quantize", artifact_copy, "--mode", "fp16")
    assert code == 2 and "already exists" in err and "--overwrite" in err
    assert run_cli("quantize", artifact_copy, "--mode", "fp16", "--overwrite")[0] == 0
    code, _, err = run_cli("quantize", artifact_copy, "--mode", "int8", "--from", "fp16")
    assert code == 2 and "quantize from an fp32 variant" in err


def test_failed_quantization_leaves_no_file(artifact_copy, monkeypatch):
    from qconv.convert import quantize as quantize_module

    before = sorted(p.name for p in (artifact_copy / "onnx").iterdir())
    manifest_before = (artifact_copy / "qconv.json").read_bytes()

    def broken(*args, **kwargs):
        raise RuntimeError("simulated converter crash")

    monkeypatch.setattr(quantize_module.Fp16, "run", broken)
    with pytest.raises(QconvError, match="fp16 quantization of model failed: simulated converter crash"):
        quantize(artifact_copy, "fp16")
    assert sorted(p.name for p in (artifact_copy / "onnx").iterdir()) == before
    assert (artifact_copy / "qconv.json").read_bytes() == manifest_before


def test_a_full_disk_is_not_retried(artifact_copy, monkeypatch):
    """quantize_dynamic is retried after ORT's pre-processing only for the shape-inference gap of optimized
    graphs; an OS error (here ENOSPC) fails at once, in one line, and leaves the artifact as it was."""
    import errno

    import onnxruntime.quantization as ort_quantization
    import onnxruntime.quantization.shape_inference as shape_inference

    before = sorted(p.name for p in (artifact_copy / "onnx").iterdir())
    calls = []

    def full(*args, **kwargs):
        calls.append("quantize_dynamic")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ort_quantization, "quantize_dynamic", full)
    monkeypatch.setattr(shape_inference, "quant_pre_process", lambda *a, **k: calls.append("pre_process"))
    with pytest.raises(QconvError, match="int8 quantization of model failed: .*No space left on device"):
        quantize(artifact_copy, "int8", options=QuantizeOptions(preset="avx2"))
    assert calls == ["quantize_dynamic"]
    assert sorted(p.name for p in (artifact_copy / "onnx").iterdir()) == before


def test_nan_variant_is_refused(artifact_copy, monkeypatch):
    from onnx import numpy_helper

    from qconv.convert import quantize as quantize_module

    def poison(self, model, src, options, excluded, work):
        init = next(i for i in model.graph.initializer if i.name.endswith("embed_tokens.weight"))
        init.CopyFrom(numpy_helper.from_array(np.full(tuple(init.dims), np.nan, np.float32), init.name))
        return model, {}

    monkeypatch.setattr(quantize_module.Fp16, "run", poison)
    with pytest.raises(QconvError, match="NaN or Inf"):
        quantize(artifact_copy, "fp16")
    assert not (artifact_copy / "onnx" / "model_fp16.onnx").exists()
    assert "fp16" not in Artifact(artifact_copy).variants


def test_preset_detection():
    assert detect_preset() in ("avx512_vnni", "avx2", "arm64")


def test_cli_quantize_then_validate(artifact_copy, run_cli):
    code, out, err = run_cli(
        "quantize", artifact_copy, "--mode", "fp16", "--validate", "sts12", "--validate", "bq", "--limit", "30"
    )
    assert code == 0, err
    for dataset in ("sts12", "bq"):
        report = json.loads((artifact_copy / "reports" / f"validate-fp16-{dataset}.json").read_text())
        assert report["variant"] == "fp16" and report["thresholds"] == {"min_cosine": 0.999} and report["passed"]
    entry = Artifact(artifact_copy).variants["fp16"]
    assert entry["check"]["latency_ms"] > 0 and entry["check"]["source_latency_ms"] > 0
