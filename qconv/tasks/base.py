"""The ``Task`` protocol and its registry."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from qconv.errors import QconvError
from qconv.pipeline.options import option

if TYPE_CHECKING:
    import numpy as np

    from qconv.artifact import Artifact


@dataclass
class ExportCommon:
    """The exporter's options every task's export config shares (a task's config subclasses it)."""

    opset: int | None = field(default=None, metadata=option("ONNX opset.", range=(18, 23), implied=18))
    external_data: bool | None = field(
        default=None, metadata=option("Store weights beside the graph [default: only when over 2 GB].")
    )

    def exporter_options(self) -> dict:
        """The keywords of the export functions these options are (an opset of None: theirs)."""
        options: dict[str, Any] = {"external_data": self.external_data}
        if self.opset is not None:
            options["opset"] = self.opset
        return options


class Task:
    """What qconv knows about one kind of model. Declarative facts are class attributes; behaviour is hooks.

    Every hook has one job and is called by generic code (CLI, recipe schema and runner, quantize checks,
    calibration, bench, card); a task that cannot do something raises ``QconvError`` with one line.
    """

    name: ClassVar[str]
    dataset_kind: ClassVar[str]  # the DatasetSpec.kind its validation datasets have
    output: ClassVar[str]  # the graph output parity checks and benchmarks read
    export_config: ClassVar[type]  # typed export options (dataclass): recipe schema, CLI, card's Reproduce
    default_model: ClassVar[str | None] = None  # ``qconv export <task> --model``'s default (None: required)
    export_help: ClassVar[str] = ""  # ``qconv export <task> --help``'s first line
    model_help: ClassVar[str] = "Local model directory or Hugging Face Hub id."
    output_help: ClassVar[str] = "Artifact directory [default: artifacts/<model-name>]."
    exact_gates: ClassVar[dict[str, float] | None] = None  # default validation gates of its fp32 graphs

    # -- export -----------------------------------------------------------------------------------------
    def check_export_config(self, config) -> str | None:
        """Why ``config`` cannot be a pipeline export (None: it can)."""
        return None

    def export(self, source, output, config, *, revision: str | None = None, overwrite: bool = False) -> Any:
        """Export ``source`` (a directory or Hub id) into the artifact ``output`` with ``config`` (an instance of
        ``export_config``): ``qconv export <task>`` and the recipe's export stage both call this."""
        raise NotImplementedError

    # -- runtime and parity -----------------------------------------------------------------------------
    def compare_variants(self, art: Artifact, variant: str, source_variant: str) -> dict:
        """Run both variants on built-in inputs: the quantize/optimize check (finite, close, latency).

        Generic over ``parity_runner`` and ``parity_figures``; a task with another notion of "close"
        overrides those two, not this."""
        import time

        import numpy as np

        def timed(run) -> tuple[Any, float]:
            # Best of three: a rough CPU latency for the record, not a benchmark.
            best, out = float("inf"), None
            for _ in range(3):
                start = time.perf_counter()
                out = run()
                best = min(best, time.perf_counter() - start)
            return out, round(best * 1000, 2)

        # Both variants are loaded before either is timed, so neither timing includes the other's load.
        run_new, run_old = self.parity_runner(art, variant), self.parity_runner(art, source_variant)
        new, new_ms = timed(run_new)
        old, old_ms = timed(run_old)
        result = {"against": source_variant, **self.parity_figures(new, old)}
        result.update(
            finite=bool(np.isfinite(new).all()),
            latency_ms=new_ms,
            source_latency_ms=old_ms,
            latency_note="one batch of the built-in inputs on CPU, best of 3",
        )
        return result

    def parity_runner(self, art: Artifact, variant: str) -> Callable[[], np.ndarray]:
        """Load ``variant`` through the task's runtime; the callable runs it on the task's built-in inputs."""
        raise NotImplementedError

    def parity_figures(self, new: np.ndarray, old: np.ndarray) -> dict:
        """How close a variant's outputs on the built-in inputs are to its source's (the input count first)."""
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

    # -- manifest ---------------------------------------------------------------------------------------
    # The keys of the manifest section named after the task that every reader relies on (qconv/artifact.py
    # names a missing one up front instead of failing later with a KeyError).
    manifest_keys: ClassVar[tuple[str, ...]] = ()

    # -- calibration (SmoothQuant scales, --keep sensitivity, --recover) ---------------------------------
    def calibration_sequences(self, art: Artifact, pairs: Sequence[tuple[str, str]]) -> tuple[list, int]:
        """Token ids of the calibration (query, document) pairs as the task's runtime tokenizes them, and the
        pad id that batches them (convert/calibration.py pads them on the manifest's padding side)."""
        raise NotImplementedError

    def calibration_rankings(self, pairs: Sequence[tuple[str, str]]) -> tuple[list, list[list[int]]] | None:
        """For a task that ranks documents per query: the pairs a recovered variant is checked on (each query
        with several documents) and the rows of each query, so the ladder's target reads rankings. None: the
        outputs are compared row by row."""
        return None

    def one_input_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """Calibration pairs reduced so that each makes exactly one input sequence (the batch-coupling
        measurement compares a text alone with the same text in a batch)."""
        return list(pairs)

    def pad_id(self, art: Artifact) -> int:
        """The token id the runtime pads batches with."""
        raise NotImplementedError

    # -- bench (qconv/bench: the spec each worker subprocess gets) ---------------------------------------
    bench_unit: ClassVar[str] = "texts/s"  # what one row of a batch is, per second
    # The PyTorch baseline: a transformers class path ("transformers.AutoModel") and how the worker calls
    # it (a key of qconv.bench.worker.CALLS). None: no baseline for this task.
    torch_model: ClassVar[str | None] = None
    torch_call: ClassVar[str | None] = None

    def bench_lm_head(self, manifest: dict) -> bool:
        """Whether the ONNX graph computes an LM head (counted in the FLOP figures)."""
        return False

    def bench_extra_runs(self, base: dict, seq_lens: list[int], documents: int) -> list[tuple[str, dict, dict]]:
        """More PyTorch runs (label, worker spec, row metadata) beside fp32/bf16, built on the baseline's
        spec ``base``. Metadata ``speedup_key``: every other row gets its throughput over this run's under
        that key (same sequence length)."""
        return []

    # -- test models (qconv testmodel create, the demo, the tests) ---------------------------------------
    testmodel_class: ClassVar[str | None] = None  # transformers class of its random test model; None: none
    demo_recipe: ClassVar[str | None] = None  # its bundled demo recipe (qconv/recipes), if it has one

    def create_testmodel(self, out: Path, *, shape, seed: int, outliers: bool) -> Path:
        """Write a random-weight checkpoint of this task's model (qconv/testing/testmodels.py)."""
        raise QconvError(f"qconv has no test model for the {self.name} task")

    # -- validate options (qconv validate, the recipe runner) -------------------------------------------
    # A dataclass of the options only this task's validation takes, with their defaults (None: none). Each
    # field is a ``qconv validate`` flag (qconv/pipeline/validate_cli.py; its help names the tasks that take
    # it); the CLI refuses the others' options on this task's datasets; the runner passes what a recipe gives.
    validate_options: ClassVar[type | None] = None


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


def task_for_dataset_kind(kind: str) -> Task:
    """The task whose validation datasets are of ``kind`` (a DatasetSpec.kind)."""
    for task in TASKS.values():
        if task.dataset_kind == kind:
            return task
    raise QconvError(f"no task validates datasets of kind '{kind}' (qconv knows {', '.join(TASKS)})")
