"""One rich console for progress and summaries (stderr stays free for errors), and library noise control."""

from __future__ import annotations

import contextlib
import logging
import sys

from rich.console import Console

console = Console(highlight=False)


def quiet_libraries() -> None:
    """Silence library chatter that says nothing to a qconv user.

    transformers 4.57.3-4.57.x warns about a "Mistral regex" for *every* local checkpoint saved by those
    versions (its check only exempts configs written by <= 4.57.2); the tokenizer is not changed. The
    ONNX exporter logs that torchvision is absent, which qconv never needs.
    """
    import huggingface_hub

    huggingface_hub.utils.logging.set_verbosity_error()
    with contextlib.suppress(ImportError):  # the convert extra; the torch-free runtime has neither
        import transformers

        transformers.logging.set_verbosity_error()
        # transformers 5 draws a "Loading weights" bar on stderr for every checkpoint it loads (a 0.6B model
        # loads in under a second); qconv's own status line covers it, and an error stays a single line.
        transformers.logging.disable_progress_bar()
    with contextlib.suppress(ImportError):
        import datasets

        datasets.logging.set_verbosity_error()
        datasets.disable_progress_bars()  # qconv shows its own progress; "Generating train split" is noise
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


@contextlib.contextmanager
def console_on_stderr(enabled: bool = True):
    """Send progress and tables to stderr so that stdout carries only a machine-readable document."""
    previous = console._file  # None means "sys.stdout at print time": restore exactly that
    if enabled:
        console.file = sys.stderr
    try:
        yield
    finally:
        console._file = previous
