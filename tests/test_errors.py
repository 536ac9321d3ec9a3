"""Bad input: one line on stderr, exit status 2, no traceback, nothing written."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qconv.convert.export import export_embedding
from qconv.convert.parity import ParityThresholds
from qconv.errors import QconvError


def assert_one_line_error(code, err, *needles, status=2):
    assert code == status, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_unknown_model_path_in_a_real_process(tmp_path):
    out = tmp_path / "out"
    script = Path(sys.executable).parent / "qconv"
    proc = subprocess.run(
        [str(script), "export", "embedding", "--model", str(tmp_path / "missing"), "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert_one_line_error(proc.returncode, proc.stderr, "does not exist")
    assert not out.exists()


def test_default_model_offline_says_to_pass_model_dir(run_cli, tmp_path):
    code, _, err = run_cli("export", "embedding", "--output", tmp_path / "out")
    assert_one_line_error(code, err, "Qwen/Qwen3-Embedding-0.6B", "--model DIR")
    assert not (tmp_path / "out").exists()


def test_non_text_model(run_cli, tmp_path):
    model = tmp_path / "vit"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 32}))
    code, _, err = run_cli("export", "embedding", "--model", model, "--output", tmp_path / "out")
    assert_one_line_error(code, err, "no tokenizer", "'vit'")
    assert not (tmp_path / "out").exists()


def test_unsupported_architecture(run_cli, tmp_path, qwen3_tokenizer_dir):
    model = tmp_path / "gpt2"
    shutil.copytree(qwen3_tokenizer_dir, model)
    (model / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 32}))
    code, _, err = run_cli("export", "embedding", "--model", model, "--output", tmp_path / "out")
    assert_one_line_error(code, err, "unsupported architecture 'gpt2'", "qwen3")
    assert not (tmp_path / "out").exists()


def test_model_directory_without_config(run_cli, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli("export", "embedding", "--model", tmp_path / "empty")
    assert_one_line_error(code, err, "no config.json")


def test_unknown_pooling_and_bad_opset(run_cli, tiny_qwen3, tmp_path):
    code, _, err = run_cli(
        "export", "embedding", "--model", tiny_qwen3, "--pooling", "max", "--output", tmp_path / "out"
    )
    assert_one_line_error(code, err, "unknown --pooling 'max' (choose auto, lasttoken, mean, cls)")
    code, _, err = run_cli("export", "embedding", "--model", tiny_qwen3, "--opset", "11", "--output", tmp_path / "out")
    assert_one_line_error(code, err, "--opset 11")
    assert not (tmp_path / "out").exists()


def test_existing_output_needs_overwrite(run_cli, tiny_qwen3, artifact_copy):
    before = (artifact_copy / "qconv.json").read_bytes()
    code, _, err = run_cli("export", "embedding", "--model", tiny_qwen3, "--output", artifact_copy)
    assert_one_line_error(code, err, "already exists", "--overwrite")
    assert (artifact_copy / "qconv.json").read_bytes() == before


def test_failed_parity_leaves_nothing_and_keeps_the_good_artifact(tiny_qwen3, artifact_copy, tmp_path):
    impossible = ParityThresholds(min_cosine=1.5)
    with pytest.raises(QconvError, match="parity check failed.*nothing was written"):
        export_embedding(str(tiny_qwen3), tmp_path / "fresh", thresholds=impossible)
    assert not (tmp_path / "fresh").exists()
    before = {p.relative_to(artifact_copy): p.read_bytes() for p in artifact_copy.rglob("*") if p.is_file()}
    with pytest.raises(QconvError, match="parity check failed"):
        export_embedding(str(tiny_qwen3), artifact_copy, thresholds=impossible, overwrite=True)
    after = {p.relative_to(artifact_copy): p.read_bytes() for p in artifact_copy.rglob("*") if p.is_file()}
    assert before == after
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_dataset_file_without_expected_columns(run_cli, artifact_copy, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(json.dumps({"text_a": "x", "sentence2": "y", "label": 1}) for _ in range(3)))
    code, _, err = run_cli("validate", artifact_copy, "--dataset", "sts12", "--data-files", bad)
    assert_one_line_error(code, err, "lacks column(s) sentence1, score")
    assert not (artifact_copy / "reports").exists()


def test_missing_data_file_and_unknown_dataset(run_cli, artifact_copy, tmp_path):
    code, _, err = run_cli("validate", artifact_copy, "--dataset", "sts12", "--data-files", tmp_path / "no.jsonl")
    assert_one_line_error(code, err, "does not exist")
    code, _, err = run_cli("validate", artifact_copy, "--dataset", "sts99")
    assert_one_line_error(code, err, "unknown dataset 'sts99'", "sts12", "bq")


def test_dim_larger_than_hidden_size(run_cli, artifact_copy):
    code, _, err = run_cli("validate", artifact_copy, "--dataset", "sts12", "--dim", "65")
    assert_one_line_error(code, err, "--dim 65", "64")
    assert not (artifact_copy / "reports").exists()


def test_artifact_without_manifest(run_cli, tmp_path):
    (tmp_path / "art").mkdir()
    code, _, err = run_cli("validate", tmp_path / "art", "--dataset", "sts12")
    assert_one_line_error(code, err, "not a qconv artifact")


def test_corrupt_onnx_in_a_real_process(artifact_copy):
    from qconv.artifact import Artifact

    (artifact_copy / "onnx" / "model.onnx").write_bytes(b"this is not a protobuf")
    script = Path(sys.executable).parent / "qconv"
    command = [str(script), "validate", str(artifact_copy), "--dataset", "sts12", "--limit", "10"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    # Damaged after its stage recorded it: caught by the integrity check before anything reads it.
    assert_one_line_error(proc.returncode, proc.stderr, "onnx/model.onnx changed since qconv recorded it")
    # Corrupt as written (its hash recorded as it is): onnxruntime's refusal is still one line.
    art = Artifact(artifact_copy)
    art.record_files("onnx/model.onnx")
    art.save()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert_one_line_error(proc.returncode, proc.stderr, "onnxruntime cannot load", "model.onnx")


def test_unknown_variant_and_provider(run_cli, artifact_copy):
    code, _, err = run_cli("validate", artifact_copy, "--dataset", "sts12", "--variant", "O9")
    assert_one_line_error(code, err, "no variant 'O9'", "model")
    code, _, err = run_cli("validate", artifact_copy, "--dataset", "sts12", "--providers", "NoSuchExecutionProvider")
    assert_one_line_error(code, err, "NoSuchExecutionProvider", "CPUExecutionProvider")


def test_unknown_option_is_one_line(run_cli):
    code, _, err = run_cli("validate", "--no-such-flag")
    assert_one_line_error(code, err, "--no-such-flag")


def _char_level_causal_lm(directory: Path) -> Path:
    """A causal LM whose tokenizer spells 'yes' as three tokens."""
    from tokenizers import Tokenizer, models
    from transformers import Qwen3Config, Qwen3ForCausalLM

    directory.mkdir()
    vocab = {c: i for i, c in enumerate(list("abcdefghijklmnopqrstuvwxyz <>:\n") + ["<pad>"])}
    Tokenizer(models.BPE(vocab=vocab, merges=[])).save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "<pad>"})
    )
    config = Qwen3Config(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        architectures=["Qwen3ForCausalLM"],
    )
    Qwen3ForCausalLM(config).save_pretrained(directory, safe_serialization=True)
    return directory


def test_reranker_without_single_yes_no_tokens(run_cli, tmp_path):
    model = _char_level_causal_lm(tmp_path / "charlm")
    code, _, err = run_cli("export", "reranker", "--model", model, "--seq-cls", "--output", tmp_path / "out")
    assert_one_line_error(code, err, "'yes'", "single token")
    assert not (tmp_path / "out").exists()


def test_seq_cls_needs_a_causal_lm(run_cli, tiny_qwen3, tmp_path):
    code, _, err = run_cli("export", "reranker", "--model", tiny_qwen3, "--seq-cls", "--output", tmp_path / "out")
    assert_one_line_error(code, err, "Qwen3Model", "not a causal LM")
    assert not (tmp_path / "out").exists()


def test_reranker_max_length_out_of_range(run_cli, tiny_qwen3_reranker, tmp_path):
    code, _, err = run_cli(
        "export",
        "reranker",
        "--model",
        tiny_qwen3_reranker,
        "--seq-cls",
        "--max-length",
        "0",
        "--output",
        tmp_path / "out",
    )
    assert_one_line_error(code, err, "--max-length 0")


def test_msmarco_file_without_positive_passages(run_cli, seqcls_copy, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"query_id": "1", "query": "q", "negative_passages": [{"docid": "d", "title": "", "text": "t"}]})
        + "\n"
    )
    code, _, err = run_cli("validate", seqcls_copy, "--dataset", "msmarco", "--data-files", bad)
    assert_one_line_error(code, err, "lacks column(s) positive_passages")


def test_msmarco_query_without_candidates(run_cli, seqcls_copy, tmp_path):
    bad = tmp_path / "empty.jsonl"
    rows = [
        {
            "query_id": "1",
            "query": "q",
            "positive_passages": [{"docid": "a", "title": "", "text": "t"}],
            "negative_passages": [],
        },
        {"query_id": "2", "query": "q2", "positive_passages": [], "negative_passages": []},
    ]
    bad.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    code, _, err = run_cli("validate", seqcls_copy, "--dataset", "msmarco", "--data-files", bad)
    assert_one_line_error(code, err, "query 2 has no candidate passages")


def test_repeated_dataset_is_checked_before_any_work(artifact_copy, run_cli, tmp_path):
    # msmarco is a reranker dataset: refused before sts12 runs, nothing written
    code, _, err = run_cli("validate", artifact_copy, "--dataset", "sts12", "--dataset", "msmarco")
    assert_one_line_error(code, err, "dataset 'msmarco' needs a reranker artifact")
    assert not (artifact_copy / "reports").exists()
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"sentence1": "a", "sentence2": "b", "score": 1.0}) + "\n")
    code, _, err = run_cli("validate", artifact_copy, "--dataset", "sts12", "--dataset", "bq", "--data-files", data)
    assert_one_line_error(code, err, "give a single --dataset")
    assert not (artifact_copy / "reports").exists()


def test_dataset_and_artifact_task_must_match(run_cli, seqcls_copy, artifact_copy):
    code, _, err = run_cli("validate", seqcls_copy, "--dataset", "sts12")
    assert_one_line_error(code, err, "needs an embedding artifact")
    code, _, err = run_cli("validate", artifact_copy, "--dataset", "msmarco")
    assert_one_line_error(code, err, "needs a reranker artifact")
    code, _, err = run_cli("validate", seqcls_copy, "--dataset", "msmarco", "--dim", "8")
    assert_one_line_error(code, err, "--dim does not apply")
