"""``qconv run``: replay a recipe's stages in order, skipping every step whose outputs are already there.

Each step has a fingerprint: a hash of its options and of the files it reads (the hashes the manifest
records). A step is skipped when the manifest holds the same fingerprint and its outputs are intact, so an
interrupted run continues where it stopped and a changed option re-runs that step and everything after it.
Every writer underneath is atomic (staged directories, temp files renamed into place), so an interruption
never leaves a half-written file behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from rich.table import Table

from qconv.artifact import MANIFEST, Artifact, sha256_file
from qconv.console import console
from qconv.errors import GateFailed, QconvError
from qconv.pipeline.recipe import OptimizeStage, Recipe, ValidateStep, load_recipe, recipe_to_dict

STEP_KINDS = ("export", "optimize", "quantize", "validate", "fallback", "card", "publish")
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


@dataclass
class RunOptions:
    offline: bool = False
    data_dir: Path | None = None
    output: Path = Path("artifacts")
    only: str | None = None
    dry_run: bool = False
    model: str | None = None  # a local copy of the recipe's model (offline machines)
    publish: bool = False


@dataclass
class Context:
    recipe: Recipe
    options: RunOptions
    target: Path
    art: Artifact | None = None
    ran: list[str] = field(default_factory=list)

    def where(self, key: str) -> str:
        line = self.recipe.lines.get(key)
        return f"{self.recipe.path}:{line}" if line else str(self.recipe.path)

    def fingerprints(self) -> dict[str, str]:
        return self.art.manifest.get("recipe", {}).get("steps", {}) if self.art else {}

    def record(self, step_id: str, fingerprint: str) -> None:
        entry = self.art.manifest.setdefault("recipe", {})
        entry.update(recipe_identity(self.recipe))
        entry.setdefault("steps", {})[step_id] = fingerprint
        self.art.save()

    def variant_hashes(self, variant: str) -> dict[str, str] | None:
        """The recorded hashes of a variant's graph and external data (None: the variant is not there yet)."""
        if not self.art or variant not in self.art.variants:
            return None
        hashes = {rel: self.art.files.get(rel) for rel in self.art.variant_files(variant)}
        return hashes if all(hashes.values()) else None

    def variant_build(self, variant: str) -> dict | None:
        """What identifies one build of a variant: its files' hashes and the build's id (a rebuild, even a
        byte-identical one, re-runs what was measured on the variant)."""
        hashes = self.variant_hashes(variant)
        return {"files": hashes, "build_id": self.art.variants[variant].get("build_id")} if hashes else None

    def intact(self, hashes: dict[str, str] | None) -> bool:
        """The files exist and still have the hashes their stages recorded."""
        if not hashes or not self.art:
            return False
        return all(self.art.files.get(rel) == digest for rel, digest in hashes.items()) and not self.art.changed_files(
            list(hashes)
        )

    def reports_intact(self, *rels: str) -> bool:
        """Reports exist with their recorded hashes (a report replaced with junk is made again)."""
        return bool(self.art) and all(rel in self.art.files for rel in rels) and not self.art.changed_files(list(rels))


def recipe_identity(recipe: Recipe) -> dict:
    return {
        "name": recipe.name,
        "file": recipe.path.name if recipe.path else None,
        "sha256": sha256_file(recipe.path) if recipe.path else None,
        "definition": recipe_to_dict(recipe),
    }


def digest(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


class Step:
    kind: ClassVar[str]

    @property
    def id(self) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        return self.id

    def fingerprint(self, ctx: Context) -> str | None:
        """None when the inputs do not exist yet (an earlier step will make them)."""
        raise NotImplementedError

    def done(self, ctx: Context, fingerprint: str) -> bool:
        raise NotImplementedError

    def run(self, ctx: Context) -> None:
        raise NotImplementedError


@dataclass
class ExportStep(Step):
    kind: ClassVar[str] = "export"
    recipe: Recipe = None
    options: RunOptions = None

    @property
    def id(self) -> str:
        return "export"

    def describe(self) -> str:
        return f"export {self.recipe.task} from {model_label(self.recipe, self.options)}"

    def fingerprint(self, ctx: Context) -> str:
        return digest({"source": source_identity(ctx.recipe, ctx.options), "export": recipe_to_dict(ctx.recipe.export)})

    def done(self, ctx: Context, fingerprint: str) -> bool:
        return ctx.fingerprints().get(self.id) == fingerprint and ctx.intact(ctx.variant_hashes("model"))

    def run(self, ctx: Context) -> None:
        recipe, export = ctx.recipe, ctx.recipe.export
        source = str(source_path(recipe, ctx.options))
        revision = None if ctx.options.model else recipe.model.revision
        common = {"revision": revision, "external_data": export.external_data, "overwrite": True}
        if export.opset is not None:
            common["opset"] = export.opset
        if recipe.task == "embedding":
            from qconv.convert.export import export_embedding

            export_embedding(source, ctx.target, pooling=export.pooling, normalize=export.normalize, **common)
        else:
            from qconv.convert.reranker_export import export_reranker

            export_reranker(source, ctx.target, instruction=export.instruction, max_length=export.max_length, **common)
        ctx.art = Artifact(ctx.target)


@dataclass
class VariantStep(Step):
    """An optimize or quantize stage: one new variant from a source variant."""

    stage: object = None  # OptimizeStage, or the quantize mode's config
    variant: str = ""

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "optimize" if isinstance(self.stage, OptimizeStage) else "quantize"

    @property
    def id(self) -> str:
        return f"{self.kind}:{self.variant}"

    def describe(self) -> str:
        how = f"level {self.stage.level}, {self.stage.target}" if self.kind == "optimize" else self.stage.mode
        return f"{self.kind} {self.stage.source} -> {self.variant} ({how})"

    def fingerprint(self, ctx: Context) -> str | None:
        inputs = ctx.variant_hashes(self.stage.source)
        return digest({"stage": recipe_to_dict(self.stage), "inputs": inputs}) if inputs else None

    def done(self, ctx: Context, fingerprint: str) -> bool:
        return ctx.fingerprints().get(self.id) == fingerprint and ctx.intact(ctx.variant_hashes(self.variant))

    def run(self, ctx: Context) -> None:
        stage = self.stage
        if self.kind == "optimize":
            from qconv.convert.optimize import optimize

            optimize(ctx.art, stage.level, target=stage.target, source_variant=stage.source, overwrite=True)
        else:
            from qconv.convert.quantize import quantize

            quantize(ctx.art, stage.mode, options=stage, overwrite=True)


@dataclass
class ValidateVariantStep(Step):
    kind: ClassVar[str] = "validate"
    step: ValidateStep = None
    variant: str = ""

    @property
    def id(self) -> str:
        return f"validate:{self.variant}:{self.step.dataset}"

    def describe(self) -> str:
        limit = f", first {self.step.limit}" if self.step.limit else ""
        return f"validate {self.variant} on {self.step.dataset}{limit}"

    def fingerprint(self, ctx: Context) -> str | None:
        inputs = ctx.variant_build(self.variant)
        if not inputs:
            return None
        data = data_file(ctx, self.step.dataset)
        options = {k: v for k, v in recipe_to_dict(self.step).items() if k != "variants"}
        return digest(
            {
                "inputs": inputs,
                "options": options,
                "data": sha256_file(data) if data else None,
                "offline": ctx.options.offline,
            }
        )

    def done(self, ctx: Context, fingerprint: str) -> bool:
        summary = ctx.art.manifest.get("validation", {}).get(self.variant, {}).get(self.step.dataset)
        return (
            ctx.fingerprints().get(self.id) == fingerprint
            and summary is not None
            and ctx.reports_intact(summary["report"])
        )

    def run(self, ctx: Context) -> None:
        from qconv.validate.datasets import dataset_spec
        from qconv.validate.runner import validate_dataset
        from qconv.validate.thresholds import GATES, gate_keywords

        step, gates = self.step, self.step.thresholds
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
        if step.batch_size:
            options["batch_size"] = step.batch_size
        if step.bootstrap is not None:
            options["bootstrap"] = step.bootstrap
        kind = dataset_spec(step.dataset).kind
        options.update(gate_keywords({g.name: getattr(gates, g.name) for g in GATES.values() if kind in g.kinds}))
        if step.max_candidates and kind == "rerank":  # candidates per query: only ranking datasets have them
            options["max_candidates"] = step.max_candidates
        validate_dataset(ctx.art, step.dataset, **options)


@dataclass
class FallbackVariantStep(Step):
    kind: ClassVar[str] = "fallback"
    providers: list[str] = None
    variant: str = ""

    @property
    def id(self) -> str:
        return f"fallback:{self.variant}"

    def describe(self) -> str:
        return f"fallback report for {self.variant} on {', '.join(self.providers)}"

    def fingerprint(self, ctx: Context) -> str | None:
        inputs = ctx.variant_hashes(self.variant)
        return digest({"inputs": inputs, "providers": self.providers}) if inputs else None

    def done(self, ctx: Context, fingerprint: str) -> bool:
        report = f"reports/fallback-{self.variant}.json"
        return ctx.fingerprints().get(self.id) == fingerprint and ctx.reports_intact(report)

    def run(self, ctx: Context) -> None:
        from qconv.validate.placement import fallback_report

        fallback_report(ctx.art, variants=[self.variant], providers=self.providers)


@dataclass
class CardStep(Step):
    kind: ClassVar[str] = "card"

    @property
    def id(self) -> str:
        return "card"

    def describe(self) -> str:
        return "model card (README.md)"

    def fingerprint(self, ctx: Context) -> str | None:
        if not ctx.art:
            return None
        steps = {k: v for k, v in ctx.fingerprints().items() if k not in ("card", "publish")}
        return digest(steps)

    def done(self, ctx: Context, fingerprint: str) -> bool:
        return ctx.fingerprints().get(self.id) == fingerprint and ctx.reports_intact("README.md")

    def run(self, ctx: Context) -> None:
        from qconv.hub.card import write_model_card

        write_model_card(ctx.art)


@dataclass
class PublishStep(Step):
    kind: ClassVar[str] = "publish"
    recipe: Recipe = None

    @property
    def id(self) -> str:
        return "publish"

    def describe(self) -> str:
        target = self.recipe.publish
        return f"publish to the Hub: {target.repo_id}" + (f" ({target.revision})" if target.revision else "")

    def fingerprint(self, ctx: Context) -> str | None:
        return digest(ctx.fingerprints()) if ctx.art else None

    def done(self, ctx: Context, fingerprint: str) -> bool:
        return False  # publishing is explicit: asked for, it always uploads

    def run(self, ctx: Context) -> None:
        from qconv.hub.publish import publish_to_hub

        target = ctx.recipe.publish
        publish_to_hub(ctx.art, target.repo_id, revision=target.revision, private=target.private)


def produced_variant(stage) -> str:
    if isinstance(stage, OptimizeStage):
        from qconv.convert.optimize import optimized_variant

        return optimized_variant(stage.level, stage.target, stage.source)
    from qconv.convert.quantize import quantized_variant

    return quantized_variant(stage)


def model_label(recipe: Recipe, options: RunOptions) -> str:
    if options.model:
        return options.model
    if recipe.model.testmodel:
        tm = recipe.model.testmodel
        return f"built-in random Qwen3 ({tm.shape}" + (f", {tm.layers} layers)" if tm.layers else ")")
    return recipe.model.id + (f"@{recipe.model.revision}" if recipe.model.revision else "")


def source_identity(recipe: Recipe, options: RunOptions) -> dict:
    """What identifies the source model: content hash (local), id + revision (Hub), or the test-model spec."""
    from qconv.convert.source import content_hash

    if recipe.model.testmodel and not options.model:
        return {"testmodel": dataclasses.asdict(recipe.model.testmodel), "task": recipe.task}
    local = Path(options.model or recipe.model.id).expanduser()
    if local.is_dir():
        return {"local": content_hash(local.resolve())}
    # An unpinned Hub id is taken as unchanged: pin 'revision' to re-export when the Hub moves.
    return {"hub": recipe.model.id, "revision": recipe.model.revision}


def source_path(recipe: Recipe, options: RunOptions) -> str | Path:
    if options.model:
        return options.model
    if recipe.model.testmodel:
        from qconv.testing.testmodels import cached_test_model

        tm = recipe.model.testmodel
        return cached_test_model(recipe.task, tm.shape, layers=tm.layers, seed=tm.seed)
    return recipe.model.id


def data_file(ctx: Context, dataset: str) -> Path | None:
    """``--data-dir``: the file named after the dataset (``sts12.jsonl``, ``bq.parquet``, ``msmarco_*.jsonl``)."""
    data_dir = ctx.options.data_dir
    if data_dir is None:
        return None
    for pattern in (dataset, f"{dataset}_*", f"{dataset}-*"):
        for suffix in DATA_SUFFIXES:
            found = sorted(Path(data_dir).glob(pattern + suffix))
            if found:
                return found[0]
    suffixes = "/".join(DATA_SUFFIXES)
    raise QconvError(f"--data-dir {data_dir} has no file for dataset '{dataset}' (expected {dataset}{suffixes})")


def plan(recipe: Recipe, options: RunOptions) -> list[Step]:
    """The steps of a recipe, in order; checks every variant reference against what earlier stages make."""
    steps: list[Step] = [ExportStep(recipe=recipe, options=options)]
    variants = ["model"]
    for i, stage in enumerate(recipe.stages):
        if stage.source not in variants:
            line = recipe.lines.get(f"stages[{i}].from") or recipe.lines.get(f"stages[{i}]")
            raise QconvError(
                f"{recipe.path}:{line}: stages[{i}].from: variant '{stage.source}' is not made by an earlier stage "
                f"(available: {', '.join(variants)})"
            )
        variant = produced_variant(stage)
        if variant in variants:
            raise QconvError(f"{recipe.path}:{recipe.lines.get(f'stages[{i}]')}: stages[{i}] makes '{variant}' again")
        variants.append(variant)
        steps.append(VariantStep(stage=stage, variant=variant))
    for i, step in enumerate(recipe.validate):
        for variant in step.variants or variants:
            if variant not in variants:
                line = recipe.lines.get(f"validate[{i}].variants")
                raise QconvError(
                    f"{recipe.path}:{line}: validate[{i}].variants: '{variant}' is not made by this recipe "
                    f"({', '.join(variants)})"
                )
            steps.append(ValidateVariantStep(step=step, variant=variant))
    if recipe.fallback:
        for variant in recipe.fallback.variants or variants:
            if variant not in variants:
                line = recipe.lines.get("fallback.variants")
                raise QconvError(f"{recipe.path}:{line}: fallback.variants: '{variant}' is not made by this recipe")
            steps.append(FallbackVariantStep(providers=recipe.fallback.providers, variant=variant))
    if recipe.card:
        steps.append(CardStep())
    if recipe.publish:
        steps.append(PublishStep(recipe=recipe))
    return steps


def _selected(step: Step, options: RunOptions) -> bool:
    if options.only:
        return step.kind == options.only
    return step.kind != "publish" or options.publish


def _open_existing(ctx: Context) -> None:
    if not (ctx.target / MANIFEST).is_file():
        return
    art = Artifact(ctx.target)
    made_by = art.manifest.get("recipe", {}).get("name")
    if made_by != ctx.recipe.name:
        origin = f"recipe '{made_by}'" if made_by else "a plain 'qconv export'"
        raise QconvError(f"{ctx.target} was made by {origin}, not by recipe '{ctx.recipe.name}': pass another --output")
    ctx.art = art


def run_recipe(path: str | Path, options: RunOptions | None = None) -> dict:
    """Run (or with ``dry_run`` only plan) a recipe; returns the plan statuses and the validation summary."""
    options = options or RunOptions()
    if options.only and options.only not in STEP_KINDS:
        raise QconvError(f"unknown stage '{options.only}' for --only (choose {', '.join(STEP_KINDS)})")
    if options.model and not Path(options.model).expanduser().is_dir():
        raise QconvError(f"--model {options.model} is not a directory (pass a local copy of the recipe's model)")
    recipe = load_recipe(path)
    if options.publish and not recipe.publish and options.only in (None, "publish"):
        raise QconvError(f"{recipe.path}: --publish needs a 'publish' section (repo_id) in the recipe")
    if options.only == "publish" and not recipe.publish:
        raise QconvError(f"{recipe.path}: no 'publish' section, nothing to publish")
    if options.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"  # no silent network attempts: local files and the cache only
    ctx = Context(recipe, options, Path(options.output) / recipe.name)
    _open_existing(ctx)
    steps = plan(recipe, options)
    if options.dry_run:
        return {"recipe": recipe.name, "artifact": str(ctx.target), "plan": _dry_run(ctx, steps)}
    chosen = [s for s in steps if _selected(s, options)]
    statuses = []
    console.print(f"[bold]recipe {recipe.name}[/] -> {ctx.target} ({len(chosen)} steps)")
    for number, step in enumerate(chosen, 1):
        fingerprint = step.fingerprint(ctx)
        if fingerprint is None:
            raise QconvError(f"{step.describe()}: its input is missing; run the earlier stages first (without --only)")
        label = f"[{number}/{len(chosen)}] {step.describe()}"
        if step.done(ctx, fingerprint):
            console.print(f"[dim]{label}: up to date, skipped[/]")
            statuses.append({"step": step.id, "status": "skipped"})
            continue
        console.rule(label)
        step.run(ctx)
        ctx.record(step.id, step.fingerprint(ctx) if step.kind == "card" else fingerprint)
        ctx.ran.append(step.id)
        statuses.append({"step": step.id, "status": "ran"})
    summary = validation_summary(ctx, steps)
    result = {"recipe": recipe.name, "artifact": str(ctx.target), "steps": statuses, "validation": summary}
    if ctx.art:
        write_summary(ctx, result)
    failed = [f"{row['variant']} on {row['dataset']}" for row in summary if not row["passed"]]
    if failed:
        raise GateFailed(f"recipe {recipe.name}: validation failed for {', '.join(failed)} (see {ctx.target}/reports)")
    return result


def _dry_run(ctx: Context, steps: list[Step]) -> list[dict]:
    rows = []
    rebuilt: set[str] = set()  # variants an earlier step will (re)write: what reads them runs after it
    runs = False
    for step in steps:
        reads = step.stage.source if isinstance(step, VariantStep) else getattr(step, "variant", None)
        waits = "model" in rebuilt or reads in rebuilt or (step.kind in ("card", "publish") and runs)
        if not _selected(step, ctx.options):
            status = "not selected" + (" (pass --publish)" if step.kind == "publish" else "")
        elif waits:
            status = "run (after the steps before it)"
        else:
            fingerprint = step.fingerprint(ctx)
            status = "up to date: skip" if fingerprint and step.done(ctx, fingerprint) else "run"
        if status.startswith("run"):
            runs = True
            if step.kind == "export":
                rebuilt.add("model")
            elif isinstance(step, VariantStep):
                rebuilt.add(step.variant)
        rows.append({"step": step.id, "action": step.describe(), "status": status})
    table = Table(title=f"plan: recipe {ctx.recipe.name} -> {ctx.target}")
    for column in ("#", "step", "status"):
        table.add_column(column)
    for i, row in enumerate(rows, 1):
        table.add_row(str(i), row["action"], row["status"])
    console.print(table)
    return rows


def summary_markdown(result: dict) -> str:
    """The variants x datasets table as Markdown (``reports/recipe-summary.md``; CI's job summary)."""
    rows = result["validation"]
    lines = [f"## recipe {result['recipe']}", ""]
    if not rows:
        return "\n".join(lines + ["No validation in this recipe.", ""])
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    lines += ["| variant | " + " | ".join(datasets) + " |", "|---" * (len(datasets) + 1) + "|"]
    for variant in dict.fromkeys(r["variant"] for r in rows):
        cells = []
        for dataset in datasets:
            r = next((r for r in rows if r["variant"] == variant and r["dataset"] == dataset), None)
            cells.append(_cell(r, markdown=True) if r else "")
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""])


def _cell(r: dict, markdown: bool = False) -> str:
    if markdown:
        mark = "pass" if r["passed"] else "**FAIL**"
    else:
        mark = "[green]pass[/]" if r["passed"] else "[red]FAIL[/]"
    return f"{mark} {r['metric']} {r['candidate']:.4f} ({r['delta']:+.1e})"


def write_summary(ctx: Context, result: dict) -> None:
    from qconv.artifact import write_json_atomic, write_text_atomic

    with ctx.art.staged_outputs() as stage:
        write_json_atomic(stage / "recipe-summary.json", result)
        write_text_atomic(stage / "recipe-summary.md", summary_markdown(result))


def validation_summary(ctx: Context, steps: list[Step]) -> list[dict]:
    """Every variant x dataset the recipe validates, from the manifest; printed as one table."""
    if not ctx.art:
        return []
    results = ctx.art.manifest.get("validation", {})
    rows = []
    for step in steps:
        if isinstance(step, ValidateVariantStep):
            entry = results.get(step.variant, {}).get(step.step.dataset)
            if entry:
                rows.append({"variant": step.variant, **entry})
    if not rows:
        return rows
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    table = Table(title=f"validation: {ctx.recipe.name}")
    table.add_column("variant")
    for dataset in datasets:
        table.add_column(dataset)
    for variant in dict.fromkeys(r["variant"] for r in rows):
        cells = []
        for dataset in datasets:
            r = next((r for r in rows if r["variant"] == variant and r["dataset"] == dataset), None)
            cells.append(_cell(r) if r else "")
        table.add_row(variant, *cells)
    console.print(table)
    return rows
