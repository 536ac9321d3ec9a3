"""The pipeline's stages: one registered class per stage kind (export, optimize, quantize, validate, fallback,
bench, card, publish), each with its typed config, ``run``, its fingerprint, when it is done and its manifest record.

``qconv run`` (``qconv.pipeline.run``) knows no stage by name: its plan asks every registered stage for the
steps its recipe section makes, its ``--only`` choices are the registered kinds, and the recipe's ``stages:``
list accepts the kinds registered with ``section = "stages"``. A step's fingerprint hashes its config and the
files it reads (the hashes the manifest records); a step is skipped when the manifest holds the same
fingerprint and its outputs are intact. The fingerprints are part of existing artifacts' manifests: changing
what one hashes re-runs that step on every artifact.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from qconv.errors import QconvError
from qconv.pipeline.configs import BenchStep, FallbackStep, OptimizeStage, PublishTarget, ValidateStep
from qconv.pipeline.context import (
    Context,
    RunOptions,
    data_file,
    digest,
    model_label,
    source_identity,
    source_path,
)
from qconv.pipeline.recipe import recipe_to_dict, stage_kind

if TYPE_CHECKING:
    from qconv.pipeline.recipe import Recipe


@dataclass
class Stage:
    """One step of a run: a stage kind applied to one config (and, for most kinds, one variant)."""

    kind: ClassVar[str]
    config: ClassVar[type | None] = None  # its typed config (None: chosen per recipe, e.g. by task or mode)
    section: ClassVar[str]  # the recipe key its configs come from
    opt_in: ClassVar[str | None] = None  # a RunOptions flag without which it is not selected ('publish')
    after_all: ClassVar[bool] = False  # it reads every earlier step's record: runs after any that runs

    settings: Any = None  # an instance of ``config``
    variant: str | None = None

    @classmethod
    def plan(cls, recipe: Recipe, options: RunOptions, variants: list[str]) -> list[Stage]:
        """Its steps for ``recipe``; ``variants`` holds the variants earlier stages make (extend it)."""
        raise NotImplementedError

    @classmethod
    def owns(cls, settings) -> bool:
        """Whether ``settings`` is a config of this stage."""
        return cls.config is not None and isinstance(settings, cls.config)

    @classmethod
    def check_request(cls, recipe: Recipe, options: RunOptions) -> None:
        """Refuse a run whose options ask this stage for something the recipe cannot give."""

    @property
    def id(self) -> str:
        raise NotImplementedError

    @property
    def reads(self) -> str | None:
        """The variant it reads (what it waits for when an earlier step rewrites it)."""
        return self.variant

    @property
    def reads_variants(self) -> tuple[str, ...]:
        """Every variant it reads (a step measuring several waits for each of them)."""
        return (self.reads,) if self.reads else ()

    @property
    def writes(self) -> str | None:
        """The variant it (re)writes."""
        return None

    def describe(self) -> str:
        return self.id

    def fingerprint(self, ctx: Context) -> str | None:
        """None when the inputs do not exist yet (an earlier step will make them)."""
        raise NotImplementedError

    def done(self, ctx: Context, fingerprint: str) -> bool:
        raise NotImplementedError

    def run(self, ctx: Context) -> None:
        raise NotImplementedError

    def record(self, ctx: Context, fingerprint: str) -> None:
        """Its manifest record after it ran: the fingerprint it was run with."""
        ctx.record(self.id, fingerprint)


STAGES: dict[str, type[Stage]] = {}


def register_stage(cls: type[Stage]) -> type[Stage]:
    """Class decorator; the registration order is the order of a run (sections in their first stage's place)."""
    if cls.kind in STAGES:
        raise ValueError(f"stage '{cls.kind}' is registered twice")
    STAGES[cls.kind] = cls
    return cls


def unregister_stage(kind: str) -> None:
    STAGES.pop(kind, None)


def stage_kinds() -> tuple[str, ...]:
    return tuple(STAGES)


@register_stage
@dataclass
class ExportStage(Stage):
    kind: ClassVar[str] = "export"
    section: ClassVar[str] = "export"  # its config is the task's export config (Task.export_config)

    recipe: Recipe = None
    options: RunOptions = None

    @classmethod
    def plan(cls, recipe, options, variants):
        variants.append("model")
        return [cls(settings=recipe.export, recipe=recipe, options=options)]

    @property
    def id(self) -> str:
        return "export"

    @property
    def writes(self) -> str:
        return "model"

    def describe(self) -> str:
        return f"export {self.recipe.task} from {model_label(self.recipe, self.options)}"

    def fingerprint(self, ctx: Context) -> str:
        return digest({"source": source_identity(ctx.recipe, ctx.options), "export": recipe_to_dict(ctx.recipe.export)})

    def done(self, ctx: Context, fingerprint: str) -> bool:
        return ctx.fingerprints().get(self.id) == fingerprint and ctx.intact(ctx.variant_hashes("model"))

    def run(self, ctx: Context) -> None:
        from qconv.artifact import Artifact
        from qconv.tasks import get_task

        recipe = ctx.recipe
        source = str(source_path(recipe, ctx.options))
        revision = None if ctx.options.model else recipe.model.revision
        get_task(recipe.task).export(source, ctx.target, recipe.export, revision=revision, overwrite=True)
        ctx.art = Artifact(ctx.target)


@dataclass
class VariantStage(Stage):
    """An entry of the recipe's ``stages:`` list: one new variant from a source variant."""

    section: ClassVar[str] = "stages"

    @classmethod
    def plan(cls, recipe, options, variants):
        # The whole list, in its order: each entry is planned by the stage its config belongs to.
        steps = []
        for i, settings in enumerate(recipe.stages):
            if settings.source not in variants:
                line = recipe.lines.get(f"stages[{i}].from") or recipe.lines.get(f"stages[{i}]")
                raise QconvError(
                    f"{recipe.path}:{line}: stages[{i}].from: variant '{settings.source}' is not made by an earlier "
                    f"stage (available: {', '.join(variants)})"
                )
            stage = STAGES[stage_kind(settings)]
            variant = stage.produces(settings)
            if variant in variants:
                line = recipe.lines.get(f"stages[{i}]")
                raise QconvError(f"{recipe.path}:{line}: stages[{i}] makes '{variant}' again")
            variants.append(variant)
            steps.append(stage(settings=settings, variant=variant))
        return steps

    @classmethod
    def produces(cls, settings) -> str:
        """The name of the variant ``settings`` makes."""
        raise NotImplementedError

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.variant}"

    @property
    def reads(self) -> str:
        return self.settings.source

    @property
    def writes(self) -> str:
        return self.variant

    def how(self) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.kind} {self.settings.source} -> {self.variant} ({self.how()})"

    def fingerprint(self, ctx: Context) -> str | None:
        inputs = ctx.variant_hashes(self.settings.source)
        return digest({"stage": recipe_to_dict(self.settings), "inputs": inputs}) if inputs else None

    def done(self, ctx: Context, fingerprint: str) -> bool:
        return ctx.fingerprints().get(self.id) == fingerprint and ctx.intact(ctx.variant_hashes(self.variant))


@register_stage
@dataclass
class OptimizeVariantStage(VariantStage):
    kind: ClassVar[str] = "optimize"
    config: ClassVar[type] = OptimizeStage

    @classmethod
    def produces(cls, settings) -> str:
        from qconv.convert.optimize import optimized_variant

        return optimized_variant(settings.level, settings.target, settings.source)

    def how(self) -> str:
        return f"level {self.settings.level}, {self.settings.target}"

    def run(self, ctx: Context) -> None:
        from qconv.convert.optimize import optimize

        s = self.settings
        optimize(ctx.art, s.level, target=s.target, source_variant=s.source, overwrite=True)


@register_stage
@dataclass
class QuantizeVariantStage(VariantStage):
    kind: ClassVar[str] = "quantize"
    config: ClassVar[None] = None  # the mode's config (qconv.convert.quantize), chosen by 'mode'

    @classmethod
    def owns(cls, settings) -> bool:
        from qconv.convert.quantize import QuantizeConfig

        return isinstance(settings, QuantizeConfig)

    @classmethod
    def produces(cls, settings) -> str:
        from qconv.convert.quantize import quantized_variant

        return quantized_variant(settings)

    def how(self) -> str:
        return self.settings.mode

    def run(self, ctx: Context) -> None:
        from qconv.convert.quantize import quantize

        quantize(ctx.art, self.settings.mode, options=self.settings, overwrite=True)


def _check_variant(recipe: Recipe, variant: str, variants: list[str], key: str, listed: bool) -> None:
    if variant not in variants:
        made = f" ({', '.join(variants)})" if listed else ""
        raise QconvError(f"{recipe.path}:{recipe.lines.get(key)}: {key}: '{variant}' is not made by this recipe{made}")


@register_stage
@dataclass
class ValidateStage(Stage):
    kind: ClassVar[str] = "validate"
    config: ClassVar[type] = ValidateStep
    section: ClassVar[str] = "validate"

    @classmethod
    def plan(cls, recipe, options, variants):
        steps = []
        for i, settings in enumerate(recipe.validate):
            for variant in settings.variants or variants:
                _check_variant(recipe, variant, variants, f"validate[{i}].variants", listed=True)
                steps.append(cls(settings=settings, variant=variant))
        return steps

    @property
    def id(self) -> str:
        return f"validate:{self.variant}:{self.settings.dataset}"

    def describe(self) -> str:
        limit = f", first {self.settings.limit}" if self.settings.limit else ""
        return f"validate {self.variant} on {self.settings.dataset}{limit}"

    def fingerprint(self, ctx: Context) -> str | None:
        from qconv.artifact import sha256_file

        inputs = ctx.variant_build(self.variant)
        if not inputs:
            return None
        data = data_file(ctx, self.settings.dataset)
        options = {k: v for k, v in recipe_to_dict(self.settings).items() if k != "variants"}
        return digest(
            {
                "inputs": inputs,
                "options": options,
                "data": sha256_file(data) if data else None,
                "offline": ctx.options.offline,
            }
        )

    def done(self, ctx: Context, fingerprint: str) -> bool:
        summary = ctx.art.manifest.get("validation", {}).get(self.variant, {}).get(self.settings.dataset)
        return (
            ctx.fingerprints().get(self.id) == fingerprint
            and summary is not None
            and ctx.reports_intact(summary["report"])
        )

    def run(self, ctx: Context) -> None:
        from qconv.gates import GATES
        from qconv.tasks import task_for_dataset_kind
        from qconv.validate.datasets import dataset_spec
        from qconv.validate.runner import validate_dataset

        step, gates = self.settings, self.settings.thresholds
        note = ctx.art.manifest.get("source", {}).get("weights")
        options = {
            "variant": self.variant,
            "data_files": data_file(ctx, step.dataset),
            "split": step.split,
            "limit": step.limit,
            "providers": step.providers,
            "instruction": step.instruction,
            "offline": ctx.options.offline,
            "note": note,
        }
        if step.bootstrap is not None:
            options["bootstrap"] = step.bootstrap
        kind = dataset_spec(step.dataset).kind
        options.update({g.name: getattr(gates, g.name) for g in GATES.values() if kind in g.kinds})
        # The task's own options (batch size, candidates per query): given ones only, the task has the defaults.
        task = task_for_dataset_kind(kind)
        for f in dataclasses.fields(task.validate_options) if task.validate_options else ():
            value = getattr(step, f.name, None)
            if value:
                options[f.name] = value
        validate_dataset(ctx.art, step.dataset, **options)


@register_stage
@dataclass
class FallbackStage(Stage):
    kind: ClassVar[str] = "fallback"
    config: ClassVar[type] = FallbackStep
    section: ClassVar[str] = "fallback"

    @classmethod
    def plan(cls, recipe, options, variants):
        if not recipe.fallback:
            return []
        steps = []
        for variant in recipe.fallback.variants or variants:
            _check_variant(recipe, variant, variants, "fallback.variants", listed=False)
            steps.append(cls(settings=recipe.fallback, variant=variant))
        return steps

    @property
    def id(self) -> str:
        return f"fallback:{self.variant}"

    def describe(self) -> str:
        return f"fallback report for {self.variant} on {', '.join(self.settings.providers)}"

    def fingerprint(self, ctx: Context) -> str | None:
        inputs = ctx.variant_hashes(self.variant)
        return digest({"inputs": inputs, "providers": self.settings.providers}) if inputs else None

    def done(self, ctx: Context, fingerprint: str) -> bool:
        report = f"reports/fallback-{self.variant}.json"
        return ctx.fingerprints().get(self.id) == fingerprint and ctx.reports_intact(report)

    def run(self, ctx: Context) -> None:
        from qconv.validate.placement import fallback_report

        fallback_report(ctx.art, variants=[self.variant], providers=self.settings.providers)


def host_identity(threads: int | None) -> dict:
    """What bench timings depend on besides the graphs: the CPU (model and ISA preset) and the thread count."""
    import os

    from qconv.bench.runner import cpu_description
    from qconv.convert.quantize import detect_preset

    return {"cpu": cpu_description(), "preset": detect_preset(), "threads": threads or os.cpu_count() or 1}


@register_stage
@dataclass
class BenchStage(Stage):
    """One bench run over the variants it measures (every variant the recipe makes unless it names some)."""

    kind: ClassVar[str] = "bench"
    config: ClassVar[type] = BenchStep
    section: ClassVar[str] = "bench"

    measured: list[str] = dataclasses.field(default_factory=list)

    @classmethod
    def plan(cls, recipe, options, variants):
        if not recipe.bench:
            return []
        named = recipe.bench.named_variants()
        for variant in named or ():
            _check_variant(recipe, variant, variants, "bench.variants", listed=True)
        return [cls(settings=recipe.bench, measured=list(named or variants))]

    @property
    def id(self) -> str:
        return "bench"

    @property
    def reads_variants(self) -> tuple[str, ...]:
        return tuple(self.measured)

    def describe(self) -> str:
        s = self.settings
        shapes = f"batch {','.join(map(str, s.batch_sizes))} x seq {','.join(map(str, s.seq_lens))}"
        baseline = ", PyTorch baseline" if s.baseline == "torch" else ""
        return f"bench {', '.join(self.measured)} ({shapes}{baseline})"

    def fingerprint(self, ctx: Context) -> str | None:
        builds = {variant: ctx.variant_build(variant) for variant in self.measured}
        if not all(builds.values()):
            return None
        # Timings are the host's: another CPU or thread count measures again.
        options = {k: v for k, v in recipe_to_dict(self.settings).items() if k != "variants"}
        return digest({"inputs": builds, "options": options, "host": host_identity(self.settings.threads)})

    def done(self, ctx: Context, fingerprint: str) -> bool:
        return ctx.fingerprints().get(self.id) == fingerprint and ctx.reports_intact("reports/bench.json")

    def run(self, ctx: Context) -> None:
        from qconv.bench.runner import bench

        bench(ctx.art, dataclasses.replace(self.settings, variants=list(self.measured)))


@register_stage
@dataclass
class CardStage(Stage):
    kind: ClassVar[str] = "card"
    config: ClassVar[type] = bool  # 'card: false' turns it off
    section: ClassVar[str] = "card"
    after_all: ClassVar[bool] = True

    @classmethod
    def plan(cls, recipe, options, variants):
        return [cls(settings=recipe.card)] if recipe.card else []

    @property
    def id(self) -> str:
        return "card"

    def describe(self) -> str:
        return "model card (README.md)"

    def fingerprint(self, ctx: Context) -> str | None:
        if not ctx.art:
            return None
        # Every record but its own and publish's (the steps that read all records): a step id is the stage's
        # kind for the one-per-recipe stages, 'kind:variant...' otherwise.
        steps = {k: v for k, v in ctx.fingerprints().items() if not STAGES.get(k, Stage).after_all}
        return digest(steps)

    def done(self, ctx: Context, fingerprint: str) -> bool:
        return ctx.fingerprints().get(self.id) == fingerprint and ctx.reports_intact("README.md")

    def run(self, ctx: Context) -> None:
        from qconv.hub.card import write_model_card

        write_model_card(ctx.art)

    def record(self, ctx: Context, fingerprint: str) -> None:
        # What it read includes the records of the steps that ran before it in this run: taken afresh.
        ctx.record(self.id, self.fingerprint(ctx))


@register_stage
@dataclass
class PublishStage(Stage):
    kind: ClassVar[str] = "publish"
    config: ClassVar[type] = PublishTarget
    section: ClassVar[str] = "publish"
    opt_in: ClassVar[str] = "publish"
    after_all: ClassVar[bool] = True

    @classmethod
    def plan(cls, recipe, options, variants):
        return [cls(settings=recipe.publish)] if recipe.publish else []

    @classmethod
    def check_request(cls, recipe, options) -> None:
        if options.publish and not recipe.publish and options.only in (None, "publish"):
            raise QconvError(f"{recipe.path}: --publish needs a 'publish' section (repo_id) in the recipe")
        if options.only == "publish" and not recipe.publish:
            raise QconvError(f"{recipe.path}: no 'publish' section, nothing to publish")

    @property
    def id(self) -> str:
        return "publish"

    def describe(self) -> str:
        target = self.settings
        return f"publish to the Hub: {target.repo_id}" + (f" ({target.revision})" if target.revision else "")

    def fingerprint(self, ctx: Context) -> str | None:
        return digest(ctx.fingerprints()) if ctx.art else None

    def done(self, ctx: Context, fingerprint: str) -> bool:
        return False  # publishing is explicit: asked for, it always uploads

    def run(self, ctx: Context) -> None:
        from qconv.hub.publish import publish_to_hub

        target = self.settings
        publish_to_hub(ctx.art, target.repo_id, revision=target.revision, private=target.private)
