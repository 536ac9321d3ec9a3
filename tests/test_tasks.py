"""The task registry (qconv/tasks) is the one place that knows embedding from reranker.

- No generic module compares a task name (or the dataset kind that stands for it): a source grep.
- A dummy task registered in the test alone is picked up by the generic code: the manifest check, the
  lookups, validation dispatch, the variant parity check, calibration batches, the bench plan, test models,
  the demo list, its ``qconv export dummy`` command and the model card (its sections and the Reproduce
  command from its stored export options). Fake artifact directories only: nothing is exported.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from qconv.errors import QconvError
from qconv.pipeline.options import option
from qconv.tasks import TASKS, Task, get_task, register_task, task_for_dataset_kind, task_of

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("qconv", "convert", "validate")


def _branch_pattern() -> re.Pattern:
    """A comparison with a task name or its dataset kind as a literal: ``== "embedding"``, ``"rerank" !=``,
    ``in ("embedding", ...)``, ``case "reranker":``."""
    words = sorted({*TASKS, *(task.dataset_kind for task in TASKS.values())})
    literal = r"""(?:"|')(?:""" + "|".join(map(re.escape, words)) + r""")(?:"|')"""
    return re.compile(
        rf"[=!]=\s*{literal}"  # x == "embedding"
        rf"|{literal}\s*[=!]="  # "embedding" == x
        rf"|\bin\s*[(\[{{][^)\]}}]*{literal}"  # x in ("embedding", "reranker")
        rf"|\bcase\s+{literal}"  # match task: case "embedding":
    )


def _sources() -> list[Path]:
    files = [p for top in SCANNED for p in (ROOT / top).rglob("*.py")]
    files += sorted((ROOT / "recipes").glob("*.py"))
    tasks_dir = ROOT / "qconv" / "tasks"
    return sorted(p for p in files if tasks_dir not in p.parents)


def test_the_branch_pattern_finds_what_it_should():
    pattern = _branch_pattern()
    for line in (
        'if art.task == "embedding":',
        "x = 'reranker' != task",
        'if kind not in ("embedding", "reranker"):',
        'if spec.kind == "rerank":',
        '    case "reranker":',
        'reranker = art.task == "reranker"',
    ):
        assert pattern.search(line), line
    for line in (
        'settings = art.manifest["embedding"]',
        'open_artifact(artifact, "reranker")',
        'if self.kind == "optimize":',
        "if art.task != task:",
        '"task": "embedding",',
    ):
        assert not pattern.search(line), line


def test_no_task_branches_outside_the_task_modules():
    pattern = _branch_pattern()
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _sources()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, "task-name branches outside qconv/tasks (ask the task instead):\n" + "\n".join(found)


# -- a dummy task ---------------------------------------------------------------------------------------


@dataclass
class DummyExport:
    flavour: str = field(default="plain", metadata=option("How the dummy tastes.", choices=("plain", "salty")))


class DummyTask(Task):
    """Scores each text with one number; its one distinct behaviour is the sum of the token ids."""

    name = "dummy"
    dataset_kind = "dummy-texts"
    output = "dummy_score"
    export_config = DummyExport
    manifest_keys = ("flavour", "padding_side")
    bench_unit = "widgets/s"
    torch_model = "transformers.AutoModel"
    torch_call = "last_token_hidden"
    testmodel_class = "Qwen3Model"
    demo_recipe = "demo-dummy.yaml"

    default_model = None  # --model is required
    export_help = "Export a dummy scorer."

    def __init__(self):
        self.calls: list = []

    def export(self, source, output, config, *, revision=None, overwrite=False):
        self.calls.append(("export", source, output, config, {"revision": revision, "overwrite": overwrite}))

    def card_usage(self, data, variant: str) -> str:
        return f"## Usage\n\nScore widgets with `{variant}`."

    def card_prompt(self, data) -> str:
        return f"## Flavour\n\n{data.manifest['dummy']['flavour']}"

    def validate(self, art, dataset: str, **options) -> dict:
        self.calls.append(("validate", art, dataset, options))
        return {"passed": True, "dataset": dataset}

    def parity_runner(self, art, variant: str):
        scale = 1.0 if variant == "model" else 1.5
        return lambda: np.array([1.0, 2.0, 3.0]) * scale

    def parity_figures(self, new, old) -> dict:
        return {"widgets": len(new), "max_ratio": float((new / old).max())}

    def calibration_sequences(self, art, pairs):
        return [[sum(map(ord, q + d)) % 97 + 1] * (1 + len(q)) for q, d in pairs], 0

    def pad_id(self, art) -> int:
        return 0

    def bench_extra_runs(self, base: dict, seq_lens: list[int], documents: int):
        spec = {**base, "torch_call": "last_logits", "shapes": [(documents, s) for s in seq_lens]}
        return [("torch-dummy-loop", spec, {"kind": "torch", "precision": "fp32", "speedup_key": "vs_loop"})]

    def create_testmodel(self, out: Path, *, shape, seed: int, outliers: bool) -> Path:
        out.mkdir(parents=True, exist_ok=True)
        (out / "dummy.txt").write_text(f"layers {shape.num_hidden_layers} seed {seed}", encoding="utf-8")
        return out


@pytest.fixture
def dummy():
    register_task(DummyTask)
    try:
        yield TASKS["dummy"]
    finally:
        TASKS.pop("dummy", None)


@pytest.fixture
def dummy_dataset(monkeypatch):
    from qconv.validate.datasets import DATASETS, DatasetSpec

    spec = DatasetSpec(
        name="dummyset",
        hub_path="none/dummyset",
        revision=None,
        split="test",
        kind="dummy-texts",
        columns=("text",),
        main_metric="widgets",
        bundled_sample="dummyset.jsonl",
        description="texts for the dummy task",
        language="en",
    )
    monkeypatch.setitem(DATASETS, spec.name, spec)
    return spec


def _fake_artifact(root: Path, task: str, section: dict, source_dir: Path | None = None) -> Path:
    """A manifest and an (empty) variant file: enough for everything that does not run a graph."""
    (root / "onnx").mkdir(parents=True)
    (root / "onnx" / "model.onnx").write_bytes(b"not a graph")
    source = {"model": "dummy/model", "kind": "local", "content_sha256": "0" * 64, "format": "base"}
    if source_dir is not None:
        source["path"] = str(source_dir)
    manifest = {"task": task, "source": source, "variants": {"model": {"file": "onnx/model.onnx"}}, task: section}
    (root / "qconv.json").write_text(json.dumps(manifest), encoding="utf-8")
    return root


def test_the_registry_and_the_artifact_check_know_the_dummy_task(dummy, tmp_path):
    from qconv.artifact import Artifact

    assert get_task("dummy") is dummy and task_for_dataset_kind("dummy-texts") is dummy
    art = Artifact(_fake_artifact(tmp_path / "ok", "dummy", {"flavour": "plain", "padding_side": "left"}))
    assert task_of(art) is dummy
    with pytest.raises(QconvError, match="'dummy' lacks padding_side"):  # the task's own required keys
        Artifact(_fake_artifact(tmp_path / "damaged", "dummy", {"flavour": "plain"}))


def test_unregistered_tasks_are_refused(tmp_path):
    from qconv.artifact import Artifact

    path = _fake_artifact(tmp_path / "a", "dummy", {"flavour": "plain", "padding_side": "left"})
    with pytest.raises(QconvError, match=r"unknown task 'dummy' \(embedding or reranker\)"):
        Artifact(path)
    with pytest.raises(QconvError, match="unknown task 'dummy'"):
        get_task("dummy")


def test_validation_dispatches_to_the_dummy_task(dummy, dummy_dataset, tmp_path):
    from qconv.artifact import Artifact
    from qconv.validate.runner import check_validation_request, validate_dataset

    art = Artifact(_fake_artifact(tmp_path / "a", "dummy", {"flavour": "plain", "padding_side": "left"}))
    assert check_validation_request(art, "dummyset", limit=3) is dummy_dataset
    with pytest.raises(QconvError, match="dataset 'sts12' needs an embedding artifact; a is a dummy artifact"):
        check_validation_request(art, "sts12")
    assert validate_dataset(art, "dummyset", limit=3) == {"passed": True, "dataset": "dummyset"}
    assert dummy.calls == [("validate", art, "dummyset", {"raise_on_fail": False, "limit": 3})]


@dataclass
class DummyValidate:
    widgets: int = field(default=3, metadata={"help": "Widgets per text.", "range": (1, None)})


def test_a_task_validate_option_is_a_qconv_validate_flag(dummy_dataset, tmp_path, run_cli):
    """A task's validate_options field becomes a ``qconv validate`` flag with no edit of the CLI: its help
    names the task, its value reaches the task's validation, another task's dataset refuses it."""
    code, out, _ = run_cli("validate", "--help")
    assert code == 0 and "--widgets" not in out

    class WidgetTask(DummyTask):
        validate_options = DummyValidate

    register_task(WidgetTask)
    try:
        code, out, _ = run_cli("validate", "--help")
        assert code == 0 and "--widgets INTEGER" in out
        assert "dummy: Widgets per text. [default: 3]" in " ".join(out.split())
        path = _fake_artifact(tmp_path / "a", "dummy", {"flavour": "plain", "padding_side": "left"})
        code, _, err = run_cli("validate", path, "--dataset", "dummyset", "--widgets", "5", "--limit", "2")
        assert code == 0, err
        ((_, _, dataset, options),) = TASKS["dummy"].calls
        assert dataset == "dummyset" and options["widgets"] == 5 and options["limit"] == 2
        code, _, err = run_cli("validate", path, "--dataset", "dummyset")  # not given: the task's default
        assert code == 0, err
        assert TASKS["dummy"].calls[-1][3]["widgets"] == 3
        code, _, err = run_cli("validate", path, "--dataset", "dummyset", "--widgets", "0")
        assert code == 2 and "--widgets 0 is not supported for the dummy task (at least 1)" in err
        code, _, err = run_cli("validate", path, "--dataset", "sts12", "--widgets", "5")
        assert code == 2 and "--widgets does not apply to dataset 'sts12' (embedding validation)" in err
        assert len(TASKS["dummy"].calls) == 2
    finally:
        TASKS.pop("dummy", None)
    code, out, _ = run_cli("validate", "--help")
    assert code == 0 and "--widgets" not in out


def test_check_variant_and_calibration_ask_the_dummy_task(dummy, tmp_path):
    from qconv.artifact import Artifact
    from qconv.convert.calibration import calibration_batches
    from qconv.convert.quantize import check_variant

    art = Artifact(_fake_artifact(tmp_path / "a", "dummy", {"flavour": "plain", "padding_side": "left"}))
    result = check_variant(art, "qint8", "model")
    assert result["against"] == "model" and result["widgets"] == 3 and result["max_ratio"] == pytest.approx(1.5)
    assert result["finite"] and result["latency_ms"] >= 0 and result["source_latency_ms"] >= 0

    (batch,) = calibration_batches(art, [("ab", "c"), ("abcd", "")], batch_size=8)
    # The dummy's sequences, padded on the manifest's side (left) with the dummy's pad id.
    assert batch["attention_mask"].tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert batch["input_ids"][0, :2].tolist() == [0, 0]


def test_the_bench_plan_comes_from_the_dummy_task(dummy, tmp_path):
    from qconv.artifact import Artifact
    from qconv.bench.runner import plan_runs

    source = tmp_path / "source-model"
    source.mkdir()
    art = Artifact(_fake_artifact(tmp_path / "a", "dummy", {"flavour": "plain", "padding_side": "left"}, source))
    common = {"threads": 1, "vocab": 100, "shapes": [(1, 4)], "warmup": 0, "repeats": 1}
    runs, notes = plan_runs(art, ["model"], common, ["CPUExecutionProvider"], "torch", [4, 8], 3)
    by_label = {label: (spec, meta) for label, spec, meta in runs}
    assert by_label["model"][0]["output"] == "dummy_score"
    torch_spec = by_label["torch-fp32"][0]
    assert (torch_spec["torch_model"], torch_spec["torch_call"]) == ("transformers.AutoModel", "last_token_hidden")
    loop_spec, loop_meta = by_label["torch-dummy-loop"]
    assert loop_spec["shapes"] == [(3, 4), (3, 8)] and loop_meta["speedup_key"] == "vs_loop"

    from qconv.bench.worker import CALLS

    assert {torch_spec["torch_call"], loop_spec["torch_call"]} <= set(CALLS)


def test_test_models_and_demos_come_from_the_registry(dummy, tmp_path):
    from qconv.testing.demo import demo_recipes
    from qconv.testing.testmodels import create_test_model

    out = create_test_model(tmp_path / "m", "tiny", "dummy", layers=1, seed=3)
    assert (out / "dummy.txt").read_text() == "layers 1 seed 3"
    note = json.loads((out / "qconv_testmodel.json").read_text())
    assert note["kind"] == "dummy" and note["parameters"] > 0  # counted as the task's Qwen3Model
    with pytest.raises(QconvError, match=r"unknown kind 'vision' \(choose embedding, reranker, dummy\)"):
        create_test_model(tmp_path / "v", "tiny", "vision")
    assert demo_recipes()["dummy"] == "demo-dummy.yaml"


def test_the_dummy_task_has_an_export_command(dummy, run_cli, tmp_path):
    code, out, _ = run_cli("export", "--help")
    assert code == 0 and "dummy" in out and "Export a dummy scorer." in out
    code, out, _ = run_cli("export", "dummy", "--help")
    # The flag, its help and default come from DummyExport's declaration; --model has no default: required.
    assert code == 0 and "--flavour TEXT" in out and "How the dummy tastes. [default: plain]" in out
    code, _, err = run_cli("export", "dummy", "--flavour", "salty")
    assert code == 2 and "Missing option '--model'" in err
    code, _, err = run_cli("export", "dummy", "--model", "m", "--flavour", "bitter")
    expected = "error: --flavour bitter is not supported for qconv export dummy (plain or salty)"
    assert code == 2 and err.strip() == expected
    assert dummy.calls == []  # checked before the task is asked to do anything
    out_dir = tmp_path / "out"
    code, _, _ = run_cli(
        "export", "dummy", "--model", "m", "--flavour", "salty", "--output", out_dir, "--revision", "r"
    )
    assert code == 0
    assert dummy.calls == [("export", "m", str(out_dir), DummyExport("salty"), {"revision": "r", "overwrite": False})]
    run_cli("export", "dummy", "--model", "m", "--overwrite")
    assert dummy.calls[-1] == ("export", "m", None, DummyExport(), {"revision": None, "overwrite": True})


def test_the_card_of_a_dummy_artifact_comes_from_its_task(dummy, tmp_path):
    from qconv.artifact import Artifact
    from qconv.hub.card import write_model_card

    path = _fake_artifact(tmp_path / "a", "dummy", {"flavour": "salty", "padding_side": "left"})
    manifest = json.loads((path / "qconv.json").read_text())
    manifest["stages"] = [{"stage": "export", "variant": "model", "options": {"flavour": "salty", "revision": None}}]
    (path / "qconv.json").write_text(json.dumps(manifest), encoding="utf-8")
    text = write_model_card(Artifact(path)).read_text(encoding="utf-8")
    assert "## Usage\n\nScore widgets with `model`." in text and "## Flavour\n\nsalty" in text
    # The Reproduce command is the stored export config, printed by the mapping its CLI flags come from.
    assert "qconv export dummy --model dummy/model --flavour salty --output artifacts/a" in text
