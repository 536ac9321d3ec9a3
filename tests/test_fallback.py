"""Operator placement per execution provider: graphs with known answers, static vs runtime on CPU."""

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from qconv.artifact import Artifact
from qconv.convert.quantize import QuantizeOptions, quantize
from qconv.kernels import analyse
from qconv.validate.placement import fallback_report

REPO = Path(__file__).resolve().parents[1]


def fallback_ops(report):
    return {g["op"]: g for g in report["fallback"]}


def test_fp32_export_fully_supported_on_cuda_and_cpu(qwen3_artifact):
    model = onnx.load(str(qwen3_artifact / "onnx" / "model.onnx"))
    for provider in ("CUDAExecutionProvider", "CPUExecutionProvider", "DmlExecutionProvider"):
        report = analyse(model, provider)
        assert report["fallback_nodes"] == 0, (provider, report["fallback"])
        assert report["partition_boundaries"] == 0 and report["matmul_flops_on_device"] == 1.0


@pytest.fixture
def quantized_copy(artifact_copy):
    for mode in ("int8", "q4", "q4f16", "fp16"):
        quantize(artifact_copy, mode, options=QuantizeOptions(preset="avx2") if mode == "int8" else None)
    return artifact_copy


def test_known_answers_and_runtime_agreement(quantized_copy, run_cli):
    art = Artifact(quantized_copy)
    int8 = onnx.load(str(quantized_copy / "onnx" / "model_qint8_avx2.onnx"))
    cuda = analyse(int8, "CUDAExecutionProvider")
    ops = fallback_ops(cuda)
    assert ops["MatMulInteger"]["count"] == 14 and "uint8" in ops["MatMulInteger"]["types"]
    assert "T1=tensor(uint8)" in ops["MatMulInteger"]["reason"]
    assert ops["DynamicQuantizeLinear"]["count"] > 0
    assert cuda["partition_boundaries"] > 14 and cuda["matmul_flops_on_device"] == 0.0
    assert "use the q4f16 or fp16 variant" in cuda["verdict"]
    assert analyse(int8, "CPUExecutionProvider")["fallback_nodes"] == 0
    q4f16 = onnx.load(str(quantized_copy / "onnx" / "model_q4f16.onnx"))
    assert analyse(q4f16, "CUDAExecutionProvider")["fallback_nodes"] == 0

    results = fallback_report(
        art, variants=sorted(art.variants), providers="CPUExecutionProvider,CUDAExecutionProvider", runtime=True
    )
    for result in results:
        cpu = result["providers"]["CPUExecutionProvider"]
        assert cpu["fallback_nodes"] == 0, result["variant"]
        assert cpu["runtime"]["agree"] and cpu["runtime"]["compared"] > 0, result["variant"]
        assert cpu["runtime"]["nodes_per_provider"] == {
            "CPUExecutionProvider": sum(cpu["runtime"]["nodes_per_provider"].values())
        }
        cuda_rt = result["providers"]["CUDAExecutionProvider"]["runtime"]
        assert "could not be measured" in cuda_rt["note"]
    for variant in art.variants:
        assert (quantized_copy / "reports" / f"fallback-{variant}.json").is_file()
        assert "CUDAExecutionProvider" in (quantized_copy / "reports" / f"fallback-{variant}.md").read_text()
    manifest = Artifact(quantized_copy).manifest
    assert manifest["fallback"]["qint8_avx2"]["CUDAExecutionProvider"]["fallback_nodes"] == cuda["fallback_nodes"]
    code, out, err = run_cli(
        "fallback", quantized_copy, "--variant", "q4f16", "--providers", "CUDAExecutionProvider", "--json"
    )
    assert code == 0, err
    assert json.loads(out)[0]["providers"]["CUDAExecutionProvider"]["fallback_nodes"] == 0


def _single_node_model(node, inputs, outputs, opsets):
    graph = helper.make_graph([node], "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])


def test_group_query_attention_fp32_is_unsupported_on_cuda():
    def t(name, dtype):
        return helper.make_tensor_value_info(name, dtype, None)

    for dtype, cuda_ok in ((TensorProto.FLOAT, False), (TensorProto.FLOAT16, True)):
        names = ["query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length"]
        types = [dtype] * 5 + [TensorProto.INT32] * 2
        node = helper.make_node(
            "GroupQueryAttention",
            names,
            ["out", "present_key", "present_value"],
            domain="com.microsoft",
            num_heads=4,
            kv_num_heads=2,
            name="gqa",
        )
        model = _single_node_model(
            node,
            [t(n, d) for n, d in zip(names, types)],
            [t("out", dtype), t("present_key", dtype), t("present_value", dtype)],
            [("", 21), ("com.microsoft", 1)],
        )
        cuda = analyse(model, "CUDAExecutionProvider")
        assert (cuda["fallback_nodes"] == 0) == cuda_ok
        assert analyse(model, "CPUExecutionProvider")["fallback_nodes"] == 0


def test_opset_range_mismatch_is_detected():
    """CUDA registers Scatter for versions 9-10 only; at opset 11 the node is Scatter-11."""

    def t(name, dtype):
        return helper.make_tensor_value_info(name, dtype, None)

    node = helper.make_node("Scatter", ["data", "indices", "updates"], ["out"], name="scatter")
    inputs = [t("data", TensorProto.FLOAT), t("indices", TensorProto.INT64), t("updates", TensorProto.FLOAT)]
    old = analyse(_single_node_model(node, inputs, [t("out", TensorProto.FLOAT)], [("", 10)]), "CUDAExecutionProvider")
    new = analyse(_single_node_model(node, inputs, [t("out", TensorProto.FLOAT)], [("", 11)]), "CUDAExecutionProvider")
    assert old["fallback_nodes"] == 0
    assert new["fallback_nodes"] == 1 and new["fallback"][0]["reason"].startswith("opset mismatch")


def test_other_providers_have_tables(qwen3_artifact):
    model = onnx.load(str(qwen3_artifact / "onnx" / "model.onnx"))
    for provider in ("TensorrtExecutionProvider", "OpenVINOExecutionProvider"):
        report = analyse(model, provider)
        assert report["nodes_total"] == len(model.graph.node) and report["source"]


def test_regeneration_script_reproduces_the_vendored_table(tmp_path):
    kernels = REPO / "qconv" / "data" / "kernels"
    out = tmp_path / "kernels.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "regen_ort_kernels.py"), str(kernels / "OperatorKernels.md"), str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text()) == json.loads((kernels / "ort_kernels.json").read_text())


def test_bad_input(artifact_copy, run_cli):
    code, _, err = run_cli("fallback", artifact_copy, "--providers", "QuantumExecutionProvider")
    assert code == 2 and "unknown execution provider 'QuantumExecutionProvider'" in err
    assert "CUDAExecutionProvider" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("fallback", artifact_copy, "--variant", "q4")
    assert code == 2 and "no variant 'q4'" in err
    (artifact_copy / "onnx" / "model.onnx").write_bytes(b"garbage")
    code, _, err = run_cli("fallback", artifact_copy)  # damaged since export: the integrity check says so
    assert code == 2 and "onnx/model.onnx changed since qconv recorded it" in err and len(err.strip().splitlines()) == 1
    from qconv.artifact import Artifact

    art = Artifact(artifact_copy)
    art.record_files("onnx/model.onnx")  # garbage as recorded: the ONNX reader's refusal is one line too
    art.save()
    code, _, err = run_cli("fallback", artifact_copy)
    assert code == 2 and "not a readable ONNX model" in err and len(err.strip().splitlines()) == 1
