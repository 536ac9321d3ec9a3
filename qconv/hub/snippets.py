"""What every task's card sections share: their templates, where a snippet finds the artifact, transformers.js's
dtype."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qconv.hub.card import _CardData

TEMPLATES = Path(__file__).with_name("templates")
# transformers.js's dtype -> file name under onnx/ (model{suffix}.onnx); qconv publishes its INT8 pick as q8.
_JS_DTYPES = {"model": "fp32", "model_fp16": "fp16", "model_q4": "q4", "model_q4f16": "q4f16"}


def qconv_where(data: _CardData, file: str) -> str:
    """Where a qconv snippet finds the artifact: from the Hub, only the files qconv needs (manifest, tokenizer,
    the one graph); else its local path."""
    if data.hub_id:
        return f'path = snapshot_download("{data.hub_id}", allow_patterns=["*.json", "*.txt", "{file}*"])'
    return f'path = "{data.model_ref}"'


@lru_cache(maxsize=1)
def variant_context(data: _CardData, variant: str) -> dict:
    """What every task's usage snippets name about the variant they load: its file, the ONNX folder and file
    name, the model reference, the artifact name and Hub id, and where qconv's own loader finds it."""
    file = data.art.variants[variant]["file"]
    onnx_dir, onnx_name = file.rsplit("/", 1)
    return {
        "file": file,
        "onnx_dir": onnx_dir,
        "onnx_name": onnx_name,
        "ref": data.model_ref,
        "name": data.name,
        "variant": variant,
        "hub_id": data.hub_id,
        "where": qconv_where(data, file),
    }


def _environment():
    import jinja2

    # StrictUndefined: a name missing from the context is an error, not an empty string on a published card.
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined, autoescape=False
    )
    env.filters["py"] = repr  # a Python literal, as the snippets write strings
    return env


def render_section(template: str, **context) -> str:
    """A card section from its template under ``templates/``; the card's template puts the blank lines between
    sections, so the section ends at its last line."""
    return _environment().get_template(template).render(**context).rstrip("\n")


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
