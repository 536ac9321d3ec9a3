"""``qconv export <task>``: one subcommand per registered task, its flags generated from the task's export config.

The command's own inputs (``--model``, ``--output``, ``--revision``, ``--overwrite``) are the same for every task;
everything else is a field of ``Task.export_config`` (``qconv.tasks``), turned into a flag, checked and passed on
by ``qconv.pipeline.options``, the mapping the recipe schema and the card's Reproduce command also read. A task
registered after import (a plugin, a test) has its subcommand too: the group asks the registry when it is used.
"""

from __future__ import annotations

import click

# The command's inputs, not export configuration: the recipe has them in its ``model:`` section or the run.
_COMMAND_INPUTS = ("model", "output", "revision", "overwrite")


def _declared(task) -> dict:
    from qconv.pipeline.options import collect

    declared = collect({task.name: task.export_config})
    clash = set(declared) & set(_COMMAND_INPUTS)
    if clash:
        raise TypeError(f"export option(s) {', '.join(sorted(clash))} of task {task.name} clash with the command's")
    return declared


def _model_option(task) -> click.Option:
    if task.default_model is None:  # no default at all (click 8.3+ takes an explicit None as one)
        return click.Option(["--model", "model"], required=True, help=task.model_help)
    return click.Option(["--model", "model"], default=task.default_model, show_default=True, help=task.model_help)


def export_command(task) -> click.Command:
    """The ``qconv export <task>`` command of a registered task."""
    from qconv.pipeline.options import click_option

    declared = _declared(task)
    params = [
        _model_option(task),
        click.Option(["--output", "output"], type=click.Path(file_okay=False), help=task.output_help),
        *(click_option(entry, everyone=1) for entry in declared.values()),
        click.Option(["--revision", "revision"], help="Hub revision (branch, tag or commit)."),
        click.Option(["--overwrite", "overwrite"], is_flag=True, help="Replace an existing artifact directory."),
    ]

    def run(model, output, revision, overwrite, **_values) -> None:
        config = _config(task, click.get_current_context(), declared)
        task.export(model, output, config, revision=revision, overwrite=overwrite)

    return click.Command(task.name, params=params, callback=run, help=task.export_help or None)


def _config(task, ctx, declared: dict):
    """The task's export config from the flags given (the others keep the config's defaults), checked against
    its declaration before anything is loaded."""
    from qconv.pipeline.options import configure, given_values

    return configure(task.export_config, f"qconv export {task.name}", **given_values(ctx, declared))


class ExportGroup(click.Group):
    """``qconv export``: its subcommands are the registered tasks, read each time the group is used."""

    def list_commands(self, ctx) -> list[str]:
        from qconv.tasks import TASKS

        return list(TASKS)

    def get_command(self, ctx, name: str) -> click.Command | None:
        from qconv.tasks import TASKS

        task = TASKS.get(name)
        return export_command(task) if task is not None else None
