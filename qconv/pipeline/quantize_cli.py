"""``qconv quantize``'s mode options, generated from the registered quantization modes' configs.

Every flag comes from a field of some mode's config (``qconv.convert.quantize``): its help says which modes
take it, its default is 'not given' (the mode's config holds the defaults), and a flag the chosen mode does
not declare is an error naming the modes that do.
"""

from __future__ import annotations

import dataclasses


def _modes() -> dict:
    from qconv.convert.quantize import MODES

    return MODES


def mode_help() -> str:
    modes = _modes()
    return f"{' | '.join(modes)} ({'; '.join(f'{name}: {mode.description}' for name, mode in modes.items())})."


def mode_params() -> list:
    """``--mode`` and every option of every registered mode, in declaration order (common ones once)."""
    import click

    from qconv.pipeline.options import click_option, collect

    modes = _modes()
    declared = collect({name: mode.config for name, mode in modes.items()}, skip=("mode",))
    params = [click.Option(["--mode", "mode"], required=True, help=mode_help())]
    return params + [click_option(entry, everyone=len(modes)) for entry in declared.values()]


def config_from_cli(ctx):
    """The chosen mode's config from the options given on the command line."""
    from qconv.convert.quantize import configure, get_mode
    from qconv.pipeline.options import given_values

    mode = get_mode(ctx.params["mode"])
    names = {f.name for m in _modes().values() for f in dataclasses.fields(m.config)} - {"mode"}
    return configure(mode.name, **given_values(ctx, names))
