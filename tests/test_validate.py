"""qconv validate on embedding artifacts: data sources, reference cache, metrics, reports, gates."""

import json

import pytest

from qconv.artifact import Artifact, find_artifact
from qconv.errors import GateFailed, QconvError
from qconv.validate.datasets import dataset_spec, load_pairs
from qconv.validate.embedding import validate_embedding

REQUIRED_KEYS = [
    "dataset",
    "split",
    "source",
    "n_pairs",
    "variant",
    "providers",
    "metric",
    "reference",
    "candidate",
    "delta",
    "parity",
    "thresholds",
    "passed",
]


def test_validate_bundled_sts12_writes_reports(artifact_copy):
    report = validate_embedding(artifact_copy, "sts12", limit=120)
    for key in REQUIRED_KEYS:
        assert key in report
    assert report["source"] == "bundled-sample"
    assert report["revision"] == dataset_spec("sts12").revision
    assert report["n_pairs"] == 120 and report["metric"] == "cosine_spearman"
    assert report["providers"] == ["CPUExecutionProvider"]
    assert report["passed"] is True
    assert report["parity"]["cosine_min"] >= 0.99999
    assert abs(report["delta"]) <= 1e-4
    assert report["thresholds"] == {"min_cosine": 0.99999, "max_delta": 1e-4}
    assert report["prompt"] == "Instruct: Retrieve semantically similar text.\nQuery:"
    assert report["placement"]["CPUExecutionProvider"]["fallback_nodes"] == 0
    reports = artifact_copy / "reports"
    saved = json.loads((reports / "validate-model-sts12.json").read_text())
    assert saved["reference"]["metric_value"] == report["reference"]["metric_value"]
    markdown = (reports / "validate-model-sts12.md").read_text()
    assert "validate-model-sts12-scatter.png" in markdown and "validate-model-sts12-cosine.png" in markdown
    for png in ("validate-model-sts12-scatter.png", "validate-model-sts12-cosine.png"):
        assert (reports / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = Artifact(artifact_copy).manifest
    assert manifest["validation"]["model"]["sts12"]["passed"] is True
    assert manifest["stages"][-1]["stage"] == "validate"
    assert "reports/validate-model-sts12.json" in manifest["files"]


def test_reference_embeddings_are_cached(artifact_copy):
    first = validate_embedding(artifact_copy, "bq", limit=40)
    second = validate_embedding(artifact_copy, "bq", limit=40)
    assert first["reference"]["cached"] is False and second["reference"]["cached"] is True
    assert second["reference"]["metric_value"] == first["reference"]["metric_value"]
    other_prompt = validate_embedding(artifact_copy, "bq", limit=40, instruction="Find duplicate questions.")
    assert other_prompt["reference"]["cached"] is False
    assert other_prompt["reference"]["cache_key"] != first["reference"]["cache_key"]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", ".csv"])
def test_data_files_in_every_format(artifact_copy, tmp_path, suffix):
    import datasets

    rows = [
        {"sentence1": f"text number {i}", "sentence2": f"another text {i % 7}", "score": float(i % 5)}
        for i in range(30)
    ]
    path = tmp_path / f"pairs{suffix}"
    ds = datasets.Dataset.from_list(rows)
    {".jsonl": ds.to_json, ".parquet": ds.to_parquet, ".csv": ds.to_csv}[suffix](str(path))
    report = validate_embedding(artifact_copy, "sts12", data_files=path)
    assert report["source"] == "data-files" and report["n_pairs"] == 30 and report["passed"]


def test_matryoshka_dim_and_no_instruction(artifact_copy):
    report = validate_embedding(artifact_copy, "sts12", limit=60, dim=32, instruction="")
    assert report["dim"] == 32 and report["prompt"] == "" and report["passed"]
    assert report["instruction"] == "" and report["instruction_rule"].startswith("none")
    # '' is the prompt-free input: the reference cache key is the one of no prompt at all.
    from qconv.validate.embedding import prompt_for

    assert prompt_for(Artifact(artifact_copy), "", "Retrieve semantically similar text.") is None


def test_intervals_worst_items_and_facts_in_the_report(artifact_copy, run_cli):
    report = validate_embedding(artifact_copy, "sts12", limit=80, bootstrap=300)
    assert report["full_split"] is False and report["real_weights"] is False  # bundled sample, random weights
    assert report["instruction_rule"].startswith("default")
    assert set(report["delta_ci"]) == {"cosine_spearman", "cosine_pearson"}
    main = report["delta_ci"]["cosine_spearman"]
    assert main["delta"] == report["delta"] and main["low"] <= main["delta"] <= main["high"]
    assert report["bootstrap"] == {
        "n_resamples": 300,
        "resampled": "pairs",
        "seed": 0,
        "confidence": 0.95,
        "method": report["bootstrap"]["method"],
    }
    worst = report["worst"]["items"]
    cosines = [w["cosine"] for w in worst]
    assert len(worst) == 5 and cosines == sorted(cosines) and cosines[0] == report["parity"]["cosine_min"]
    assert all(isinstance(w["text"], str) and w["text"] for w in worst)
    markdown = (artifact_copy / "reports" / "validate-model-sts12.md").read_text()
    assert "delta [95% CI]" in markdown and "Worst 5 by per-text cosine" in markdown
    assert "the gates read the point estimate" in markdown and "full Hub split: no" in markdown
    # Gates read the point estimate: the same run passes whatever the interval says.
    again = validate_embedding(artifact_copy, "sts12", limit=80, bootstrap=0)
    assert again["delta_ci"] == {} and again["passed"] == report["passed"] and again["delta"] == report["delta"]
    summary = Artifact(artifact_copy).manifest["validation"]["model"]["sts12"]
    assert summary["delta_ci"] is None and summary["full_split"] is False and summary["real_weights"] is False
    code, out, err = run_cli("validate", artifact_copy, "--dataset", "sts12", "--limit", "20", "--bootstrap", "-1")
    assert code == 2 and "--bootstrap" in err and "Traceback" not in err


def test_failed_gate_still_writes_the_report(artifact_copy):
    with pytest.raises(GateFailed) as excinfo:
        validate_embedding(artifact_copy, "sts12", limit=30, min_cosine=1.5)
    assert excinfo.value.exit_code == 1
    saved = json.loads((artifact_copy / "reports" / "validate-model-sts12.json").read_text())
    assert saved["passed"] is False and saved["failures"]
    assert Artifact(artifact_copy).manifest["validation"]["model"]["sts12"]["passed"] is False


def test_cli_json_and_exit_status(artifact_copy, run_cli):
    code, out, err = run_cli("validate", artifact_copy, "--dataset", "sts12", "--limit", "40", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["passed"] is True and report["n_pairs"] == 40
    code, out, err = run_cli("validate", artifact_copy, "--dataset", "sts12", "--limit", "40", "--max-delta", "-1")
    assert code == 1
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: validation failed") and "Traceback" not in err


def test_repeated_dataset_validates_each(artifact_copy, run_cli):
    code, out, err = run_cli(
        "validate", artifact_copy, "--dataset", "sts12", "--dataset", "bq", "--limit", "20", "--json"
    )
    assert code == 0, err
    reports = json.loads(out)
    assert [r["dataset"] for r in reports] == ["sts12", "bq"] and all(r["n_pairs"] == 20 for r in reports)
    for name in ("sts12", "bq"):
        assert (artifact_copy / "reports" / f"validate-model-{name}.json").is_file()
    assert set(Artifact(artifact_copy).manifest["validation"]["model"]) == {"sts12", "bq"}


def test_artifact_discovery(artifact_copy, tmp_path, monkeypatch, run_cli):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "artifacts").mkdir()
    with pytest.raises(QconvError, match="none found"):
        find_artifact(None)
    link = tmp_path / "artifacts" / "only"
    link.symlink_to(artifact_copy, target_is_directory=True)
    assert find_artifact(None).path == artifact_copy.resolve()
    code, out, err = run_cli("validate", "--dataset", "sts12", "--limit", "20")
    assert code == 0, err
    (tmp_path / "artifacts" / "second").symlink_to(artifact_copy, target_is_directory=True)
    code, out, err = run_cli("validate", "--dataset", "bq", "--limit", "20")
    assert code == 2 and "several artifacts" in err and "only" in err and "second" in err
    monkeypatch.setenv("QCONV_ARTIFACT", str(artifact_copy))
    assert find_artifact(None).path == artifact_copy.resolve()


def test_load_pairs_limit_and_fingerprint():
    spec = dataset_spec("bq")
    a = load_pairs(spec, limit=10)
    b = load_pairs(spec, limit=11)
    assert len(a) == 10 and a.source == "bundled-sample" and a.fingerprint != b.fingerprint
    assert a.sentence1[0] == "如何提高借款额度"


def test_explicit_reference_model(artifact_copy, tiny_qwen3):
    report = validate_embedding(artifact_copy, "sts12", limit=30, reference=str(tiny_qwen3))
    assert report["reference"]["model"] == str(tiny_qwen3) and report["passed"]


def test_changed_reference_is_refused(qwen3_artifact, tiny_qwen3, tmp_path):
    """A local source edited after export must not silently serve as the reference."""
    import shutil

    source = tmp_path / "source"
    shutil.copytree(tiny_qwen3, source)
    from qconv.convert.export import export_embedding

    art = export_embedding(str(source), tmp_path / "art").path
    config = json.loads((source / "config.json").read_text())
    config["rms_norm_eps"] = 1e-5
    (source / "config.json").write_text(json.dumps(config))
    with pytest.raises(QconvError, match="changed since export"):
        validate_embedding(art, "sts12", limit=10)
