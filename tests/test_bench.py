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


# -- the bench stage: one declaration (BenchStep) for the recipe section, the runner and `qconv bench` --------

BENCH_RECIPE = """\
name: benched
task: embedding
model:
  testmodel: {shape: tiny}
card: false
bench:
  baseline: none
  batch_sizes: [1]
  seq_lens: [4]
  threads: 1
  repeats: 1
  warmup: 0
"""


def test_bench_is_a_registered_stage_between_fallback_and_card():
    from qconv.pipeline.stages import STAGES, stage_kinds

    kinds = stage_kinds()
    assert "bench" in kinds and kinds.index("fallback") < kinds.index("bench") < kinds.index("card")
    assert STAGES["bench"].section == "bench"


def test_a_recipe_bench_section_is_planned_and_checked(run_cli, tmp_path):
    from qconv.pipeline.configs import BenchStep
    from qconv.pipeline.recipe import load_recipe

    path = tmp_path / "recipe.yaml"
    text = BENCH_RECIPE.replace("card: false\n", "stages:\n  - stage: quantize\n    mode: fp16\n")
    path.write_text(text, encoding="utf-8")
    recipe = load_recipe(path)
    assert recipe.bench == BenchStep(baseline="none", batch_sizes=[1], seq_lens=[4], threads=1, repeats=1, warmup=0)
    code, out, err = run_cli("run", path, "--dry-run", "--offline", "--output", tmp_path / "out")
    assert code == 0, err
    assert "bench model, fp16 (batch 1 x seq 4)" in " ".join(out.split())
    assert out.index("bench model") < out.index("model card")
    for old, new, needle in (
        ("repeats: 1", "repeats: 0", "recipe.yaml:13: bench.repeats: must be at least 1, got 0"),
        ("batch_sizes: [1]", "batch_sizes:\n    - 1\n    - 0", "recipe.yaml:12: bench.batch_sizes[1]: must be at"),
        ("baseline: none", "baseline: tf", "recipe.yaml:9: bench.baseline: 'tf' is not one of torch, none"),
        ("baseline: none", "variants: [nope]", "recipe.yaml:9: bench.variants: 'nope' is not made by this recipe"),
        ("threads: 1", "thread: 1", "recipe.yaml:12: unknown key 'thread' in bench"),
    ):
        path.write_text(text.replace(old, new), encoding="utf-8")
        code, _, err = run_cli("run", path, "--dry-run", "--output", tmp_path / "out")
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_bench_cli_options_come_from_the_declaration(run_cli, artifact_copy):
    import shlex

    from qconv.cli import bench_cmd
    from qconv.pipeline.configs import BenchStep
    from qconv.pipeline.options import config_from_cli, to_argv

    code, out, _ = run_cli("bench", "--help")
    text = " ".join(out.split())
    assert code == 0
    assert "--repeats INTEGER Timed repetitions per shape. [default: 5]" in text
    assert "--batch-sizes INTEGER,... Batch sizes, comma-separated. [default: 1,8]" in text
    assert "--baseline [torch|none]" in text
    config = BenchStep(variants=["model", "fp16"], batch_sizes=[2, 4], seq_lens=[16], threads=2, baseline="none")
    argv = shlex.split(shlex.join(to_argv(config)))
    assert "--batch-sizes" in argv and "2,4" in argv
    assert config_from_cli(bench_cmd.make_context("bench", argv), BenchStep, "bench") == config
    # repeated flags and comma-separated values give the same list
    ctx = bench_cmd.make_context("bench", ["--seq-lens", "8,16", "--seq-lens", "32"])
    assert config_from_cli(ctx, BenchStep, "bench").seq_lens == [8, 16, 32]
    before = sorted((p.relative_to(artifact_copy), p.stat().st_mtime_ns) for p in artifact_copy.rglob("*"))
    for args, needle in (
        (["--repeats", "0"], "--repeats 0 is not supported for bench (at least 1)"),
        (["--warmup", "-1"], "--warmup -1 is not supported for bench (at least 0)"),
        (["--seq-lens", "8,x"], "--seq-lens takes integers separated by ',', got '8,x'"),
        (["--threads", "0"], "--threads 0 is not supported for bench (at least 1)"),
    ):
        code, out, err = run_cli("bench", artifact_copy, *args)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert sorted((p.relative_to(artifact_copy), p.stat().st_mtime_ns) for p in artifact_copy.rglob("*")) == before


def test_the_bench_stage_runs_through_qconv_run_and_resumes(run_cli, tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(BENCH_RECIPE, encoding="utf-8")
    out = tmp_path / "out"
    code, _, err = run_cli("run", path, "--offline", "--only", "bench", "--output", out)
    assert code == 2 and "run the earlier stages first" in err
    code, _, err = run_cli("run", path, "--offline", "--only", "export", "--output", out)
    assert code == 0, err
    code, _, err = run_cli("run", path, "--offline", "--only", "bench", "--output", out)
    assert code == 0, err
    art = out / "benched"
    manifest = json.loads((art / "qconv.json").read_text())
    assert "bench" in manifest["recipe"]["steps"] and manifest["bench"]["options"]["repeats"] == 1
    report = json.loads((art / "reports" / "bench.json").read_text())
    assert [(r["runtime"], r["batch"], r["seq"]) for r in report["rows"]] == [("model", 1, 4)]
    assert report["machine"]["threads"] == 1
    summary = json.loads((art / "reports" / "recipe-summary.json").read_text())
    assert summary["steps"] == [{"step": "bench", "status": "ran"}]
    code, _, err = run_cli("run", path, "--offline", "--output", out)
    assert code == 0, err
    summary = json.loads((art / "reports" / "recipe-summary.json").read_text())
    assert {s["step"]: s["status"] for s in summary["steps"]} == {"export": "skipped", "bench": "skipped"}
    # a changed bench option measures again; a damaged report too
    path.write_text(BENCH_RECIPE.replace("seq_lens: [4]", "seq_lens: [4, 8]"), encoding="utf-8")
    rows = {r["step"]: r["status"] for r in _dry_run(run_cli, path, out)}
    assert rows == {"export": "up to date: skip", "bench": "run"}
    path.write_text(BENCH_RECIPE, encoding="utf-8")
    (art / "reports" / "bench.json").write_text("{}", encoding="utf-8")
    rows = {r["step"]: r["status"] for r in _dry_run(run_cli, path, out)}
    assert rows["bench"] == "run"


def _dry_run(run_cli, path, out):
    from qconv.pipeline.run import RunOptions, run_recipe

    return run_recipe(path, RunOptions(offline=True, output=out, dry_run=True))["plan"]
