"""The typed configs of the recipe's stage sections (optimize, validate, fallback, publish) and of ``qconv validate``.

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


_VALIDATE_REQUESTS: dict[tuple, type] = {}


def validate_request_class() -> type:
    """``ValidateRequest``: the configuration of one ``qconv validate`` run, declared once.

    ``qconv validate``'s options are generated from it (``qconv.pipeline.validate_cli``) and a validation's
    summary stores one (``qconv.validate.runner``) that the card's Reproduce line prints back (``to_argv``).
    Its fields, in the order a Reproduce line gives them: the common options, then every option a registered
    task's ``validate_options`` declares (default None: 'not given', the task's dataclass holds the defaults),
    then one bound per declared gate (as ``Thresholds``), then the reference model and the token budget. Built
    from the registries when asked (cached per set of tasks), so a task registered later adds its options.
    """
    import typing

    from qconv.pipeline.options import collect, option
    from qconv.runtime.embedder import DEFAULT_BATCH_TOKENS
    from qconv.tasks import TASKS
    from qconv.validate.datasets import DATASETS
    from qconv.validate.metrics import BOOTSTRAP_DEFAULT

    owners = {name: task.validate_options for name, task in TASKS.items() if task.validate_options}
    by_task = {t.name: [d.name for d in DATASETS.values() if d.kind == t.dataset_kind] for t in TASKS.values()}
    cache_key = (tuple(owners.items()), tuple((k, tuple(v)) for k, v in by_task.items()))
    if cache_key in _VALIDATE_REQUESTS:
        return _VALIDATE_REQUESTS[cache_key]
    datasets = ", ".join(f"{' | '.join(names)} ({task})" for task, names in by_task.items() if names)

    def declared(name: str, tp, default, help: str, **meta) -> tuple:
        return name, tp, field(default=default, metadata=option(help, **meta))

    common = [
        ("dataset", list[str], field(metadata=option(f"{datasets}; repeatable (one report each)."))),
        declared("variant", str, "model", "ONNX variant (onnx/model_<variant>.onnx)."),
        declared(
            "offline", bool, False, "Do not try the Hub; use --data-files or the bundled sample.", flag="--offline"
        ),
        declared("data_files", str | None, None, "Local JSONL/Parquet/CSV in the dataset's schema.", file=True),
        declared("split", str | None, None, "Dataset split [default: the dataset's evaluation split]."),
        declared("limit", int | None, None, "Evaluate only the first N pairs (queries for ranking)."),
    ]
    hints = {name: typing.get_type_hints(tp) for name, tp in owners.items()}
    specific = [
        (name, hints[entry.owners[0][0]][name] | None, field(default=None, metadata=dict(entry.field.metadata)))
        for name, entry in collect(owners).items()
    ]
    later = [
        declared(
            "instruction",
            str | None,
            None,
            "Instruction for both tasks [default: the dataset's or the artifact's]; '' = no instruction.",
        ),
        declared(
            "bootstrap",
            int,
            BOOTSTRAP_DEFAULT,
            "Paired bootstrap resamples for each delta's 95% interval (seeded); 0 = off. "
            "Gates read the point estimate.",
        ),
        declared(
            "providers",
            list[str] | None,
            None,
            "Comma-separated onnxruntime execution providers [default: CPU].",
            comma=True,
        ),
    ]
    # one bound per gate, as the recipe's thresholds declare them
    gates = [(f.name, f.type, field(default=None, metadata=f.metadata)) for f in dataclasses.fields(Thresholds)]
    resources = [  # last: a summary never stores the reference (often a local path of this machine)
        declared("reference", str | None, None, "PyTorch reference model [default: the manifest's source model]."),
        declared(
            "batch_tokens",
            int,
            DEFAULT_BATCH_TOKENS,
            "At most this many padded tokens per batch (bounds memory for long texts).",
        ),
    ]
    names = [name for name, _, _ in common + later + gates + resources]
    clash = [name for name, _, _ in specific if name in names]
    if clash:
        raise TypeError(f"task validate option(s) {', '.join(clash)} clash with qconv validate's own options")
    tp = dataclasses.make_dataclass("ValidateRequest", common + specific + later + gates + resources)
    tp.__module__ = __name__
    _VALIDATE_REQUESTS[cache_key] = tp
    return tp


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
