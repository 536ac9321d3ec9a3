"""The typed configs of the recipe's stage sections (optimize, validate, fallback, publish).

Each stage of ``qconv.pipeline.stages`` names its config here; the recipe schema (``qconv.pipeline.recipe``)
reads the same dataclasses. The export config is the task's (``Task.export_config``), the quantize config the
mode's (``qconv.convert.quantize``). Pure data: nothing here imports a stage, so the schema and the stages can
both import it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal


def key(name: str) -> dict:
    """A field whose YAML key differs from its Python name (``from`` is a keyword)."""
    return {"key": name}


def at_least(low: int, high: int | None = None) -> dict:
    """A number checked at load time: at least ``low`` (and at most ``high``)."""
    return {"range": (low, high)}


@dataclass
class OptimizeStage:
    level: Literal["O1", "O2", "O3", "O4"]
    target: Literal["cpu", "cuda"] = "cpu"
    source: str = field(default="model", metadata=key("from"))


def _thresholds_class() -> type:
    """The recipe's ``thresholds``: one optional bound per declared gate (qconv.gates.GATES)."""
    from qconv.gates import GATES

    fields = [(g.name, float | None, field(default=None, metadata={"help": g.help})) for g in GATES.values()]
    return dataclasses.make_dataclass("Thresholds", fields)


Thresholds = _thresholds_class()


@dataclass
class ValidateStep:
    dataset: str
    split: str | None = None
    limit: int | None = field(default=None, metadata=at_least(1))
    variants: list[str] | None = None  # default: every variant the recipe produces
    providers: list[str] | None = field(default=None, metadata={"providers": "available"})
    batch_size: int | None = field(default=None, metadata=at_least(1))
    instruction: str | None = None  # None = the default, '' = no instruction
    max_candidates: int | None = field(default=None, metadata=at_least(1))
    bootstrap: int | None = field(default=None, metadata=at_least(0))  # resamples for the 95% intervals; 0 = off
    thresholds: Thresholds = field(default_factory=Thresholds)


@dataclass
class FallbackStep:
    providers: list[str] = field(
        default_factory=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"], metadata={"providers": "known"}
    )
    variants: list[str] | None = None  # default: every variant the recipe produces


@dataclass
class PublishTarget:
    repo_id: str
    revision: str | None = None
    private: bool = False
