"""Typed stage options: a dataclass field declares a key, its type, default, allowed values and help once.

From those declarations come the recipe schema (``qconv.pipeline.recipe`` reads the same metadata), the CLI
options (``click_options``), the checks of values given on the command line or through the Python API
(``check_value``) and the command lines that reproduce a stored configuration (``to_argv``). No stage
writes a flag, a check or a command line of its own.

Field metadata (``option(...)``): ``help``; ``key``, the recipe key when it is not the field name (``from``);
``flag``, the CLI flag when it is not ``--<key>`` (for a bool whose default is True, the flag that turns it
off, e.g. ``--per-tensor``; for a bool whose default is False, its one 'on' flag, e.g. ``--offline``);
``choices``; ``range`` (low, high or None; a list's items are checked); ``file`` (a file path); ``split`` (a
list option: each CLI value, or a string given through the Python API, is split on this separator, so
``--batch-sizes 1,8`` and ``--batch-sizes 1 --batch-sizes 8`` give the same list, printed back as ``1,8``);
``implied``, the value a default of None stands for (an opset of None is the exporter's 18: shown as the
default, and a stored 18 is not repeated on a command line); ``always``, a flag a command line always spells
out even at its default (``--seq-cls``: a reader should not need to know the default); ``noun``, what an
unknown value is called in messages when not its flag (``unknown optimization level 'O7'``).

A command's options come from one dataclass: ``click_options`` makes its click options (a field without a
default is a required option), ``config_from_cli`` / ``configure`` the checked config from what was given.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal


def option(
    help: str = "",
    *,
    key: str | None = None,
    flag: str | None = None,
    choices: tuple | list | None = None,
    range: tuple[float, float | None] | None = None,
    file: bool = False,
    split: str | None = None,
    implied: Any = None,
    always: bool = False,
    noun: str | None = None,
) -> dict:
    """The metadata of one declared option (see the module docstring)."""
    meta: dict[str, Any] = {"help": help}
    if key:
        meta["key"] = key
    if flag:
        meta["flag"] = flag
    if choices:
        meta["choices"] = tuple(choices)
    if range:
        meta["range"] = range
    if file:
        meta["file"] = True
    if split:
        meta["split"] = split
    if implied is not None:
        meta["implied"] = implied
    if always:
        meta["always"] = True
    if noun:
        meta["noun"] = noun
    return meta


def key_of(f: dataclasses.Field) -> str:
    return f.metadata.get("key", f.name)


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + key_of(f).replace("_", "-")


def public_fields(tp) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(tp) if not f.metadata.get("internal")]


def default_of(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def effective_default(f: dataclasses.Field):
    """The declared default, or the value a default of None stands for (``implied``)."""
    default = default_of(f)
    return f.metadata["implied"] if default is None and "implied" in f.metadata else default


def shape_of(tp) -> tuple[str, Any]:
    """(kind, detail) of a field type without its ``| None``: bool, int, float, str, list (of detail),
    literal (detail: the values)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if len(members) != 1:
            raise TypeError(f"an option is one type or None, not {tp}")
        return shape_of(members[0])
    if origin is Literal:
        return "literal", args
    if origin is list:
        return "list", args[0]
    if tp in (bool, int, float, str):
        return tp.__name__, None
    raise TypeError(f"unsupported option type {tp}")


def _or(values) -> str:
    shown = [str(v) for v in values]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


def check_value(f: dataclasses.Field, tp, value, what: str) -> str | None:
    """Why ``value`` is not allowed for the option (CLI wording: ``--flag VALUE ...``), None when it is; a
    list's items are checked one by one."""
    if value is None:
        return None
    flag = flag_of(f)
    kind, detail = shape_of(tp)
    if kind == "list":
        if f.metadata.get("split") and not value:
            return f"{flag} needs at least one value"
        return next((p for p in (check_value(f, detail, item, what) for item in value) if p), None)
    if kind == "literal" and value not in detail:
        return f"unknown {f.metadata.get('noun') or flag} '{value}' (choose {', '.join(map(str, detail))})"
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        return f"{flag} {value} is not supported for {what} ({_or(choices)})"
    low, high = f.metadata.get("range", (None, None))
    if low is not None and (value < low or (high is not None and value > high)):
        bound = f"{low} to {high}" if high is not None else f"at least {low}"
        return f"{flag} {value} is not supported for {what} ({bound})"
    return None


def to_argv(config, skip: tuple[str, ...] = ()) -> list[str]:
    """The CLI arguments that give ``config``: every option whose value differs from its declared default (and
    those declared ``always``, whatever their value)."""
    hints = typing.get_type_hints(type(config))
    argv: list[str] = []
    for f in public_fields(config):
        if f.name in skip:
            continue
        value, default = getattr(config, f.name), default_of(f)
        if value is None or (value in (default, effective_default(f)) and not f.metadata.get("always")):
            continue
        kind, _ = shape_of(hints[f.name])
        flag = flag_of(f)
        if kind == "bool":
            if default is True and f.metadata.get("flag"):
                argv.append(flag)  # an 'off' flag (--per-tensor) is given exactly when the value is False
            else:
                argv.append(flag if value else "--no-" + flag[2:])
        elif kind == "list" and f.metadata.get("split"):
            argv += [flag, f.metadata["split"].join(map(str, value))]
        elif kind == "list":
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return argv


def check_config(config, what: str, skip: tuple[str, ...] = ()) -> None:
    """Every value of ``config`` (but those in ``skip``) against its declaration (allowed values, ranges), in the
    CLI's words."""
    from qconv.errors import QconvError

    hints = typing.get_type_hints(type(config))
    for f in public_fields(config):
        if f.name in skip:
            continue
        problem = check_value(f, hints[f.name], getattr(config, f.name), what)
        if problem:
            raise QconvError(problem)


_NUMBERS = {int: "integers", float: "numbers"}


def _typed(f: dataclasses.Field, tp, value):
    """A given value as the declared type: a ``split`` list's strings split and each item converted."""
    from qconv.errors import QconvError

    kind, detail = shape_of(tp)
    separator = f.metadata.get("split")
    if kind != "list":
        return value
    items = [value] if isinstance(value, str) else list(value)
    if separator:
        items = [p.strip() for item in items for p in (item.split(separator) if isinstance(item, str) else [item])]
        items = [p for p in items if p != ""]
    if detail in (int, float):
        try:
            items = [detail(p) if isinstance(p, str) else p for p in items]
        except ValueError:
            shown = (separator or " ").join(map(str, value)) if isinstance(value, (list, tuple)) else value
            how = f" separated by '{separator}'" if separator else ""
            raise QconvError(f"{flag_of(f)} takes {_NUMBERS[detail]}{how}, got '{shown}'") from None
    return items


def _spelled(tp, value):
    """A Literal's value given in another case is its declared spelling (``--level o2``)."""
    kind, detail = shape_of(tp)
    if kind == "literal" and isinstance(value, str) and value not in detail:
        same = [d for d in detail if isinstance(d, str) and d.lower() == value.lower()]
        return same[0] if len(same) == 1 else value
    return value


def configure(tp, what: str, **given):
    """An instance of ``tp`` from options given by field name (CLI, Python API), checked against the
    declaration; None means 'not given' (the dataclass has the defaults). A bad value or a missing required
    option is a QconvError naming the flag."""
    from qconv.errors import QconvError

    hints = typing.get_type_hints(tp)
    fields = {f.name: f for f in public_fields(tp)}
    values = {}
    for name, value in given.items():
        if value is None:
            continue
        if name not in fields:
            raise TypeError(f"{what} has no option '{name}' (options: {', '.join(fields)})")
        values[name] = _spelled(hints[name], _typed(fields[name], hints[name], value))
    missing = [flag_of(f) for f in fields.values() if default_of(f) is dataclasses.MISSING and f.name not in values]
    if missing:
        raise QconvError(f"missing option {', '.join(missing)}")
    config = tp(**values)
    check_config(config, what)
    return config


def from_data(tp, data: dict, **fixed):
    """An instance of ``tp`` from stored data (a manifest record): keys it does not declare are ignored."""
    names = {f.name for f in public_fields(tp)}
    by_key = {key_of(f): f.name for f in public_fields(tp)}
    values = {by_key.get(k, k): v for k, v in data.items() if by_key.get(k, k) in names}
    values.update(fixed)
    return tp(**values)


# -- CLI ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Declared:
    """One CLI option and the configurations that declare it (a flag several quantization modes share)."""

    field: dataclasses.Field
    kind: str
    item: Any = None  # a list's item type, a literal's values
    owners: list[tuple[str, Any]] = dataclasses.field(default_factory=list)  # (owner name, its default)
    helps: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # help text -> owners


def collect(configs: dict[str, type], skip: tuple[str, ...] = ()) -> dict[str, Declared]:
    """Every option of ``configs`` (owner name -> dataclass) by field name, with the owners declaring it."""
    declared: dict[str, Declared] = {}
    for owner, tp in configs.items():
        hints = typing.get_type_hints(tp)
        for f in public_fields(tp):
            if f.name in skip:
                continue
            kind, detail = shape_of(hints[f.name])
            entry = declared.setdefault(f.name, Declared(f, kind, detail if kind in ("list", "literal") else None))
            if entry.kind != kind or flag_of(entry.field) != flag_of(f):
                raise TypeError(f"option '{f.name}' of {owner} clashes with the same option of another owner")
            if kind == "literal":  # owners may allow different values: the flag shows them all
                entry.item = tuple(dict.fromkeys((*entry.item, *detail)))
            entry.owners.append((owner, effective_default(f)))
            entry.helps.setdefault(f.metadata.get("help", ""), []).append(owner)
    return declared


def _shown_default(value, separator: str | None = None) -> str | None:
    if value is None or value == [] or value is dataclasses.MISSING:
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if separator and isinstance(value, list):
        return separator.join(map(str, value))
    return str(value)


def help_of(entry: Declared, everyone: int) -> str:
    """The help of a shared option: each owner group's text, prefixed by the owners when not everyone has it."""
    shared = len(entry.owners) == everyone
    parts = []
    for text, owners in entry.helps.items():
        parts.append(text if shared and len(entry.helps) == 1 else f"{'/'.join(owners)}: {text}")
    text = " ".join(parts) if len(parts) == 1 else "; ".join(p.rstrip(".") for p in parts) + "."
    defaults = {}
    for owner, default in entry.owners:
        defaults.setdefault(_shown_default(default, entry.field.metadata.get("split")), []).append(owner)
    if entry.kind == "bool" and entry.field.metadata.get("flag"):
        return text  # an 'off' flag: the default is its absence
    if len(defaults) == 1:
        (shown,) = defaults
        return f"{text} [default: {shown}]" if shown else text
    groups = [f"{shown} for {'/'.join(owners)}" for shown, owners in defaults.items() if shown]
    return f"{text} [default: {'; '.join(groups)}]" if groups else text


def click_option(entry: Declared, everyone: int, required: bool | None = None):
    """A ``click.Option`` for a declared option; its default is None ('not given'): the config has the defaults.
    A list option is repeatable; with ``split`` metadata each value may also be a separated list."""
    import click

    f, kind = entry.field, entry.kind
    flag, help_text = flag_of(f), help_of(entry, everyone)
    if required is None:
        required = all(default is dataclasses.MISSING for _, default in entry.owners)
    if kind == "bool":
        if entry.field.metadata.get("flag"):
            # given: the declared default's opposite (--per-tensor gives per_channel=False)
            return click.Option(
                [flag, f.name], is_flag=True, flag_value=not default_of(f), default=None, help=help_text
            )
        return click.Option([f"{flag}/--no-{flag[2:]}", f.name], default=None, help=help_text)
    if kind == "list":
        separator = f.metadata.get("split")
        item = {int: "INTEGER", float: "FLOAT"}.get(entry.item, "TEXT")
        metavar = f"{item}{separator}..." if separator else None
        split = _splitter(separator) if separator else None
        return click.Option(
            [flag, f.name], multiple=True, required=required, callback=split, metavar=metavar, help=help_text
        )
    if f.metadata.get("file"):
        kind_type = click.Path(dir_okay=False)
    else:
        kind_type = {"int": int, "float": float}.get(kind, str)
    # A literal's values are checked from the declaration (check_value), in one line: shown, not click's Choice.
    metavar = f"[{'|'.join(map(str, entry.item))}]" if kind == "literal" else None
    # An explicit default of None counts as a default in click 8.3+: a required option has none at all.
    default = {} if required else {"default": None}
    return click.Option([flag, f.name], type=kind_type, required=required, metavar=metavar, help=help_text, **default)


def _splitter(separator: str):
    """A ``split`` option's click callback: each given value split at the separator, blanks dropped."""

    def split(ctx, param, values) -> tuple:
        return tuple(item.strip() for value in values or () for item in str(value).split(separator) if item.strip())

    return split


def click_options(tp, skip: tuple[str, ...] = (), optional: tuple[str, ...] = ()) -> list:
    """The click options of one command's config ``tp`` (``qconv bench``, ``optimize``, ...), in declaration
    order; a field without a default is a required option unless named in ``optional`` (``--repo-id``, which
    ``publish --to`` does without)."""
    declared = collect({tp.__name__: tp}, skip=skip)
    return [
        click_option(entry, everyone=1, required=False if name in optional else None)
        for name, entry in declared.items()
    ]


def config_from_cli(ctx, tp, what: str, **fixed):
    """``tp`` from the options given on the command line (the others: its defaults) and ``fixed``, checked
    against its declaration (QconvError)."""
    return configure(tp, what, **{**given_values(ctx, [f.name for f in public_fields(tp)]), **fixed})


def given_values(ctx, names) -> dict:
    """The options given on the command line (not click's 'not given' defaults), by field name."""
    import click.core

    given = {}
    for name in names:
        if ctx.get_parameter_source(name) in (None, click.core.ParameterSource.DEFAULT):
            continue
        value = ctx.params.get(name)
        given[name] = list(value) if isinstance(value, tuple) else value
    return given
