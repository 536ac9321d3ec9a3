"""One place per axis: a quantization mode registered in one fixture is in the CLI, the recipe schema, the
runner's plan, the manifest, the validation gates and the card, with nothing else changed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from qconv.errors import QconvError


@pytest.fixture
def dummy_mode():
    """A mode with one option (``strength``, 1-3) and its own gate, for embeddings only: it writes the
    source graph unchanged under its own variant name."""
    from qconv.convert import quantize as quantize_module
    from qconv.pipeline.options import option

    @dataclass
    class DummyOptions:
        strength: int = field(default=1, metadata=option("how hard to do nothing.", range=(1, 3)))

    @quantize_module.register
    class Dummy(quantize_module.QuantizationMode):
        name = "dummy"
        precision = "dummy"
        converter = "nothing (a test mode)"
        description = "the source graph, renamed (tests)"
        options = DummyOptions
        gates = {"embedding": {"max_delta": 0.5}}
        providers = ("CPUExecutionProvider",)

        def variant(self, config):
            return f"dummy_s{config.strength}"

        def run(self, model, src, config, excluded, work):
            return model, {"strength": config.strength}

    yield Dummy
    quantize_module.unregister("dummy")


def test_a_registered_mode_is_in_the_cli(dummy_mode, run_cli, artifact_copy):
    code, out, _ = run_cli("quantize", "--help")
    assert code == 0
    text = " ".join(out.split())
    assert "int8 | q4 | q4f16 | q8 | fp16 | dummy" in text and "dummy: the source graph, renamed" in text
    assert "--strength INTEGER dummy: how hard to do nothing. [default: 1]" in text
    code, _, err = run_cli("quantize", artifact_copy, "--mode", "int8", "--strength", "2")
    assert code == 2 and "--strength applies to --mode dummy, not int8" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("quantize", artifact_copy, "--mode", "dummy", "--strength", "7")
    assert code == 2 and "--strength 7 is not supported for dummy (1 to 3)" in err
    code, _, err = run_cli("quantize", artifact_copy, "--mode", "dummy", "--preset", "avx2")
    assert code == 2 and "--preset applies to --mode int8, not dummy" in err


RECIPE = """\
name: dummy
task: embedding
model:
  testmodel: {shape: tiny}
stages:
  - stage: quantize
    mode: dummy
    strength: 2
validate:
  - dataset: sts12
    limit: 8
"""


def test_a_registered_mode_is_in_the_recipe_schema_and_the_plan(dummy_mode, run_cli, tmp_path):
    from qconv.pipeline.recipe import load_recipe, recipe_to_dict

    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE, encoding="utf-8")
    stage = load_recipe(path).stages[0]
    assert isinstance(stage, dummy_mode.config) and stage.strength == 2
    stored = recipe_to_dict(load_recipe(path))["stages"][0]
    assert {k: stored[k] for k in ("stage", "mode", "from", "strength")} == {
        "stage": "quantize",
        "mode": "dummy",
        "from": "model",
        "strength": 2,
    }
    code, out, err = run_cli("run", path, "--dry-run", "--offline", "--output", tmp_path / "out")
    assert code == 0, err
    assert "quantize model -> dummy_s2 (dummy)" in out and "validate dummy_s2 on sts12" in out
    for text, needle in (
        (RECIPE.replace("strength: 2", "strength: 7"), "recipe.yaml:8: stages[0].strength: must be between 1 and 3"),
        (RECIPE.replace("strength: 2", "strengh: 2"), "recipe.yaml:8: unknown key 'strengh'"),
        (RECIPE.replace("strength: 2", "block_size: 64"), "recipe.yaml:8: stages[0].block_size: applies to mode"),
        (RECIPE.replace("mode: dummy", "mode: int8"), "recipe.yaml:8: stages[0].strength: applies to mode dummy"),
    ):
        path.write_text(text, encoding="utf-8")
        code, _, err = run_cli("run", path, "--dry-run", "--output", tmp_path / "out")
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_a_registered_mode_is_in_the_manifest_the_gates_and_the_card(dummy_mode, artifact_copy):
    from qconv.artifact import Artifact
    from qconv.convert.quantize import QuantizeOptions, quantize
    from qconv.gates import thresholds_for
    from qconv.hub.card import TARGET_PROVIDERS
    from qconv.hub.reproduce import reproduce_commands

    variant, entry = quantize(artifact_copy, "dummy", options=QuantizeOptions(strength=3))
    assert variant == "dummy_s3" and entry["precision"] == "dummy" and entry["details"] == {"strength": 3}
    manifest = json.loads((artifact_copy / "qconv.json").read_text())
    assert manifest["variants"]["dummy_s3"]["options"]["strength"] == 3
    assert manifest["variants"]["dummy_s3"]["mode"] == "dummy"
    assert f"qconv quantize artifacts/{artifact_copy.name} --mode dummy --strength 3" in reproduce_commands(
        Artifact(artifact_copy)
    )
    assert TARGET_PROVIDERS["dummy"] == ("CPUExecutionProvider",)
    assert thresholds_for("embedding", "dummy") == {"max_delta": 0.5}
    assert thresholds_for("embedding", "dummy", {"max_delta": 0.1}) == {"max_delta": 0.1}
    # A mode without gates for a task cannot be validated on it: never fp32's gates silently.
    with pytest.raises(QconvError, match="no default validation gates for dummy reranker variants"):
        thresholds_for("reranker", "dummy")


def test_every_shipped_mode_declares_gates_for_every_task():
    from qconv.convert.quantize import MODES
    from qconv.gates import thresholds_for
    from qconv.tasks import TASKS

    for mode in MODES.values():
        for task in TASKS:
            assert thresholds_for(task, mode.precision), (mode.name, task)


def test_the_reproduce_command_of_every_mode_parses_back_to_its_config(run_cli):
    """The card's command and the CLI come from one mapping: parsing the printed flags gives the config back."""
    import shlex

    from qconv.cli import quantize as quantize_cmd
    from qconv.convert.quantize import configure
    from qconv.pipeline.options import to_argv
    from qconv.pipeline.quantize_cli import config_from_cli

    cases = {
        "int8": dict(per_channel=False, preset="avx2", smooth="0.7", exclude=["a.*", "b c"], keep="3"),
        "q4": dict(source="O2", block_size=64, accuracy_level=4, quantize_embeddings=True),
        "q8": dict(accuracy_level=1, calibration="texts.txt"),
        "fp16": dict(quantize_embeddings=True, exclude=["model.layers.0.*"]),
    }
    for mode, given in cases.items():
        config = configure(mode, **given)
        argv = ["--mode", mode, *shlex.split(shlex.join(to_argv(config, skip=("mode",))))]
        assert config_from_cli(quantize_cmd.make_context("quantize", argv)) == config, (mode, argv)


def test_gates_have_one_name(run_cli):
    from qconv.gates import GATES
    from qconv.pipeline.recipe import Thresholds

    code, out, _ = run_cli("validate", "--help")
    assert code == 0
    for gate in GATES.values():
        assert gate.flag == "--" + gate.name.replace("_", "-") and gate.flag in out
        assert gate.name in Thresholds.__dataclass_fields__


def test_validate_options_and_reproduce_line_come_from_the_declaration(run_cli):
    import shlex

    from qconv.cli import cli
    from qconv.gates import GATES
    from qconv.pipeline.configs import validate_request_class
    from qconv.pipeline.options import to_argv
    from qconv.pipeline.validate_cli import request_from_cli

    code, out, _ = run_cli("validate", "--help")
    flat = " ".join(out.split())
    assert code == 0 and GATES["max_delta"].help in flat and "Also print the JSON report on stdout." in flat
    assert "embedding: Matryoshka: truncate embeddings to D dimensions and renormalise." in flat  # says whose
    assert "reranker: Candidates per query, positives first. [default: 30]" in flat
    assert "embedding: Texts per batch; reranker: Pairs per batch. [default: 32 for embedding; 8 for reranker]" in flat
    config = validate_request_class()(
        dataset=["sts12", "bq"],
        variant="int8",
        offline=True,
        split="test",
        limit=40,
        dim=16,
        instruction="",
        bootstrap=0,
        providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
        max_delta=0.05,
        batch_tokens=1024,
    )
    line = shlex.join(to_argv(config))
    assert line == (
        "--dataset sts12 --dataset bq --variant int8 --offline --split test --limit 40 --dim 16 --instruction '' "
        "--bootstrap 0 --providers CUDAExecutionProvider,CPUExecutionProvider --max-delta 0.05 --batch-tokens 1024"
    )
    command = cli.commands["validate"]
    assert request_from_cli(command.make_context("validate", shlex.split(line)))[0] == config
    # A comma-separated list takes 'a,b' and repeated flags alike.
    argv = ["--dataset", "sts12", "--providers", "A,B", "--providers", "C"]
    assert request_from_cli(command.make_context("validate", argv))[0].providers == ["A", "B", "C"]
    assert to_argv(validate_request_class()(dataset=["msmarco"])) == ["--dataset", "msmarco"]  # defaults: nothing


# -- a dummy task ---------------------------------------------------------------------------------------


@pytest.fixture
def dummy_task():
    """A task registered in one place: the embedding task under another name, with its own export option."""
    from qconv.tasks import TASKS, register_task
    from qconv.tasks.embedding import EmbeddingExport, EmbeddingTask

    @dataclass
    class DummyExport(EmbeddingExport):
        flavour: str = "plain"

    @register_task
    class DummyTask(EmbeddingTask):
        name = "dummy"
        export_config = DummyExport

    yield DummyTask
    TASKS.pop("dummy", None)


TASK_RECIPE = """\
name: dummytask
task: dummy
model:
  testmodel: {shape: tiny}
export:
  flavour: salty
stages:
  - stage: quantize
    mode: fp16
validate:
  - dataset: sts12
    limit: 8
"""


def test_a_registered_task_is_in_the_recipe_schema_and_the_plan(dummy_task, run_cli, tmp_path):
    from qconv.pipeline.recipe import load_recipe, recipe_to_dict
    from qconv.pipeline.run import RunOptions, run_recipe

    path = tmp_path / "recipe.yaml"
    path.write_text(TASK_RECIPE, encoding="utf-8")
    recipe = load_recipe(path)
    assert isinstance(recipe.export, dummy_task.export_config) and recipe.export.flavour == "salty"
    assert recipe_to_dict(recipe)["export"]["flavour"] == "salty"
    code, _, err = run_cli("run", path, "--dry-run", "--offline", "--output", tmp_path / "out")
    assert code == 0, err
    result = run_recipe(path, RunOptions(dry_run=True, offline=True, output=tmp_path / "out"))
    assert [row["action"] for row in result["plan"]] == [
        "export dummy from built-in random Qwen3 (tiny)",
        "quantize model -> fp16 (fp16)",
        "validate model on sts12, first 8",
        "validate fp16 on sts12, first 8",
        "model card (README.md)",
    ]
    code, out, _ = run_cli("run", "--help")
    assert code == 0 and "export|optimize|quantize|validate|fallback|bench|card|publish" in "".join(out.split())
    for recipe_text, needle in (
        (TASK_RECIPE.replace("flavour: salty", "flavor: salty"), "recipe.yaml:6: unknown key 'flavor' in export"),
        (TASK_RECIPE.replace("task: dummy", "task: dumy"), "recipe.yaml:2: task: 'dumy' is not one of"),
        (
            TASK_RECIPE.replace("dataset: sts12", "dataset: msmarco"),
            "recipe.yaml:11: validate[0].dataset: 'msmarco' is not a dataset for dummy recipes (sts12, bq)",
        ),
    ):
        path.write_text(recipe_text, encoding="utf-8")
        code, _, err = run_cli("run", path, "--dry-run", "--output", tmp_path / "out")
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
