"""One rich console for progress and summaries (stderr stays free for errors), and library noise control."""

from __future__ import annotations

import logging

from rich.console import Console

console = Console(highlight=False)


def quiet_libraries() -> None:
    """Silence library chatter that says nothing to a qconv user.

    transformers 4.57.3-4.57.x warns about a "Mistral regex" for *every* local checkpoint saved by those
    versions (its check only exempts configs written by <= 4.57.2); the tokenizer is not changed. The
    ONNX exporter logs that torchvision is absent, which qconv never needs.
    """
    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
