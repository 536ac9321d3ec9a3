"""The ``qconv`` command line: parsing and printing only; every command calls the Python API."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

import click

from qconv.errors import QconvError, one_line
from qconv.pipeline.export_cli import ExportGroup


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="qconv")
def cli() -> None:
    """Turn Qwen3 embedding and reranker models into fast, verified ONNX artifacts."""


@cli.group(cls=ExportGroup)
def export() -> None:
    """Export a model to an ONNX artifact: one subcommand per task."""


class _GeneratedCommand(click.Command):
    """A command whose configuration options are generated (``generated``: a callable giving the click options)
    each time it is parsed or its help shown, so a task, mode or field registered after import (a plugin, a
    test) has its flags too. They go after the ARTIFACT argument; the command's own switches are plain."""

    def __init__(self, *args, generated, **kwargs):
        super().__init__(*args, **kwargs)
        self.generated = generated

    def get_params(self, ctx):
        params = super().get_params(ctx)
        return params[:1] + self.generated() + params[1:]


def _mode_params() -> list:
    from qconv.pipeline.quantize_cli import mode_params

    return mode_params()


@cli.command(cls=_GeneratedCommand, generated=_mode_params)
@click.argument("artifact", required=False)
@click.option("--validate", "datasets", multiple=True, help="Validate the new variant on this dataset (repeatable).")
@click.option("--limit", type=int, help="With --validate: evaluate only the first N pairs/queries.")
@click.option(
    "--bootstrap", type=int, help="With --validate: bootstrap resamples for the deltas' 95% intervals, 0 = off [1000]."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing variant of the same name.")
@click.pass_context
def quantize(ctx, artifact, datasets, limit, bootstrap, overwrite, **mode_options) -> None:
    """Write a quantized variant (onnx/model_<variant>.onnx) and record it in the manifest."""
    from qconv.artifact import find_artifact
    from qconv.convert.quantize import quantize as run_quantize
    from qconv.pipeline.quantize_cli import config_from_cli
    from qconv.validate.runner import check_validation_request

    config = config_from_cli(ctx)  # every option against the mode's declaration, before anything is opened
    art = find_artifact(artifact)
    if limit is not None and not datasets:
        raise QconvError("--limit applies only with --validate")
    for dataset in datasets:  # every argument is checked before the variant is written
        check_validation_request(art, dataset, limit)
    if bootstrap is not None:
        from qconv.validate.runner import check_bootstrap

        check_bootstrap(bootstrap)
    variant, _ = run_quantize(art, config.mode, options=config, overwrite=overwrite)
    failed = []
    for dataset in datasets:
        extra = {} if bootstrap is None else {"bootstrap": bootstrap}
        report = _validate(art, dataset, variant=variant, limit=limit, **extra)
        if not report["passed"]:
            failed.append(f"{dataset}: {'; '.join(report['failures'])}")
    if failed:
        from qconv.errors import GateFailed

        raise GateFailed(f"validation failed for {variant}: {' | '.join(failed)}")


class _DeclaredCommand(_GeneratedCommand):
    """A command whose configuration options come from a dataclass of ``qconv.pipeline.configs`` (``config``,
    looked up by name when used: a field added to it is a flag, with its help, default and checks)."""

    def __init__(self, *args, config: str, optional: tuple[str, ...] = (), **kwargs):
        super().__init__(*args, generated=self._params, **kwargs)
        self.config_name, self.optional = config, optional

    def config(self) -> type:
        from qconv.pipeline import configs

        return getattr(configs, self.config_name)

    def _params(self) -> list:
        from qconv.pipeline.options import click_options

        return click_options(self.config(), optional=self.optional)

    def config_from(self, ctx, what: str):
        from qconv.pipeline.options import config_from_cli

        return config_from_cli(ctx, self.config(), what)


@cli.command(cls=_DeclaredCommand, config="OptimizeStage")
@click.argument("artifact", required=False)
# A behaviour switch, not configuration: plain.
@click.option("--overwrite", is_flag=True, help="Replace an existing variant of the same level.")
@click.pass_context
def optimize(ctx, artifact, overwrite, **declared) -> None:
    """Fuse the graph (O1-O4) into onnx/model_<level>.onnx; record passes and op counts in the manifest."""
    from qconv.artifact import find_artifact
    from qconv.convert.optimize import optimize as run_optimize

    config = ctx.command.config_from(ctx, "optimize")  # checked before the artifact is opened
    art = find_artifact(artifact)
    run_optimize(art, config.level, target=config.target, source_variant=config.source, overwrite=overwrite)


@cli.command(cls=_DeclaredCommand, config="FallbackCommand")
@click.argument("artifact", required=False)
# Output and behaviour switches, not configuration (the record holds the variants they chose): plain.
@click.option("--all-variants", is_flag=True, help="Analyse every variant in the manifest.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON report(s) on stdout.")
@click.pass_context
def fallback(ctx, artifact, all_variants, as_json, **declared) -> None:
    """Which nodes each execution provider runs and which fall back to the CPU (static; --runtime measures)."""
    import json

    from qconv.artifact import find_artifact
    from qconv.console import console_on_stderr
    from qconv.validate.placement import fallback_report

    with console_on_stderr(as_json):
        config = ctx.command.config_from(ctx, "fallback")
        art = find_artifact(artifact)
        if all_variants and config.variants:
            raise QconvError("pass --variant or --all-variants, not both")
        chosen = sorted(art.variants) if all_variants else config.variants or None
        results = fallback_report(art, variants=chosen, providers=config.providers, runtime=config.runtime)
    if as_json:
        click.echo(json.dumps(results, indent=2))


@cli.command("bench", cls=_DeclaredCommand, config="BenchStep")
@click.argument("artifact", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the JSON results on stdout.")
@click.pass_context
def bench_cmd(ctx, artifact, as_json, **options) -> None:
    """Measure every variant (and PyTorch) in separate processes; writes reports/bench.{json,md,png}."""
    import json

    from qconv.artifact import find_artifact
    from qconv.bench.runner import bench
    from qconv.console import console_on_stderr

    config = ctx.command.config_from(ctx, "bench")  # every value against the declaration, before any work
    with console_on_stderr(as_json):
        result = bench(find_artifact(artifact), config)
    if as_json:
        click.echo(json.dumps(result, indent=2))


@cli.command("card")
@click.argument("artifact", required=False)
@click.option("--repo-id", help="Hub repository the usage snippets load [default: where it was last published].")
@click.option("--base-model", help="Hub id of the source model, for a local export (remembered in the manifest).")
def card_cmd(artifact, repo_id, base_model) -> None:
    """Write the artifact's Hugging Face model card (README.md) from its manifest and reports."""
    from qconv.artifact import find_artifact
    from qconv.console import console
    from qconv.hub.card import write_model_card

    path = write_model_card(find_artifact(artifact), model_id=repo_id, base_model=base_model)
    console.print(f"[green]model card[/] {path}")


@cli.command("publish", cls=_DeclaredCommand, config="PublishTarget", optional=("repo_id",))
@click.argument("artifact", required=False)
# Where to and how: behaviour switches of this command, not the recipe's publish target: plain.
@click.option("--to", "to", type=click.Path(), help="Write a clean publishable copy here instead (DIR or .tar.gz).")
@click.option("--dry-run", is_flag=True, help="List exactly what would be published, with sizes; upload nothing.")
@click.option("--force", is_flag=True, help="Publish even if a variant failed validation or has none.")
@click.option("--archive", is_flag=True, help="--to: write a .tar.gz archive.")
@click.option("--overwrite", is_flag=True, help="--to: replace an existing directory or archive.")
@click.pass_context
def publish_cmd(ctx, artifact, to, dry_run, force, archive, overwrite, **declared) -> None:
    """Upload an artifact to the Hugging Face Hub, or write a clean publishable copy (--to)."""
    from dataclasses import fields

    from qconv.artifact import find_artifact
    from qconv.hub.publish import publish_to_dir, publish_to_hub
    from qconv.pipeline.options import flag_of, given_values

    config_type = ctx.command.config()
    given = given_values(ctx, [f.name for f in fields(config_type)])
    repo_id = given.get("repo_id")
    if bool(repo_id) == bool(to):
        raise QconvError("pass --repo-id ORG/NAME (upload to the Hub) or --to DIR (a local copy), not both")
    hub_only = [flag_of(f) for f in fields(config_type) if f.name != "repo_id" and given.get(f.name)]
    dir_only = [flag for flag, on in (("--archive", archive), ("--overwrite", overwrite)) if on]
    for flags, needed in ((hub_only, "--repo-id"), (dir_only, "--to")):
        if flags and not (repo_id if needed == "--repo-id" else to):
            raise QconvError(f"{', '.join(flags)} {'applies' if len(flags) == 1 else 'apply'} only with {needed}")
    target = ctx.command.config_from(ctx, "publish") if repo_id else None  # every value checked before any work
    art = find_artifact(artifact)
    if target is not None:
        options = dict(revision=target.revision, private=target.private, dry_run=dry_run, force=force)
        publish_to_hub(art, target.repo_id, **options)
    else:
        publish_to_dir(art, to, force=force, archive=archive, overwrite=overwrite, dry_run=dry_run)


@cli.group()
def testmodel() -> None:
    """Random-weight checkpoints of the published Qwen3 shapes (for performance work without the Hub)."""


@testmodel.command("create")
@click.argument("out", type=click.Path(file_okay=False))
@click.option(
    "--shape", "shape_name", default="qwen3-0.6b", show_default=True, help="qwen3-0.6b | qwen3-4b | qwen3-8b."
)
@click.option("--kind", default="embedding", show_default=True, help="embedding | reranker.")
@click.option("--layers", type=int, help="Fewer decoder layers, for quick runs.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--outliers",
    is_flag=True,
    help="Plant trained Qwen3's activation outliers (massive activations, outlier channels).",
)
def testmodel_create(out, shape_name, kind, layers, seed, outliers) -> None:
    """Write a random-weight Qwen3 checkpoint with the real Qwen vocabulary (no download)."""
    from qconv.console import console
    from qconv.testing.testmodels import OUTLIERS_NOTE, RANDOM_WEIGHTS_NOTE, create_test_model

    with console.status(f"creating {shape_name} {kind} ({RANDOM_WEIGHTS_NOTE})"):
        path = create_test_model(out, shape_name, kind, layers=layers, seed=seed, outliers=outliers)
    note = f"{RANDOM_WEIGHTS_NOTE}; {OUTLIERS_NOTE}" if outliers else RANDOM_WEIGHTS_NOTE
    console.print(f"[green]created[/] {path} — {shape_name} {kind}, [bold yellow]{note}[/]")


def _validate(art, dataset: str, **options) -> dict:
    from qconv.validate.runner import validate_dataset

    return validate_dataset(art, dataset, **options)


def _validate_params() -> list:
    from qconv.pipeline.validate_cli import validate_params

    return validate_params()


@cli.command(cls=_GeneratedCommand, generated=_validate_params)
@click.argument("artifact", required=False)
@click.option("--json", "as_json", is_flag=True, help="Also print the JSON report on stdout.")
@click.pass_context
def validate(ctx, artifact, as_json, **_options) -> None:
    """Validate an ONNX variant against the PyTorch original (exit 1 when a threshold fails)."""
    from qconv.artifact import find_artifact
    from qconv.console import console_on_stderr
    from qconv.errors import GateFailed
    from qconv.gates import GATES
    from qconv.pipeline.validate_cli import only_for, request_from_cli, task_values
    from qconv.tasks import task_for_dataset_kind
    from qconv.validate.datasets import dataset_spec
    from qconv.validate.report import to_json
    from qconv.validate.runner import check_validation_request

    request, given = request_from_cli(ctx)  # every declared option checked before anything is opened
    datasets = tuple(dict.fromkeys(request.dataset))  # the same dataset twice is one run
    if len(datasets) > 1 and (request.data_files or request.split):
        raise QconvError("--data-files and --split name one dataset's data: give a single --dataset with them")
    common = dict(
        variant=request.variant,
        data_files=request.data_files,
        split=request.split,
        limit=request.limit,
        reference=request.reference,
        providers=request.providers or None,
        instruction=request.instruction,
        bootstrap=request.bootstrap,
        offline=request.offline,
        batch_tokens=request.batch_tokens,
        raise_on_fail=False,
    )
    gates = {name: getattr(request, name) for name in GATES if name in given}
    plans = []
    for dataset in datasets:  # every dataset's arguments are checked before any work
        spec = dataset_spec(dataset)
        # Each gate applies to the dataset kinds whose reports carry its value (qconv.gates.GATES).
        applies = {name: value for name, value in gates.items() if spec.kind in GATES[name].kinds}
        elsewhere = {name: value for name, value in gates.items() if name not in applies}
        task = task_for_dataset_kind(spec.kind)
        # The task-specific options: the task declares its own (and their defaults); the others' are refused.
        others, own = task_values(task, request, given)
        only_for(task.name, dataset, {**others, **elsewhere})
        plans.append((dataset, task, {**own, **applies}))
    reports, failed = [], []
    with console_on_stderr(as_json):
        art = find_artifact(artifact)
        for dataset, _, _ in plans:
            check_validation_request(art, dataset, request.limit)
        for dataset, task, options in plans:
            report = task.validate(art, dataset, **options, **common)
            reports.append(report)
            if not report["passed"]:
                failed.append(f"{dataset}: {'; '.join(report['failures'])}")
    if as_json:
        click.echo(to_json(reports[0] if len(reports) == 1 else reports))
    if failed:
        raise GateFailed(f"validation failed for {request.variant} on {' | '.join(failed)}")


class _OnlyOption(click.Option):
    """``--only``: its help lists the registered stages (qconv.pipeline.stages) when shown, not at import."""

    def get_help_record(self, ctx):
        from qconv.pipeline.stages import stage_kinds

        self.help = f"Only this stage: {'|'.join(stage_kinds())}."
        return super().get_help_record(ctx)


@cli.command("run")
@click.argument("recipe", type=click.Path(dir_okay=False))
@click.option("--offline", is_flag=True, help="No Hub access: local models, --data-dir or the bundled samples.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Dataset files named <dataset>.jsonl/.parquet/.csv.")
@click.option("--output", default="artifacts", show_default=True, type=click.Path(file_okay=False))
@click.option("--only", cls=_OnlyOption, help="Only this stage.")
@click.option("--model", help="A local copy of the recipe's model (instead of its Hub id).")
@click.option("--publish", is_flag=True, help="Also run the recipe's publish step (needs HF_TOKEN).")
@click.option("--dry-run", is_flag=True, help="Print the plan (what runs, what is up to date) and stop.")
def run_cmd(recipe, offline, data_dir, output, only, model, publish, dry_run) -> None:
    """Run a recipe's stages in order, skipping those already done (exit 1 if a validation fails)."""
    from qconv.pipeline.run import RunOptions, run_recipe

    options = RunOptions(
        offline=offline,
        data_dir=Path(data_dir) if data_dir else None,
        output=Path(output),
        only=only,
        dry_run=dry_run,
        model=model,
        publish=publish,
    )
    run_recipe(recipe, options)


@cli.command()
@click.option("--output-root", default="artifacts", show_default=True, type=click.Path(file_okay=False))
@click.option("--task", default="all", show_default=True, help="embedding | reranker | all.")
def demo(output_root, task) -> None:
    """Offline end to end on built-in random Qwen3 models: the bundled recipes demo.yaml and demo-reranker.yaml
    (export, optimize, quantize, validate against PyTorch, fallback report, model card)."""
    from qconv.testing.demo import run_demo

    run_demo(output_root, task=task)


# The machine's state, not a qconv bug: a read-only or full disk, no permission, a quota, a file as a directory.
ENVIRONMENT_ERRNOS = frozenset({errno.EROFS, errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.ENOTDIR})


def environment_error(exc: BaseException) -> OSError | None:
    """The OSError of the environment behind ``exc`` (itself or a cause it was raised from), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in ENVIRONMENT_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _debug() -> bool:
    return bool(os.environ.get("QCONV_DEBUG"))


def _print_traceback(exc: BaseException) -> None:
    import traceback

    traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)  # chained causes included


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors become one line on stderr and exit status 2 (1 for a failed gate)."""
    try:
        cli.main(args=argv, prog_name="qconv", standalone_mode=False)
    except QconvError as exc:
        if _debug() and (exc.__cause__ or exc.__context__):
            _print_traceback(exc)
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"error: {exc.format_message()}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        return 130
    except Exception as exc:  # a bug, not bad input: still one line unless asked for the traceback
        env = environment_error(exc)
        if env is not None:
            if _debug():
                _print_traceback(exc)
            where = env.filename or env.filename2 or "a file qconv was writing"
            click.echo(f"error: {where}: {os.strerror(env.errno)}", err=True)
            return 2
        if _debug():
            raise
        if isinstance(exc, ModuleNotFoundError):
            from qconv.extras import missing_extra_message

            args = argv if argv is not None else sys.argv[1:]
            message = missing_extra_message(exc, next((a for a in args if not a.startswith("-")), None))
            if message:
                click.echo(f"error: {message}", err=True)
                return 2
        click.echo(
            f"error: internal error: {type(exc).__name__}: {one_line(exc)} (set QCONV_DEBUG=1 for the traceback)",
            err=True,
        )
        return 3
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
