"""Typed stage options: a dataclass field declares a key, its type, default, allowed values and help once.

From those declarations come the recipe schema (``qconv.pipeline.recipe`` reads the same metadata), the CLI
options (``click_options``), the checks of values given on the command line or through the Python API
(``check_value``) and the command lines that reproduce a stored configuration (``to_argv``). No stage
writes a flag, a check or a command line of its own.

Field metadata (``option(...)``): ``help``; ``key``, the recipe key when it is not the field name (``from``);
``flag``, the CLI flag when it is not ``--<key>`` (for a bool whose default is True, the flag that turns it
off, e.g. ``--per-tensor``; for a bool whose default is False, its one 'on' flag, e.g. ``--offline``); ``choices``;
``range`` (low, high or None); ``file`` (a file path); ``comma`` (a list option whose CLI value is comma-separated:
``--providers a,b``, also repeated, printed back as one ``a,b``). A field without a default is a required option.
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
    comma: bool = False,
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
    if comma:
        meta["comma"] = True
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
    """Why ``value`` is not allowed for the option (CLI wording: ``--flag VALUE ...``), None when it is."""
    if value is None:
        return None
    flag = flag_of(f)
    kind, detail = shape_of(tp)
    if kind == "list":
        return next((why for item in value if (why := check_value(f, detail, item, what))), None)
    if kind == "literal" and value not in detail:
        return f"unknown {flag} '{value}' (choose {', '.join(map(str, detail))})"
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        return f"{flag} {value} is not supported for {what} ({_or(choices)})"
    low, high = f.metadata.get("range", (None, None))
    if low is not None and (value < low or (high is not None and value > high)):
        bound = f"{low} to {high}" if high is not None else f"at least {low}"
        return f"{flag} {value} is not supported for {what} ({bound})"
    return None


def to_argv(config, skip: tuple[str, ...] = ()) -> list[str]:
    """The CLI arguments that give ``config``: every option whose value differs from its declared default."""
    hints = typing.get_type_hints(type(config))
    argv: list[str] = []
    for f in public_fields(config):
        if f.name in skip:
            continue
        value, default = getattr(config, f.name), default_of(f)
        if value == default or value is None:
            continue
        kind, _ = shape_of(hints[f.name])
        flag = flag_of(f)
        if kind == "bool":
            if default is True and f.metadata.get("flag"):
                argv.append(flag)  # an 'off' flag (--per-tensor) is given exactly when the value is False
            else:
                argv.append(flag if value else "--no-" + flag[2:])
        elif kind == "list" and f.metadata.get("comma"):
            argv += [flag, ",".join(map(str, value))]
        elif kind == "list":
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return argv


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
            kind, _ = shape_of(hints[f.name])
            entry = declared.setdefault(f.name, Declared(f, kind))
            if entry.kind != kind or flag_of(entry.field) != flag_of(f):
                raise TypeError(f"option '{f.name}' of {owner} clashes with the same option of another owner")
            entry.owners.append((owner, default_of(f)))
            entry.helps.setdefault(f.metadata.get("help", ""), []).append(owner)
    return declared


def _shown_default(value) -> str | None:
    if value is None or value == [] or value is dataclasses.MISSING:
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
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
        defaults.setdefault(_shown_default(default), []).append(owner)
    if entry.kind == "bool" and entry.field.metadata.get("flag"):
        return text  # an 'off' flag: the default is its absence
    if len(defaults) == 1:
        (shown,) = defaults
        return f"{text} [default: {shown}]" if shown else text
    groups = [f"{shown} for {'/'.join(owners)}" for shown, owners in defaults.items() if shown]
    return f"{text} [default: {'; '.join(groups)}]" if groups else text


def click_option(entry: Declared, everyone: int):
    """A ``click.Option`` for a declared option; its default is None ('not given'): the config has the defaults."""
    import click

    f, kind = entry.field, entry.kind
    flag, help_text = flag_of(f), help_of(entry, everyone)
    required = all(default is dataclasses.MISSING for _, default in entry.owners)
    if kind == "bool":
        if entry.field.metadata.get("flag"):
            # given: the declared default's opposite (--per-tensor gives per_channel=False)
            return click.Option(
                [flag, f.name], is_flag=True, flag_value=not default_of(f), default=None, help=help_text
            )
        return click.Option([f"{flag}/--no-{flag[2:]}", f.name], default=None, help=help_text)
    if kind == "list":
        split = _split_commas if f.metadata.get("comma") else None
        return click.Option([flag, f.name], multiple=True, required=required, callback=split, help=help_text)
    if f.metadata.get("file"):
        kind_type = click.Path(dir_okay=False)
    else:
        kind_type = {"int": int, "float": float}.get(kind, str)
    return click.Option([flag, f.name], type=kind_type, default=None, required=required, help=help_text)


def _split_commas(ctx, param, values) -> tuple:
    """A ``comma`` option's values: each given value split at its commas, blanks dropped ('a,b' and repeats)."""
    return tuple(item.strip() for value in values or () for item in value.split(",") if item.strip())


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
