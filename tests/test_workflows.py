"""The GitHub workflows shipped for users of this repository: they parse, and every command, recipe and
path they name exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import yaml

from qconv.cli import cli

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def _load(path: Path) -> dict:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key 'on' as true
    return data


def _runs(workflow: dict):
    for job_name, job in workflow["jobs"].items():
        for step in job["steps"]:
            if "run" in step:
                yield job_name, job, step["run"]


def _qconv_commands(script: str) -> list[list[str]]:
    script = script.replace("\\\n", " ")
    commands = []
    for line in re.split(r"\n|&&|;", script):
        if "bin/qconv " in line:
            words = shlex.split(line.split("bin/qconv ", 1)[1].split(">>")[0])
            commands.append(words)
    return commands


def _expand_matrix(text: str, job: dict) -> list[str]:
    values = job.get("strategy", {}).get("matrix", {}).get("recipe", [None])
    return [text.replace("${{ matrix.recipe }}", v) if v else text for v in values]


def test_there_are_test_and_publish_workflows():
    assert {p.stem for p in WORKFLOWS} == {"tests", "publish"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=[p.stem for p in WORKFLOWS])
def test_workflow_commands_and_recipes_exist(path):
    workflow = _load(path)
    assert workflow["on"] and workflow["jobs"]
    seen = 0
    for _, job, script in _runs(workflow):
        assert job["runs-on"] and job["timeout-minutes"]
        for text in _expand_matrix(script, job):
            for words in _qconv_commands(text):
                seen += 1
                command = cli.commands.get(words[0])
                assert command is not None, f"{path.name}: 'qconv {words[0]}' is not a command"
                # get_params: the options generated from the registries' declarations are there too
                params = command.get_params(click.Context(command))
                known = {
                    opt for param in params for opt in getattr(param, "opts", []) + getattr(param, "secondary_opts", [])
                }
                for word in words[1:]:
                    if word.startswith("--"):
                        assert word in known, f"{path.name}: qconv {words[0]} has no option {word}"
                    elif word.endswith(".yaml"):
                        assert (ROOT / word).is_file(), f"{path.name}: no recipe {word}"
    assert seen, f"{path.name} runs no qconv command"


def test_tests_workflow_runs_the_readme_test_command_fast_then_slow():
    workflow = _load(ROOT / ".github" / "workflows" / "tests.yml")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    fast = " ".join(script for job, _, script in _runs(workflow) if job == "fast")
    assert ".venv/bin/python -m pytest" in fast and ".venv/bin/python -m pytest" in readme
    assert workflow["jobs"]["slow"]["needs"] == "fast"
    assert "--slow" in " ".join(script for job, _, script in _runs(workflow) if job == "slow")


def test_publish_workflow_builds_every_matrix_recipe_and_keeps_the_token_secret():
    workflow = _load(ROOT / ".github" / "workflows" / "publish.yml")
    assert {"workflow_dispatch", "push"} <= set(workflow["on"])
    job = workflow["jobs"]["recipe"]
    for recipe in job["strategy"]["matrix"]["recipe"]:
        assert (ROOT / "recipes" / f"{recipe}.yaml").is_file()
    steps = {step.get("name"): step for step in job["steps"]}
    assert steps["Upload artifact and reports"]["uses"].startswith("actions/upload-artifact@")
    assert "!artifacts/${{ matrix.recipe }}/.cache" in steps["Upload artifact and reports"]["with"]["path"]
    assert "$GITHUB_STEP_SUMMARY" in steps["Validation summary"]["run"]
    publish = steps["Publish to the Hub"]
    assert publish["env"]["HF_TOKEN"] == "${{ secrets.HF_TOKEN }}"
    assert "HF_TOKEN" not in publish["run"]
