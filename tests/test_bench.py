"""qconv bench on tiny artifacts with one repetition: structure, ratios, subprocess isolation."""

import json
import os

import pytest

from qconv.bench.runner import bench, flops_per_token
from qconv.convert.quantize import QuantizeOptions, quantize


def test_bench_embedding_variants_and_torch_baseline(artifact_copy, run_cli):
    quantize(artifact_copy, "int8", options=QuantizeOptions(preset="avx2"))
    result = bench(artifact_copy, batch_sizes="1,2", seq_lens="8", repeats=1, warmup=0, threads=1)
    runtimes = {r["runtime"] for r in result["rows"]}
    assert runtimes >= {"model", "qint8_avx2", "torch-fp32"}
    assert len(result["rows"]) == len(runtimes) * 2
    pids = {r["runtime"]: r["pid"] for r in result["rows"]}
    assert os.getpid() not in pids.values() and len(set(pids.values())) == len(pids)  # one process each
    for r in result["rows"]:
        assert r["throughput"] > 0 and r["peak_rss_bytes"] > 10_000_000 and r["gflops"] > 0
        assert set(r["latency_ms"]) == {50, 90, 99}
        baseline = next(
            b
            for b in result["rows"]
            if b["runtime"] == "torch-fp32" and (b["batch"], b["seq"]) == (r["batch"], r["seq"])
        )
        assert r["vs_torch_fp32"] == pytest.approx(r["throughput"] / baseline["throughput"])
    assert any("Random weights" in n for n in result["notes"])
    reports = artifact_copy / "reports"
    assert json.loads((reports / "bench.json").read_text())["rows"]
    assert "vs torch fp32" in (reports / "bench.md").read_text()
    assert (reports / "bench.png").read_bytes()[:4] == b"\x89PNG"
    code, out, err = run_cli(
        "bench",
        artifact_copy,
        "--variants",
        "model",
        "--baseline",
        "none",
        "--batch-sizes",
        "1",
        "--seq-lens",
        "4",
        "--repeats",
        "1",
        "--json",
    )
    assert code == 0, err
    assert [r["runtime"] for r in json.loads(out)["rows"]] == ["model"]


def test_bench_reranker_against_the_per_document_loop(seqcls_copy):
    result = bench(seqcls_copy, batch_sizes="2", seq_lens="16", repeats=1, warmup=0, threads=1)
    loop = next(r for r in result["rows"] if r["runtime"] == "torch-causal-lm-per-document")
    assert loop["batch"] == 10
    onnx_row = next(r for r in result["rows"] if r["runtime"] == "model")
    assert onnx_row["vs_causal_lm_per_document"] == pytest.approx(onnx_row["throughput"] / loop["throughput"])


def test_flops_of_the_qwen3_0_6b_shape():
    config = {
        "model_type": "qwen3",
        "hidden_size": 1024,
        "num_hidden_layers": 28,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 3072,
        "vocab_size": 151669,
    }
    # 2 x 440M non-embedding weights per token, plus attention over 128 positions
    assert flops_per_token(config, 128) == pytest.approx(2 * 440.4e6 + 2 * 28 * 2 * 128 * 2048, rel=0.01)


def test_bad_input(artifact_copy, run_cli):
    code, _, err = run_cli("bench", artifact_copy, "--batch-sizes", "0")
    assert code == 2 and "--batch-sizes" in err
    code, _, err = run_cli("bench", artifact_copy, "--variants", "nope")
    assert code == 2 and "no variant 'nope'" in err
    code, _, err = run_cli("bench", artifact_copy, "--baseline", "tensorflow")
    assert code == 2 and "unknown --baseline" in err
