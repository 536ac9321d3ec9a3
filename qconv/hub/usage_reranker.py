"""The reranker card's task parts: the outputs sentence, the usage snippets (CrossEncoder, optimum, fastembed,
transformers.js and onnxruntime on the exact scored text, qconv's ``Reranker``) and the template section.
Called by ``RerankerTask``'s card hooks; every line comes from the manifest's ``reranker`` record."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from qconv.hub.snippets import js_dtype, js_dtype_note, render_section, variant_context

if TYPE_CHECKING:
    from qconv.hub.card import _CardData


def _format(data: _CardData) -> str | None:
    """The export format: ``seq-cls`` (one-logit head) or the causal-LM format."""
    return (data.manifest.get("reranker") or {}).get("format")


def outputs_sentence(data: _CardData) -> str:
    """What the graph scores (appended to the variants table's "Every graph takes ..." line)."""
    rr = data.manifest.get("reranker") or {}
    return (
        f" Relevance is P(yes) = `{rr.get('score')}`; max length {rr.get('max_length')} tokens per pair "
        f"(template included), {rr.get('padding_side')} padding."
    )


def _template_parts(template: dict) -> tuple[str, str]:
    """The template body split at the line where the document starts (the pair's two texts)."""
    body = template["body"]
    cut = body.rfind("\n", 0, body.index("{document}")) + 1 if "{document}" in body else len(body)
    return body[:cut], body[cut:]


def _template_tokens(data: _CardData) -> int | None:
    """Tokens the template itself takes (prefix, instruction line labels, suffix): the pair gets the rest."""
    from tokenizers import Tokenizer

    rr = data.manifest.get("reranker") or {}
    path = data.art.path / "tokenizer.json"
    if not path.is_file() or not rr.get("template"):
        return None
    from qconv.runtime.template import RerankTemplate

    text = RerankTemplate.from_manifest(rr["template"]).text("", "", rr.get("instruction"))
    return len(Tokenizer.from_file(str(path)).encode(text, add_special_tokens=False).ids)


def usage(data: _CardData, variant: str) -> str:
    """The "Usage" section: CrossEncoder, then the consumers given the exact scored text (seq-cls format), and
    qconv's ``Reranker``."""
    rr = data.manifest.get("reranker") or {}
    template = rr.get("template") or {}
    seq_cls = _format(data) == "seq-cls"
    strings = {
        "prefix": template.get("prefix", ""),
        "body": template.get("body", ""),
        "suffix": template.get("suffix", ""),
        "instruction": rr.get("instruction", ""),
    }
    head, tail = _template_parts(template) if seq_cls else ("", "")
    return render_section(
        "usage-reranker.md",
        seq_cls=seq_cls,
        **variant_context(data, variant),
        max_length=rr.get("max_length"),
        overhead=_template_tokens(data) if seq_cls else None,
        padding_side=rr.get("padding_side"),
        pad_token_id=rr.get("pad_token_id"),
        head=head,
        tail=tail,
        **strings,
        **{f"{key}_js": json.dumps(value, ensure_ascii=False) for key, value in strings.items()},
        js_dtype=js_dtype(data, variant) if seq_cls else None,
        js_dtype_note=js_dtype_note(data, variant) if seq_cls else None,
    )


def template_section(data: _CardData) -> str:
    """The "Template" section: the scored text, its default instruction and how it truncates."""
    rr = data.manifest.get("reranker") or {}
    template = rr.get("template") or {}
    return render_section(
        "template-reranker.md",
        text=template.get("prefix", "") + template.get("body", "") + template.get("suffix", ""),
        instruction=rr.get("instruction"),
        truncation=rr.get("truncation"),
    )
