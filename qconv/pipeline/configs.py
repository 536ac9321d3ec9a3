"""The typed configs of the recipe's stage sections (optimize, validate, fallback, bench, publish) and of
``qconv validate``.

Each stage of ``qconv.pipeline.stages`` names its config here; the recipe schema (``qconv.pipeline.recipe``)
reads the same dataclasses. The export config is the task's (``Task.export_config``), the quantize config the
mode's (``qconv.convert.quantize``). Pure data: nothing here imports a stage, so the schema and the stages can
both import it.

The ``qconv optimize``, ``fallback``, ``bench`` and ``publish`` commands' configuration options are generated from these
classes too (``qconv.pipeline.options.click_options``; a field's ``help`` is its flag's help), with a small
``...Command`` subclass for an option only the command has and records (``FallbackCommand.runtime``). Their
output and behaviour switches (``--overwrite``, ``--json``, ``--dry-run``...) are plain click options in
``qconv.cli``: they are not configuration, nothing records or reproduces them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from qconv.pipeline.options import option


def key(name: str) -> dict:
    """A field whose YAML key differs from its Python name (``from`` is a keyword)."""
    return {"key": name}


def at_least(low: int, high: int | None = None) -> dict:
    """A number checked at load time: at least ``low`` (and at most ``high``)."""
    return {"range": (low, high)}


@dataclass
class OptimizeStage:
    level: Literal["O1", "O2", "O3", "O4"] = field(
        metadata=option("O1 | O2 | O3 | O4 (O4 = O3 + fp16, needs --target cuda).", noun="optimization level")
    )
    target: Literal["cpu", "cuda"] = field(
        default="cpu", metadata=option("cpu | cuda: the device the graph is built for.")
    )  # an unknown level or target is refused before the artifact is opened (qconv.pipeline.options.checked)
    source: str = field(default="model", metadata=option("fp32 variant to optimize.", key="from"))


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
            split=",",
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
    variants: list[str] | None = field(
        default=None,
        metadata=option(
            "Variant(s) to analyse, repeatable [default: in a recipe every variant it makes, here model].",
            flag="--variant",
        ),
    )
    providers: list[str] = field(
        default_factory=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
        metadata={
            **option("Execution providers, comma-separated or repeated.", split=",", always=True),
            "providers": "known",
        },
    )


@dataclass
class FallbackCommand(FallbackStep):
    """``qconv fallback``: the recipe's step and what the command also records (the stage entry's keys)."""

    runtime: bool = field(default=False, metadata=option("Also profile a session on each provider available here."))


@dataclass
class BenchStep:
    """``qconv bench`` and the recipe's ``bench:`` section (absent: no bench step): one declaration each option."""

    variants: list[str] | None = field(
        default=None,
        metadata=option(
            "Variants to measure, comma-separated [default: all; in a recipe: every variant it makes].", split=","
        ),
    )
    batch_sizes: list[int] = field(
        default_factory=lambda: [1, 8], metadata=option("Batch sizes, comma-separated.", range=(1, None), split=",")
    )
    seq_lens: list[int] = field(
        default_factory=lambda: [32, 128],
        metadata=option("Sequence lengths (tokens), comma-separated.", range=(1, None), split=","),
    )
    threads: int | None = field(default=None, metadata=option("Intra-op threads [default: all cores].", **at_least(1)))
    providers: list[str] | None = field(
        default=None,
        metadata={
            **option("Onnxruntime execution providers, comma-separated [default: CPU].", split=","),
            "providers": "available",
        },
    )
    baseline: Literal["torch", "none"] = field(
        default="torch", metadata=option("torch: also measure the PyTorch source model; none: ONNX variants only.")
    )
    repeats: int = field(default=5, metadata=option("Timed repetitions per shape.", **at_least(1)))
    warmup: int = field(default=1, metadata=option("Untimed warm-up runs per shape.", **at_least(0)))

    def named_variants(self) -> list[str] | None:
        """The variants asked for by name; None: all of them (not given, or 'all')."""
        return None if not self.variants or self.variants == ["all"] else list(self.variants)


@dataclass
class PublishTarget:
    repo_id: str = field(
        metadata=option("Upload to this Hub model repository (ORG/NAME); the token comes from HF_TOKEN.")
    )
    revision: str | None = field(default=None, metadata=option("--repo-id: upload to this branch (created if needed)."))
    private: bool = field(default=False, metadata=option("--repo-id: create the repository private."))
