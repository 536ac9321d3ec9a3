"""Pieces every task's usage snippets share: where the snippet finds the artifact, transformers.js's dtype."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qconv.hub.card import _CardData

# transformers.js's dtype -> file name under onnx/ (model{suffix}.onnx); qconv publishes its INT8 pick as q8.
_JS_DTYPES = {"model": "fp32", "model_fp16": "fp16", "model_q4": "q4", "model_q4f16": "q4f16"}


def qconv_snippet(data: _CardData, file: str, imports: list[str], body: list[str]) -> list[str]:
    """A qconv snippet: from the Hub, only the files qconv needs (manifest, tokenizer, the one graph)."""
    if data.hub_id:
        imports = [*imports, "from huggingface_hub import snapshot_download"]
        where = f'path = snapshot_download("{data.hub_id}", allow_patterns=["*.json", "*.txt", "{file}*"])'
    else:
        where = f'path = "{data.model_ref}"'
    return ["```python", *imports, "", where, *body, "```"]


def js_dtype(data: _CardData, variant: str) -> str:
    """The transformers.js dtype that loads ``variant`` (q8: the published onnx/model_quantized.onnx)."""
    if variant in _JS_DTYPES:
        return _JS_DTYPES[variant]
    # publish aliases the recommended variant, the one the snippets load (data.example_variant()).
    if data.art.variants[variant].get("precision") == "int8" and variant == data.example_variant():
        return "q8"
    return "fp32"


def js_dtype_note(data: _CardData, variant: str) -> str:
    if js_dtype(data, variant) == "q8":
        return (
            f"`qconv publish` puts `{data.art.variants[variant]['file']}` also at `onnx/model_quantized.onnx` (the "
            'same bytes), which `dtype: "q8"` loads; `config.json` makes it the default. Local copies made with '
            "`qconv publish --to DIR` have it too."
        )
    return '`dtype: "fp32"` loads `onnx/model.onnx`.'
