"""``qconv optimize``, ``fallback`` and ``publish``: their configuration options are generated from the stage
configs (``qconv.pipeline.configs``), and the card's Reproduce lines are printed from the same declarations."""

import dataclasses
import shlex
from dataclasses import dataclass, field

import pytest

from qconv.pipeline import configs
from qconv.pipeline.options import option, public_fields, to_argv

COMMANDS = {"optimize": "OptimizeStage", "fallback": "FallbackCommand", "publish": "PublishTarget"}


def _flat(text: str) -> str:
    return " ".join(text.split())


def _one_line(code, err, needle):
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err


@pytest.mark.parametrize("command", COMMANDS)
def test_help_comes_from_the_config_declaration(command, run_cli):
    from qconv.pipeline.options import flag_of

    code, out, _ = run_cli(command, "--help")
    assert code == 0
    for f in public_fields(getattr(configs, COMMANDS[command])):
        assert flag_of(f) in out and _flat(f.metadata["help"]) in _flat(out), (command, f.name)


def test_existing_spellings_are_kept(run_cli):
    code, out, _ = run_cli("optimize", "--help")
    assert code == 0 and "--from" in out and "--overwrite" in out and "[required]" in out
    code, out, _ = run_cli("fallback", "--help")
    flags = ("--variant", "--providers", "--runtime", "--all-variants", "--json")
    assert code == 0 and all(flag in out for flag in flags)
    code, out, _ = run_cli("publish", "--help")
    flags = ("--repo-id", "--to", "--revision", "--private", "--dry-run", "--force", "--archive", "--overwrite")
    assert code == 0 and all(flag in out for flag in flags)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--level", "O9"], "unknown optimization level 'O9' (choose O1, O2, O3, O4)"),
        (["--level", "O2", "--target", "tpu"], "unknown --target 'tpu' (choose cpu, cuda)"),
        ([], "Missing option '--level'"),
    ],
)
def test_bad_optimize_values_are_one_line_before_the_artifact_is_opened(args, needle, run_cli, tmp_path):
    code, _, err = run_cli("optimize", tmp_path / "missing", *args)  # no artifact there: the check comes first
    _one_line(code, err, needle)


def test_values_parse_into_the_stage_configs():
    from qconv.cli import fallback, optimize, publish_cmd

    ctx = optimize.make_context("optimize", ["ART", "--level", "o4", "--target", "cuda", "--from", "x"])
    assert optimize.config_from(ctx, "optimize") == configs.OptimizeStage(level="O4", target="cuda", source="x")
    ctx = optimize.make_context("optimize", ["--level", "O2"])
    assert optimize.config_from(ctx, "optimize") == configs.OptimizeStage(level="O2")
    # A list option: repeated, comma-separated, or both.
    cuda, cpu = "CUDAExecutionProvider", "CPUExecutionProvider"
    for argv, providers in (
        (["--providers", f"{cuda},{cpu}"], [cuda, cpu]),
        (["--providers", cuda, "--providers", cpu], [cuda, cpu]),
        (["--providers", f"{cpu}, ", "--providers", cuda], [cpu, cuda]),
        ([], [cuda, cpu]),
    ):
        config = fallback.config_from(fallback.make_context("fallback", argv), "fallback")
        assert config.providers == providers, argv
    config = fallback.config_from(fallback.make_context("fallback", ["--variant", "a", "--variant", "b"]), "fallback")
    assert config == configs.FallbackCommand(variants=["a", "b"])
    ctx = publish_cmd.make_context("publish", ["--repo-id", "org/x", "--revision", "dev", "--private"])
    assert publish_cmd.config_from(ctx, "publish") == configs.PublishTarget("org/x", revision="dev", private=True)


def test_printed_commands_parse_back_to_their_config():
    """The Reproduce lines and the CLI come from one mapping: the printed flags give the config back."""
    from qconv.cli import fallback, optimize

    for config in (
        configs.OptimizeStage(level="O2"),
        configs.OptimizeStage(level="O4", target="cuda", source="x"),
    ):
        argv = shlex.split(shlex.join(to_argv(config)))
        assert optimize.config_from(optimize.make_context("optimize", argv), "optimize") == config
    for config in (
        configs.FallbackCommand(),
        configs.FallbackCommand(variants=["model", "O2"], providers=["CPUExecutionProvider"], runtime=True),
    ):
        argv = shlex.split(shlex.join(to_argv(config)))
        assert fallback.config_from(fallback.make_context("fallback", argv), "fallback") == config


def test_reproduce_lines_of_records_made_before_configs_were_stored(artifact_copy):
    from qconv.artifact import Artifact
    from qconv.hub.reproduce import reproduce_commands

    art = Artifact(artifact_copy)
    art.variants["O2"] = {"file": "onnx/model_O2.onnx", "stage": "optimize", "level": "O2", "target": "cpu"}
    art.variants["x_O3"] = {"file": "onnx/model_x_O3.onnx", "stage": "optimize", "level": "O3", "from": "x"}
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    art.add_stage({"stage": "fallback", "variants": ["model"], "providers": both, "runtime": False})
    art.add_stage({"stage": "fallback", "variants": ["model", "O2"], "providers": both[1:], "runtime": True})
    out = f"artifacts/{art.name}"
    lines = reproduce_commands(art)
    assert f"qconv optimize {out} --level O2" in lines
    assert f"qconv optimize {out} --level O3 --from x" in lines
    assert f"qconv fallback {out} --variant model --providers CUDAExecutionProvider,CPUExecutionProvider" in lines
    assert f"qconv fallback {out} --variant model --variant O2 --providers CPUExecutionProvider --runtime" in lines


def test_a_field_added_to_a_config_is_a_flag_without_editing_the_cli(monkeypatch, run_cli, tmp_path):
    @dataclass
    class Optimize(configs.OptimizeStage):
        rounds: int = field(default=1, metadata=option("How many times to run the passes.", range=(1, 3)))

    @dataclass
    class Fallback(configs.FallbackCommand):
        budget: float | None = field(default=None, metadata=option("Seconds per provider."))

    monkeypatch.setattr(configs, "OptimizeStage", Optimize)
    monkeypatch.setattr(configs, "FallbackCommand", Fallback)
    code, out, _ = run_cli("optimize", "--help")
    assert code == 0 and "--rounds" in out and "How many times to run the passes. [default: 1]" in _flat(out)
    code, _, err = run_cli("optimize", tmp_path / "missing", "--level", "O2", "--rounds", "5")
    _one_line(code, err, "--rounds 5 is not supported for optimize (1 to 3)")
    from qconv.cli import fallback, optimize

    ctx = optimize.make_context("optimize", ["--level", "O2", "--rounds", "2"])
    assert optimize.config_from(ctx, "optimize") == Optimize(level="O2", rounds=2)
    assert to_argv(Optimize(level="O2", rounds=2)) == ["--level", "O2", "--rounds", "2"]
    config = fallback.config_from(fallback.make_context("fallback", ["--budget", "1.5"]), "fallback")
    assert config == Fallback(budget=1.5) and dataclasses.is_dataclass(config)
