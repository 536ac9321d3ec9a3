"""Recipes: schema errors name file, line and key; ``qconv run`` is resumable and gates its exit status."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from qconv.errors import QconvError
from qconv.pipeline.recipe import load_recipe
from qconv.pipeline.run import RunOptions, plan, run_recipe

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
SHIPPED = sorted(RECIPES.glob("*.yaml"))

SMALL = """\
name: small
task: embedding
model:
  testmodel: {shape: tiny}
stages:
  - stage: quantize
    mode: fp16
validate:
  - dataset: sts12
    limit: 24
"""


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_recipes_load_and_plan(path):
    recipe = load_recipe(path)
    steps = plan(recipe, RunOptions())
    assert steps[0].id == "export" and steps[-1].id == "card"
    assert any(s.kind == "validate" for s in steps)
    if recipe.model.id:  # Hub recipes: the file name is the artifact name the publish workflow uses
        assert recipe.name == path.stem and recipe.model.id.startswith("Qwen/Qwen3-")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (SMALL.replace("task: embedding", "task: embedding\nstagez: []"), "recipe.yaml:3: unknown key 'stagez'"),
        (SMALL.replace("mode: fp16", "mode: fp16\n    blok_size: 8"), "recipe.yaml:8: unknown key 'blok_size'"),
        (SMALL.replace("stage: quantize", "stage: quantise"), "recipe.yaml:6: stages[0].stage: unknown stage"),
        (SMALL.replace("limit: 24", "limit: many"), "recipe.yaml:10: validate[0].limit: expected int, got 'many'"),
        (SMALL.replace("mode: fp16", "mode: int3"), "recipe.yaml:7: stages[0].mode: 'int3' is not one of"),
        (SMALL.replace("dataset: sts12", "dataset: msmarco"), "'msmarco' is not a dataset for embedding recipes"),
        (SMALL.replace("name: small\n", ""), "recipe.yaml:1: missing required key 'name'"),
        (SMALL.replace("  testmodel: {shape: tiny}", "  revision: main"), "model needs exactly one of 'id'"),
        (SMALL.replace("mode: fp16", "mode: fp16\n    from: O2"), "stages[0].from: variant 'O2' is not made"),
        ("name: [unclosed", "not valid YAML"),
    ],
    ids=["key", "stage-key", "stage", "type", "literal", "dataset", "required", "model", "from", "yaml"],
)
def test_recipe_errors_are_one_line_with_file_line_and_key(run_cli, tmp_path, text, expected):
    path = write(tmp_path, text)
    code, out, err = run_cli("run", path, "--dry-run", "--output", tmp_path / "out")
    assert code == 2, out + err
    assert expected in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def _statuses(result: dict) -> dict[str, str]:
    return {s["step"]: s["status"] for s in result["steps"]}


def test_run_resumes_after_an_interruption_and_reruns_nothing_finished(tmp_path, monkeypatch):
    import qconv.convert.export
    import qconv.convert.quantize

    recipe = write(tmp_path, SMALL)
    options = RunOptions(offline=True, output=tmp_path / "out")

    real_quantize = qconv.convert.quantize.quantize

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(qconv.convert.quantize, "quantize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, options)
    art = tmp_path / "out" / "small"
    manifest = json.loads((art / "qconv.json").read_text())
    assert list(manifest["recipe"]["steps"]) == ["export"]
    assert not list(art.rglob(".*-*")), "an interrupted run left temp files"

    def must_not_run(*args, **kwargs):
        raise AssertionError("export finished before the interruption and must not run again")

    monkeypatch.setattr(qconv.convert.export, "export_embedding", must_not_run)
    monkeypatch.setattr(qconv.convert.quantize, "quantize", real_quantize)
    result = run_recipe(recipe, options)
    statuses = _statuses(result)
    assert statuses["export"] == "skipped"
    assert statuses["quantize:fp16"] == "ran" and statuses["validate:fp16:sts12"] == "ran"
    assert {r["variant"] for r in result["validation"]} == {"model", "fp16"}

    # Nothing changed: nothing runs. A changed validation option re-runs only the validations (and the card).
    assert set(_statuses(run_recipe(recipe, options)).values()) == {"skipped"}
    write(tmp_path, SMALL.replace("limit: 24", "limit: 16"))
    statuses = _statuses(run_recipe(recipe, options))
    ran = {step for step, status in statuses.items() if status == "ran"}
    assert ran == {"validate:model:sts12", "validate:fp16:sts12", "card"}


def test_a_damaged_variant_is_rebuilt(tmp_path):
    recipe = write(tmp_path, SMALL)
    options = RunOptions(offline=True, output=tmp_path / "out")
    run_recipe(recipe, options)
    variant = tmp_path / "out" / "small" / "onnx" / "model_fp16.onnx"
    variant.write_bytes(variant.read_bytes()[:100])
    plan_rows = run_recipe(recipe, RunOptions(offline=True, output=tmp_path / "out", dry_run=True))["plan"]
    status = {row["step"]: row["status"] for row in plan_rows}
    assert status["export"] == "up to date: skip" and status["quantize:fp16"] == "run"
    assert status["validate:fp16:sts12"].startswith("run (after")
    statuses = _statuses(run_recipe(recipe, options))
    assert statuses["quantize:fp16"] == "ran" and statuses["validate:model:sts12"] == "skipped"


def test_dry_run_prints_the_plan_and_writes_nothing(run_cli, tmp_path):
    recipe = write(tmp_path, SMALL)
    code, out, err = run_cli("run", recipe, "--dry-run", "--offline", "--output", tmp_path / "out")
    assert code == 0, err
    for text in ("export embedding", "quantize model -> fp16", "validate fp16 on sts12", "model card"):
        assert text in out
    assert not (tmp_path / "out").exists()


def test_failed_validation_exits_1_with_a_summary(run_cli, tmp_path):
    text = SMALL.replace("limit: 24", "limit: 24\n    thresholds: {min_cosine: 1.5}")
    recipe = write(tmp_path, text)
    code, out, err = run_cli("run", recipe, "--offline", "--output", tmp_path / "out")
    assert code == 1
    assert "validation failed for model on sts12, fp16 on sts12" in err
    summary = (tmp_path / "out" / "small" / "reports" / "recipe-summary.md").read_text()
    assert "| model | **FAIL**" in summary


def test_only_needs_the_earlier_stages(run_cli, tmp_path):
    recipe = write(tmp_path, SMALL)
    code, _, err = run_cli("run", recipe, "--only", "validate", "--offline", "--output", tmp_path / "out")
    assert code == 2 and "run the earlier stages first" in err
    code, _, err = run_cli("run", recipe, "--only", "valdate", "--output", tmp_path / "out")
    assert code == 2 and "unknown stage 'valdate' for --only" in err


def test_data_dir_supplies_dataset_files(run_cli, tmp_path):
    from importlib import resources

    data = tmp_path / "data"
    data.mkdir()
    sample = resources.files("qconv.validate.data") / "sts12_test_sample.jsonl"
    lines = sample.read_text(encoding="utf-8").splitlines()[:30]
    (data / "sts12.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    # The validate step passes every validation option on: here 50 bootstrap resamples and no instruction.
    recipe = write(tmp_path, SMALL.replace("limit: 24", "limit: 1000\n    bootstrap: 50\n    instruction: ''"))
    code, _, err = run_cli(
        "run", recipe, "--offline", "--data-dir", data, "--only", "export", "--output", tmp_path / "out"
    )
    assert code == 0, err
    code, _, err = run_cli("run", recipe, "--offline", "--data-dir", data, "--output", tmp_path / "out")
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "small" / "reports" / "validate-model-sts12.json").read_text())
    assert report["size"].startswith("30 pairs")
    assert report["bootstrap"]["n_resamples"] == 50 and set(report["delta_ci"]) == {"cosine_spearman", "cosine_pearson"}
    assert report["prompt"] == "" and report["instruction_rule"].startswith("none")
    code, _, err = run_cli("run", recipe, "--offline", "--data-dir", tmp_path, "--output", tmp_path / "out2")
    assert code == 2 and "has no file for dataset 'sts12'" in err


def test_refuses_an_artifact_made_otherwise(tmp_path, qwen3_artifact):
    import shutil

    shutil.copytree(qwen3_artifact, tmp_path / "out" / "small")
    with pytest.raises(QconvError, match="made by a plain 'qconv export'"):
        run_recipe(write(tmp_path, SMALL), RunOptions(offline=True, output=tmp_path / "out"))


def test_the_readme_recipe_example_is_valid(tmp_path):
    readme = (RECIPES.parent / "README.md").read_text(encoding="utf-8")
    example = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    recipe = load_recipe(write(tmp_path, example))
    assert [s.kind for s in plan(recipe, RunOptions())][:3] == ["export", "optimize", "quantize"]
    assert recipe.publish.repo_id == "my-org/Qwen3-Embedding-0.6B-onnx"
