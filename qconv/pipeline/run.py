"""``qconv run``: replay a recipe's stages in order, skipping every step whose outputs are already there.

Each step has a fingerprint: a hash of its options and of the files it reads (the hashes the manifest
records). A step is skipped when the manifest holds the same fingerprint and its outputs are intact, so an
interrupted run continues where it stopped and a changed option re-runs that step and everything after it.
Every writer underneath is atomic (staged directories, temp files renamed into place), so an interruption
never leaves a half-written file behind.
"""

from __future__ import annotations

import os
from pathlib import Path

from rich.table import Table

from qconv.artifact import MANIFEST, Artifact
from qconv.console import console
from qconv.errors import GateFailed, QconvError
from qconv.pipeline.context import Context, RunOptions
from qconv.pipeline.recipe import Recipe, load_recipe
from qconv.pipeline.stages import STAGES, Stage, stage_kinds

__all__ = ["Context", "RunOptions", "plan", "run_recipe", "summary_markdown"]


def plan(recipe: Recipe, options: RunOptions) -> list[Stage]:
    """The steps of a recipe, in order; checks every variant reference against what earlier stages make.

    Each registered stage plans its recipe section once, in registration order (the optimize and quantize
    stages share the ``stages:`` list, planned in its own order)."""
    steps: list[Stage] = []
    variants: list[str] = []
    planned: set[str] = set()
    for stage in STAGES.values():
        if stage.section not in planned:
            planned.add(stage.section)
            steps += stage.plan(recipe, options, variants)
    return steps


def _selected(step: Stage, options: RunOptions) -> bool:
    if options.only:
        return step.kind == options.only
    return step.opt_in is None or bool(getattr(options, step.opt_in))


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
    if options.only and options.only not in STAGES:
        raise QconvError(f"unknown stage '{options.only}' for --only (choose {', '.join(stage_kinds())})")
    if options.model and not Path(options.model).expanduser().is_dir():
        raise QconvError(f"--model {options.model} is not a directory (pass a local copy of the recipe's model)")
    recipe = load_recipe(path)
    for stage in STAGES.values():
        stage.check_request(recipe, options)
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
        step.record(ctx, fingerprint)
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


def _dry_run(ctx: Context, steps: list[Stage]) -> list[dict]:
    rows = []
    rebuilt: set[str] = set()  # variants an earlier step will (re)write: what reads them runs after it
    runs = False
    for step in steps:
        reads_rebuilt = any(variant in rebuilt for variant in step.reads_variants)
        waits = "model" in rebuilt or reads_rebuilt or (step.after_all and runs)
        if not _selected(step, ctx.options):
            status = "not selected" + (f" (pass --{step.opt_in})" if step.opt_in else "")
        elif waits:
            status = "run (after the steps before it)"
        else:
            fingerprint = step.fingerprint(ctx)
            status = "up to date: skip" if fingerprint and step.done(ctx, fingerprint) else "run"
        if status.startswith("run"):
            runs = True
            if step.writes:
                rebuilt.add(step.writes)
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


def validation_summary(ctx: Context, steps: list[Stage]) -> list[dict]:
    """Every variant x dataset the recipe validates, from the manifest; printed as one table."""
    if not ctx.art:
        return []
    results = ctx.art.manifest.get("validation", {})
    rows = []
    for step in steps:
        if step.kind == "validate":
            entry = results.get(step.variant, {}).get(step.settings.dataset)
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
