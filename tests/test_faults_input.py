"""Bad input and a hostile environment, run as a user runs qconv: one subprocess per case (issue 18, items 9-14).

Every failing case must end with exit 2 and one line on stderr, no traceback, every pre-existing file
byte-identical and no staging directory left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Replaces os.replace (every atomic write's last step) or the data written, before the CLI runs.
READ_ONLY = """
import errno, os
def _refuse(src, dst, *args, **kwargs):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))
os.replace = _refuse
"""
DISK_FULL = """
import errno, os
_fdopen = os.fdopen
class _Full:
    def __init__(self, fh): self.fh = fh
    def __enter__(self): return self
    def __exit__(self, *exc): self.fh.close()
    def write(self, data): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
def _fdopen_full(fd, *args, **kwargs):
    return _Full(_fdopen(fd, *args, **kwargs))
os.fdopen = _fdopen_full
"""


def qconv(*args, cwd: Path | None = None, prelude: str = "", env: dict | None = None):
    code = prelude + "\nimport sys\nfrom qconv.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "QCONV_DEBUG": "", **(env or {})},
        timeout=600,
    )


def tree_hash(*roots: Path) -> dict[str, str]:
    hashes = {}
    for root in roots:
        for path in sorted(Path(root).rglob("*")):
            if path.is_file() and ".cache" not in path.relative_to(root).parts:
                hashes[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def staging_left(*roots: Path) -> list[str]:
    return [
        str(p)
        for root in roots
        for p in Path(root).rglob(".*")
        if p.name.startswith((".quantize-", ".optimize-")) or ".tmp-" in p.name or ".old-" in p.name
    ]


def assert_rejected(proc, *needles: str, code: int = 2) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def expect_untouched(roots, run, *needles: str):
    """Run, expect a one-line exit 2, and the trees under ``roots`` exactly as before, with no staging left."""
    before = tree_hash(*roots)
    line = assert_rejected(run(), *needles)
    assert tree_hash(*roots) == before
    assert staging_left(*roots) == []
    return line


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def model_copy(tiny_qwen3, tmp_path):
    target = tmp_path / "source-model"
    shutil.copytree(tiny_qwen3, target)
    return target


# ---- 9: long texts are truncated to the artifact's max length, counted, and batched by a token budget


def test_token_batches_bound_padded_tokens_and_keep_every_index():
    from qconv.runtime.embedder import token_batches

    lengths = [3, 8192, 40, 5000, 7, 40, 8192, 1]
    batches = list(token_batches(lengths, batch_size=4, batch_tokens=8192))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for batch in batches:
        width = max(lengths[i] for i in batch)
        assert len(batch) <= 4 and (len(batch) == 1 or len(batch) * width <= 8192)
        assert lengths[batch[0]] == width  # longest first: the first row sets the padded width
    assert [len(b) for b in batches][:3] == [1, 1, 1]  # 8192, 8192, 5000 each alone


def test_long_texts_are_truncated_counted_and_match_pytorch(artifact_copy, tmp_path):
    # A 64-token artifact keeps the test light; both sides read the max length from the manifest.
    manifest = json.loads((artifact_copy / "qconv.json").read_text())
    manifest["embedding"]["max_length"] = 64
    (artifact_copy / "qconv.json").write_text(json.dumps(manifest))
    rows = [{"sentence1": "word " * (100 + 50 * i), "sentence2": f"short {i}", "score": float(i)} for i in range(4)]
    data = write_jsonl(tmp_path / "long.jsonl", rows)
    proc = qconv("validate", artifact_copy, "--dataset", "sts12", "--data-files", data, "--batch-tokens", "128")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((artifact_copy / "reports" / "validate-model-sts12.json").read_text())
    assert report["max_length"] == 64 and report["truncated_texts"] == 4
    assert "4 of 8 texts are longer than the artifact's max length" in " ".join(proc.stdout.split())
    assert report["parity"]["cosine_min"] > 0.9999


def test_validate_rejects_a_non_positive_token_budget(artifact_copy):
    expect_untouched(
        [artifact_copy],
        lambda: qconv("validate", artifact_copy, "--dataset", "sts12", "--offline", "--batch-tokens", "0"),
        "--batch-tokens must be positive",
    )


# ---- 10: environment errors and damaged inputs are exit 2 with the path and the reason


def test_read_only_artifact_is_an_environment_error(artifact_copy):
    line = expect_untouched([artifact_copy], lambda: qconv("card", artifact_copy, prelude=READ_ONLY))
    assert str(artifact_copy) in line and "Read-only file system" in line


def test_full_disk_names_the_file_being_written(artifact_copy):
    line = expect_untouched([artifact_copy], lambda: qconv("card", artifact_copy, prelude=DISK_FULL))
    assert "README.md" in line and "No space left on device" in line


@pytest.mark.parametrize(
    "damage, needle",
    [
        (lambda m: (m / "config.json").write_text("[1, 2]"), "config.json is not a model config"),
        (lambda m: (m / "tokenizer.json").write_text('{"broken": '), "could not load the tokenizer"),
        (lambda m: os.truncate(m / "model.safetensors", 1000), "could not load the model"),
    ],
    ids=["config-list", "corrupt-tokenizer", "truncated-safetensors"],
)
def test_export_of_a_damaged_model(model_copy, tmp_path, damage, needle):
    damage(model_copy)
    out = tmp_path / "out"
    expect_untouched([model_copy], lambda: qconv("export", "embedding", "--model", model_copy, "--output", out), needle)
    assert not out.exists()


@pytest.mark.parametrize(
    "command", [["quantize", "--mode", "int8"], ["quantize", "--mode", "fp16"], ["optimize", "--level", "O1"]]
)
def test_corrupt_onnx_graph(artifact_copy, command):
    from qconv.artifact import Artifact

    os.truncate(artifact_copy / "onnx" / "model.onnx", 1000)
    run = lambda: qconv(command[0], artifact_copy, *command[1:])  # noqa: E731
    # Damaged after export: the integrity check names it before anything reads it.
    expect_untouched([artifact_copy], run, "onnx/model.onnx changed since qconv recorded it")
    # Corrupt as recorded (written so by its stage): the ONNX reader's refusal is one line too.
    art = Artifact(artifact_copy)
    art.record_files("onnx/model.onnx")
    art.save()
    expect_untouched([artifact_copy], run, "model.onnx is not a readable ONNX")


@pytest.mark.parametrize(
    "command",
    [
        ["bench", "--baseline", "none", "--batch-sizes", "1", "--seq-lens", "8", "--repeats", "1"],
        ["card"],
        ["publish", "--to", "{tmp}/published", "--force"],
        ["validate", "--dataset", "sts12", "--offline", "--limit", "4"],
    ],
    ids=["bench", "card", "publish", "validate"],
)
@pytest.mark.parametrize("section", ["embedding", "source"])
def test_manifest_missing_keys(artifact_copy, tmp_path, command, section):
    manifest = json.loads((artifact_copy / "qconv.json").read_text())
    del manifest[section]
    (artifact_copy / "qconv.json").write_text(json.dumps(manifest))
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    expect_untouched([artifact_copy], lambda: qconv(args[0], artifact_copy, *args[1:]), "is damaged", section)
    assert not (tmp_path / "published").exists()


def test_non_utf8_jsonl(artifact_copy, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_bytes(b'{"sentence1": "ab\xff", "sentence2": "x", "score": 1}\n{"sentence1": "a", "sentence2": "y"}\n')
    expect_untouched(
        [artifact_copy],
        lambda: qconv("validate", artifact_copy, "--dataset", "sts12", "--data-files", data),
        "not UTF-8",
        "offset 17",
    )


def test_yaml_sequence_as_a_mapping_key(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\ntask: embedding\n? [a, b]\n: 1\nmodel: {id: m}\n")
    expect_untouched([tmp_path], lambda: qconv("run", recipe, "--dry-run", cwd=tmp_path), "r.yaml:3", "plain name")


def test_publish_to_a_path_under_a_regular_file(artifact_copy, tmp_path):
    (tmp_path / "afile").write_text("mine")
    expect_untouched(
        [artifact_copy, tmp_path],
        lambda: qconv("publish", artifact_copy, "--to", tmp_path / "afile" / "sub", "--force"),
        "is a file, not a directory",
    )


def test_debug_shows_the_chained_cause(artifact_copy, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"sentence1": "a", "sentence2": \n', encoding="utf-8")
    proc = qconv("validate", artifact_copy, "--dataset", "sts12", "--data-files", data, env={"QCONV_DEBUG": "1"})
    assert proc.returncode == 2
    assert "direct cause of the following exception" in proc.stderr and "Traceback" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: cannot read")


# ---- 11: degenerate data is rejected before anything runs or is written


@pytest.mark.parametrize(
    "rows, needle",
    [
        ([{"sentence1": f"a {i}", "sentence2": f"b {i}", "score": 3.0} for i in range(4)], "every score is 3"),
        ([{"sentence1": "", "sentence2": " ", "score": float(i)} for i in range(4)], "text is empty"),
    ],
    ids=["equal-scores", "empty-texts"],
)
def test_degenerate_sts_data(artifact_copy, tmp_path, rows, needle):
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    expect_untouched(
        [artifact_copy], lambda: qconv("validate", artifact_copy, "--dataset", "sts12", "--data-files", data), needle
    )


# ---- 12: recipe values are checked at load (--dry-run), before step 1

RECIPE_HEAD = "name: x\ntask: embedding\nmodel: {testmodel: {shape: tiny}}\n"


@pytest.mark.parametrize(
    "body, needle",
    [
        ("validate:\n  - dataset: sts12\n    limit: -3\n", "validate[0].limit: must be at least 1, got -3"),
        ("validate:\n  - dataset: sts12\n    providers: [FooEP]\n", "FooEP not available"),
        ("fallback:\n  providers: [FooEP]\n", "FooEP not known"),
        ("name: y\n", "duplicate key 'name'"),
        ("stages:\n  - stage: quantize\n    mode: q4\n    mode: int8\n", "duplicate key 'mode'"),
        ("stages:\n  - stage: quantize\n    mode: q4\n    accuracy_level: 9\n", "between 0 and 4"),
    ],
    ids=["negative-limit", "unavailable-provider", "unknown-provider", "duplicate-key", "duplicate-stage-key", "q4"],
)
def test_recipe_schema(tmp_path, body, needle):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE_HEAD + body)
    expect_untouched(
        [tmp_path], lambda: qconv("run", recipe, "--dry-run", "--output", tmp_path / "out", cwd=tmp_path), needle
    )
    assert not (tmp_path / "out").exists()


# ---- 13: arguments that were silently accepted


@pytest.mark.parametrize(
    "args, needle",
    [
        (["quantize", "{art}", "--mode", "q4", "--accuracy-level", "9"], "--accuracy-level 9"),
        (["validate", "{art}", "--dataset", "sts12", "--offline", "--batch-size", "0"], "--batch-size"),
        (["bench", "{art}", "--threads", "-2", "--baseline", "none", "--seq-lens", "8"], "--threads"),
        (["validate", "{art}", "--dataset", "sts12", "--offline", "--split", "nosuch"], "split 'nosuch'"),
        (["publish", "{art}", "--to", "{tmp}/foo.zip", "--force"], ".tar.gz"),
    ],
    ids=["accuracy-level", "batch-size", "threads", "split", "zip"],
)
def test_rejected_arguments(artifact_copy, tmp_path, args, needle):
    args = [a.replace("{art}", str(artifact_copy)).replace("{tmp}", str(tmp_path)) for a in args]
    expect_untouched([artifact_copy, tmp_path], lambda: qconv(*args), needle)
    assert not (tmp_path / "foo.zip").exists()


def test_null_msmarco_passage_is_skipped_not_scored_as_none(seqcls_copy, tmp_path):
    row = {
        "query_id": "1",
        "query": "what is the capital of china?",
        "positive_passages": [{"title": "", "text": "Beijing is the capital of China."}],
        "negative_passages": [{"title": "", "text": None}, {"title": None, "text": "Bananas are yellow."}],
    }
    data = write_jsonl(tmp_path / "m.jsonl", [row])
    proc = qconv("validate", seqcls_copy, "--dataset", "msmarco", "--data-files", data)
    assert proc.returncode == 0, proc.stderr
    assert "skipped 1 passage(s) without text" in " ".join(proc.stdout.split())
    report = json.loads((seqcls_copy / "reports" / "validate-model-msmarco.json").read_text())
    assert report["n_pairs"] == 2 and report["truncated_pairs"] == 0
    # One query cannot be resampled: no interval, and the report says why (it used to crash in scipy).
    assert report["delta_ci"] == {} and "fewer than 2 queries" in report["bootstrap"]["skipped"]


# ---- 14: wording, and checks that need no model before the model is loaded


def test_a_file_given_as_artifact(artifact_copy):
    line = expect_untouched([artifact_copy], lambda: qconv("quantize", artifact_copy / "qconv.json", "--mode", "int8"))
    assert "is a file, not an artifact directory" in line and "does not exist" not in line


def test_empty_jsonl(artifact_copy, tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    line = expect_untouched(
        [artifact_copy],
        lambda: qconv("validate", artifact_copy, "--dataset", "sts12", "--data-files", tmp_path / "empty.jsonl"),
        "is empty",
    )
    assert "StopIteration" not in line


@pytest.mark.parametrize(
    "extra, needle",
    [([], "already exists and is not empty"), (["--opset", "5"], "--opset 5 is not supported")],
    ids=["existing-output", "opset"],
)
def test_export_checks_arguments_before_loading_the_model(model_copy, tmp_path, extra, needle):
    # The weights are unreadable: reaching the model loader would report that instead.
    os.truncate(model_copy / "model.safetensors", 1000)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    expect_untouched(
        [model_copy, out],
        lambda: qconv("export", "embedding", "--model", model_copy, "--output", out, *extra),
        needle,
    )


def test_q4_does_not_flood_stderr_with_onnxruntime_info(artifact_copy):
    proc = qconv("quantize", artifact_copy, "--mode", "q4")
    assert proc.returncode == 0, proc.stderr
    assert "[INFO]" not in proc.stderr and "[INFO]" not in proc.stdout
    assert staging_left(artifact_copy) == []


def test_export_output_under_a_regular_file(model_copy, tmp_path):
    (tmp_path / "afile").write_text("mine")
    expect_untouched(
        [model_copy, tmp_path],
        lambda: qconv("export", "embedding", "--model", model_copy, "--output", tmp_path / "afile" / "art"),
        "is a file, not a directory",
    )
