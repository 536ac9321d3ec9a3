"""``qconv validate``'s options, generated from ``ValidateRequest`` (``qconv.pipeline.configs``).

The common options, the gates and every option a registered task's ``validate_options`` declares: its help
says which tasks take it, its default is 'not given' (the task's dataclass holds the defaults), and giving it
for a dataset of another task is an error (``only_for``). Built when the command is parsed or its help shown,
so a task registered after import (a plugin, a test) adds its flags.
"""

from __future__ import annotations

import dataclasses


def task_options() -> dict:
    """Every registered task's validate options by field name (``qconv.pipeline.options.Declared``)."""
    from qconv.pipeline.options import collect
    from qconv.tasks import TASKS

    return collect({name: task.validate_options for name, task in TASKS.items() if task.validate_options})


def validate_params() -> list:
    """One click option per field of ``ValidateRequest``, in declaration order."""
    from qconv.pipeline.configs import validate_request_class
    from qconv.pipeline.options import click_option, collect
    from qconv.tasks import TASKS

    specific = task_options()
    common = collect({"validate": validate_request_class()}, skip=tuple(specific))
    params = []
    for f in dataclasses.fields(validate_request_class()):
        entry, everyone = (specific[f.name], len(TASKS)) if f.name in specific else (common[f.name], 1)
        params.append(click_option(entry, everyone=everyone))
    return params


def request_from_cli(ctx):
    """(the ``ValidateRequest`` of the options given, the names given): declared values checked (exit 2)."""
    from qconv.pipeline.configs import validate_request_class
    from qconv.pipeline.options import check_config, given_values

    tp = validate_request_class()
    given = given_values(ctx, [f.name for f in dataclasses.fields(tp)])
    request = tp(**given)
    # The task options are checked against the declaring task's field for each dataset (task_values).
    check_config(request, "qconv validate", skip=tuple(task_options()))
    return request, set(given)


def only_for(task: str, dataset: str, given: dict) -> None:
    """Options given for a dataset of a task that does not take them: one error naming them all."""
    from qconv.errors import QconvError

    used = [name for name, value in given.items() if value is not None]
    if used:
        flags = ", ".join("--" + name.replace("_", "-") for name in used)
        verb = "does" if len(used) == 1 else "do"
        raise QconvError(f"{flags} {verb} not apply to dataset '{dataset}' ({task} validation)")


def task_values(task, request, given: set[str]) -> tuple[dict, dict]:
    """(the other tasks' options given, the task's own options of ``request``): its own checked against its
    declaration, with its declared defaults where not given."""
    from qconv.pipeline.options import check_config

    declared = {f.name for f in dataclasses.fields(task.validate_options)} if task.validate_options else set()
    others = {name: getattr(request, name) for name in task_options() if name in given and name not in declared}
    if not declared:
        return others, {}
    own = task.validate_options(**{name: getattr(request, name) for name in declared if name in given})
    check_config(own, f"the {task.name} task")
    return others, dataclasses.asdict(own)
