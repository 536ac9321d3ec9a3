"""The ``Task`` protocol and its registry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from qconv.errors import QconvError

if TYPE_CHECKING:
    from qconv.artifact import Artifact


class Task:
    """What qconv knows about one kind of model. Declarative facts are class attributes; behaviour is hooks.

    Every hook has one job and is called by generic code (CLI, recipe schema and runner, quantize checks,
    calibration, bench, card); a task that cannot do something raises ``QconvError`` with one line.
    """

    name: ClassVar[str]
    dataset_kind: ClassVar[str]  # the DatasetSpec.kind its validation datasets have
    output: ClassVar[str]  # the graph output parity checks and benchmarks read
    export_config: ClassVar[type]  # typed export options (dataclass): recipe schema and CLI

    # -- export -----------------------------------------------------------------------------------------
    def check_export_config(self, config) -> str | None:
        """Why ``config`` cannot be a pipeline export (None: it can)."""
        return None

    def export(self, source, output, config, **common) -> Any:
        raise NotImplementedError

    # -- runtime and parity -----------------------------------------------------------------------------
    def compare_variants(self, art: Artifact, variant: str, source_variant: str) -> dict:
        """Run both variants on built-in inputs: the quantize/optimize check (finite, close, latency)."""
        raise NotImplementedError

    def calibration_texts(self, art: Artifact, pairs) -> list[str]:
        raise NotImplementedError

    # -- validation -------------------------------------------------------------------------------------
    def validate(self, art, dataset: str, **options) -> dict:
        raise NotImplementedError

    # -- description ------------------------------------------------------------------------------------
    def describe(self, manifest: dict) -> str:
        """What the artifact is for, in a few words ("sentence embeddings")."""
        return self.name

    # -- model card (qconv/hub/card.py renders the card; these hooks give its task-specific parts) ---------
    # model-index ``task`` of a validation result on this task's datasets: (type, name) as the Hub lists them.
    model_index_task: ClassVar[tuple[str, str]] = ("other", "Other")

    def card_metadata(self, manifest: dict) -> tuple[str | None, str | None, list[str]]:
        """(library_name, pipeline_tag, task tags) of the card's YAML metadata."""
        return None, None, [self.name]

    def card_outputs(self, data) -> str:
        """A sentence on what the graph's outputs hold (after "Every graph takes ... and returns ...")."""
        return ""

    def card_usage(self, data, variant: str) -> str:
        """The card's "Usage" section (Markdown): snippets that load ``variant``."""
        return ""

    def card_prompt(self, data) -> str:
        """The card's section (Markdown) on the prompt or template the model takes."""
        return ""


TASKS: dict[str, Task] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: register one instance under ``cls.name`` (a second task of the same name is a bug)."""
    if cls.name in TASKS:
        raise ValueError(f"task '{cls.name}' is registered twice")
    TASKS[cls.name] = cls()
    return cls


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise QconvError(f"unknown task '{name}' (qconv knows {', '.join(TASKS)})") from None


def task_of(art: Artifact) -> Task:
    return get_task(art.task)
