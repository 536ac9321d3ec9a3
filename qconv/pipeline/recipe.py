"""Recipes: the whole pipeline as pure data (YAML), checked against a typed schema.

Every field is declared once, with its type and default, in the dataclasses below (Olive-style); the loader
walks the YAML node tree so that every error names the file, the line and the key. Nothing here runs
anything: ``qconv.pipeline.run`` replays a loaded recipe.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from qconv.errors import QconvError
from qconv.pipeline.configs import (
    BenchStep,
    FallbackStep,
    OptimizeStage,
    PublishTarget,
    Thresholds,
    ValidateStep,
    at_least,
)
from qconv.tasks import TASKS, get_task

# The stage configs are declared in qconv.pipeline.configs; these names are the schema's public face.
__all__ = [
    "BenchStep",
    "FallbackStep",
    "OptimizeStage",
    "PublishTarget",
    "Recipe",
    "Thresholds",
    "ValidateStep",
    "load_recipe",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _at_least(low: int, high: int | None = None):
    return at_least(low, high)


def _one_of(*values):
    return {"choices": values}


@dataclass
class TestModel:
    """A built-in random-weight Qwen3 with the real vocabulary: offline demos and honest speed figures."""

    shape: Literal["tiny", "qwen3-0.6b", "qwen3-4b", "qwen3-8b"] = "tiny"
    layers: int | None = field(default=None, metadata=_at_least(1))
    seed: int = field(default=0, metadata=_at_least(0))


@dataclass
class ModelSource:
    id: str | None = None  # Hub id or local directory
    revision: str | None = None  # pin it: resumability and reproducibility key on it
    testmodel: TestModel | None = None


def variant_stage_configs() -> dict[str, type | None]:
    """The kinds a ``stages:`` entry may name, with their configs (qconv.pipeline.stages registers them); the
    quantize stage's config is None here: its mode's (``quantize_config``), chosen by 'mode'."""
    from qconv.pipeline.stages import STAGES

    return {kind: cls.config for kind, cls in STAGES.items() if cls.section == "stages"}


def quantize_modes() -> dict:
    from qconv.convert.quantize import MODES

    return MODES


def stage_kind(obj) -> str | None:
    """The recipe 'stage' of a ``stages:`` entry's config (None: not one)."""
    from qconv.pipeline.stages import STAGES

    return next((k for k, cls in STAGES.items() if cls.section == "stages" and cls.owns(obj)), None)


@dataclass
class Recipe:
    name: str
    task: str  # a registered task (qconv.tasks.TASKS)
    model: ModelSource
    description: str | None = None
    export: Any = None  # the task's export config (Task.export_config), chosen by 'task'
    stages: list[Any] = field(default_factory=list)  # OptimizeStage, or the quantize mode's config
    validate: list[ValidateStep] = field(default_factory=list)
    fallback: FallbackStep | None = None
    bench: BenchStep | None = None  # host-specific timings: no shipped recipe has one
    card: bool = True
    publish: PublishTarget | None = None
    path: Path | None = field(default=None, metadata={"internal": True})
    lines: dict[str, int] = field(default_factory=dict, metadata={"internal": True})


def load_recipe(path: str | Path) -> Recipe:
    """Parse and check a recipe file; every problem is one line naming ``file:line`` and the key."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise QconvError(f"recipe {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise QconvError(f"{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from exc
    if root is None:
        raise QconvError(f"{path}: the recipe is empty")
    return _Reader(path).recipe(root)


class _Reader:
    def __init__(self, path: Path):
        self.path = path
        self.lines: dict[str, int] = {}

    def error(self, node, message: str) -> QconvError:
        return QconvError(f"{self.path}:{node.start_mark.line + 1}: {message}")

    def recipe(self, root) -> Recipe:
        recipe = self.build(root, Recipe, "recipe")
        if not _NAME.match(recipe.name):
            raise self.error(root, f"name '{recipe.name}' must be a plain directory name (letters, digits, . _ -)")
        self._check_task_fields(root, recipe)
        self._check_datasets(root, recipe)
        recipe.path = self.path.resolve()
        recipe.lines = self.lines
        return recipe

    def _check_task_fields(self, root, recipe: Recipe) -> None:
        model = recipe.model
        if (model.id is None) == (model.testmodel is None):
            raise self.error(self._child(root, "model"), "model needs exactly one of 'id' or 'testmodel'")
        export_node = self._child(root, "export")
        if recipe.task not in TASKS:
            raise self.error(self._child(root, "task"), f"task: '{recipe.task}' is not one of {', '.join(TASKS)}")
        task = get_task(recipe.task)
        expected = task.export_config
        if export_node is None:
            recipe.export = expected()
        else:
            recipe.export = self.build(export_node, expected, "export", what=f"{recipe.task} export")
        problem = task.check_export_config(recipe.export)
        if problem:
            raise self.error(export_node if export_node is not None else root, problem)

    def _check_datasets(self, root, recipe: Recipe) -> None:
        from qconv.validate.datasets import DATASETS

        kind = get_task(recipe.task).dataset_kind
        suitable = [name for name, spec in DATASETS.items() if spec.kind == kind]
        steps = self._child(root, "validate")
        for i, step in enumerate(recipe.validate):
            if step.dataset not in suitable:
                node = self._child(steps.value[i], "dataset")
                message = f"'{step.dataset}' is not a dataset for {recipe.task} recipes ({', '.join(suitable)})"
                raise self.error(node, f"validate[{i}].dataset: {message}")

    def _items(self, node, where: str):
        """(key, key node, value node) of a mapping; a key that is not a plain name or comes twice is an error."""
        import yaml

        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise self.error(key_node, f"{where}: a key must be a plain name, not a {key_node.id}")
            if key_node.value in seen:
                raise self.error(key_node, f"{where}: duplicate key '{key_node.value}'")
            seen.add(key_node.value)
            yield key_node.value, key_node, value_node

    def _check_value(self, node, f, value, where: str) -> None:
        """The load-time checks a field declares in its metadata (ranges, choices, provider names); a list's
        ranges and choices apply to each item, at its own line."""
        import yaml

        if value is None:
            return
        if isinstance(value, list):
            if f.metadata.get("split") and not value:
                raise self.error(node, f"{where}: needs at least one value")
            items = node.value if isinstance(node, yaml.SequenceNode) else [node] * len(value)
            for i, (item_node, item) in enumerate(zip(items, value)):
                self._check_bounds(item_node, f, item, f"{where}[{i}]")
        else:
            self._check_bounds(node, f, value, where)
        providers = f.metadata.get("providers")
        if providers:
            from qconv.kernels import KNOWN_PROVIDERS
            from qconv.runtime.embedder import _available_providers

            allowed = _available_providers() if providers == "available" else KNOWN_PROVIDERS
            unknown = [p for p in value if p not in allowed]
            if unknown:
                what = "available in this onnxruntime" if providers == "available" else "known to qconv"
                raise self.error(node, f"{where}: provider(s) {', '.join(unknown)} not {what} ({', '.join(allowed)})")

    def _check_bounds(self, node, f, value, where: str) -> None:
        low, high = f.metadata.get("range", (None, None))
        if low is not None and (value < low or (high is not None and value > high)):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise self.error(node, f"{where}: must be {bound}, got {value}")
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise self.error(node, f"{where}: {value} is not one of {', '.join(map(str, choices))}")

    @staticmethod
    def _child(node, key: str):
        for k, v in node.value:
            if k.value == key:
                return v
        return None

    def build(self, node, tp, where: str, what: str | None = None):
        """Convert ``node`` to ``tp``; ``where`` is the dotted key path used in messages."""
        import yaml

        self.lines.setdefault(where, node.start_mark.line + 1)
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin in (typing.Union, types.UnionType):
            if type(None) in args and isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
                return None
            options = [a for a in args if a is not type(None)]
            if len(options) == 1:
                return self.build(node, options[0], where, what)
            if all(dataclasses.is_dataclass(a) for a in options):
                # The loader picks the member from context (export by task, stages by 'stage').
                return node
            raise TypeError(f"unsupported union {tp}")
        if dataclasses.is_dataclass(tp):
            return self._dataclass(node, tp, where, what)
        if origin is Literal:
            value = self._scalar(node, where)
            if value not in args:
                raise self.error(node, f"{where}: '{value}' is not one of {', '.join(map(str, args))}")
            return value
        if origin is list:
            if not isinstance(node, yaml.SequenceNode):
                raise self.error(node, f"{where}: expected a list")
            return [self.build(item, args[0], f"{where}[{i}]") for i, item in enumerate(node.value)]
        if tp in (str, int, float, bool):
            return self._typed_scalar(node, tp, where)
        raise TypeError(f"unsupported schema type {tp}")

    def _dataclass(self, node, tp, where: str, what: str | None):
        import yaml

        if tp is Recipe:
            return self._recipe_fields(node)
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{where}: expected a mapping of {what or tp.__name__} options")
        hints = typing.get_type_hints(tp)
        fields = {f.metadata.get("key", f.name): f for f in dataclasses.fields(tp) if not f.metadata.get("internal")}
        values: dict[str, Any] = {}
        for key, key_node, value_node in self._items(node, where):
            if key not in fields:
                raise self.error(key_node, self._unknown(key, where, fields, what or tp.__name__))
            value = self.build(value_node, hints[fields[key].name], f"{where}.{key}")
            self._check_value(value_node, fields[key], value, f"{where}.{key}")
            values[fields[key].name] = value
        for key, f in fields.items():
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required and f.name not in values:
                raise self.error(node, f"{where}: missing required key '{key}'")
        return tp(**values)

    def _recipe_fields(self, node) -> Recipe:
        import yaml

        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, "a recipe is a mapping of keys (name, task, model, ...)")
        hints = typing.get_type_hints(Recipe)
        fields = {f.name: f for f in dataclasses.fields(Recipe) if not f.metadata.get("internal")}
        values: dict[str, Any] = {}
        for key, key_node, value_node in self._items(node, "recipe"):
            if key not in fields:
                raise self.error(key_node, self._unknown(key, "recipe", fields, "recipe"))
            if key == "export":
                continue  # needs the task: checked afterwards
            if key == "stages":
                values["stages"] = self._stages(value_node)
            else:
                values[key] = self.build(value_node, hints[key], key)
        for key in ("name", "task", "model"):
            if key not in values:
                raise self.error(node, f"missing required key '{key}'")
        return Recipe(**values)

    def _stages(self, node) -> list:
        import yaml

        if not isinstance(node, yaml.SequenceNode):
            raise self.error(node, "stages: expected a list (e.g. '- stage: quantize')")
        stages = []
        for i, item in enumerate(node.value):
            where = f"stages[{i}]"
            if not isinstance(item, yaml.MappingNode):
                raise self.error(item, f"{where}: expected a mapping with a 'stage' key")
            list(self._items(item, where))  # duplicate or non-scalar keys, before 'stage' is looked up
            kinds = variant_stage_configs()
            kind_node = self._child(item, "stage")
            if kind_node is None:
                raise self.error(item, f"{where}: missing key 'stage' ({' | '.join(kinds)})")
            kind = kind_node.value
            if kind not in kinds:
                hint = difflib.get_close_matches(str(kind), list(kinds), n=1)
                suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
                raise self.error(kind_node, f"{where}.stage: unknown stage '{kind}' ({' | '.join(kinds)}){suggestion}")
            rest = yaml.MappingNode(item.tag, [(k, v) for k, v in item.value if k.value != "stage"], item.start_mark)
            if kinds[kind] is None:  # the quantize stage: its schema is chosen by 'mode'
                stages.append(self._quantize_stage(rest, where))
            else:
                stages.append(self.build(rest, kinds[kind], where, what=f"{kind} stage"))
        return stages

    def _quantize_stage(self, node, where: str):
        """The quantize stage's schema is its mode's config: 'mode' chooses it, like 'task' chooses export's."""
        from qconv.convert.quantize import owners_of

        modes = quantize_modes()
        mode_node = self._child(node, "mode")
        if mode_node is None:
            raise self.error(node, f"{where}: missing required key 'mode' ({' | '.join(modes)})")
        mode = self._scalar(mode_node, f"{where}.mode")
        if mode not in modes:
            raise self.error(mode_node, f"{where}.mode: '{mode}' is not one of {', '.join(modes)}")
        config = modes[mode].config
        keys = {f.metadata.get("key", f.name) for f in dataclasses.fields(config)}
        by_name = {f.metadata.get("key", f.name): f.name for m in modes.values() for f in dataclasses.fields(m.config)}
        for key_node, _ in node.value:
            owners = owners_of(by_name[key_node.value]) if key_node.value in by_name else []
            if key_node.value not in keys and owners:
                message = f"{where}.{key_node.value}: applies to mode {' or '.join(owners)}, not {mode}"
                raise self.error(key_node, message)
        return self.build(node, config, where, what=f"{mode} quantize stage")

    @staticmethod
    def _unknown(key: str, where: str, fields: dict, what: str) -> str:
        hint = difflib.get_close_matches(str(key), list(fields), n=1)
        suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
        return f"unknown key '{key}' in {where} ({what} keys: {', '.join(fields)}){suggestion}"

    def _scalar(self, node, where: str):
        import yaml

        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, f"{where}: expected a single value")
        return yaml.safe_load(node.value) if node.style is None else node.value

    def _typed_scalar(self, node, tp, where: str):
        value = self._scalar(node, where)
        ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            value, ok = str(value), True  # revisions and dataset splits may look numeric
        if not ok:
            shown = "null" if value is None else repr(value)
            raise self.error(node, f"{where}: expected {tp.__name__}, got {shown}")
        return value


def recipe_to_dict(recipe: Recipe) -> dict:
    """The recipe as plain data (for the manifest and ``--dry-run``), YAML keys restored."""

    def convert(obj):
        if dataclasses.is_dataclass(obj):
            out = {}
            kind = stage_kind(obj)
            if kind:
                out["stage"] = kind
            for f in dataclasses.fields(obj):
                if not f.metadata.get("internal"):
                    out[f.metadata.get("key", f.name)] = convert(getattr(obj, f.name))
            return out
        if isinstance(obj, list):
            return [convert(v) for v in obj]
        return obj

    return convert(recipe)
