"""The embedding card's task parts: the outputs sentence, the usage snippets (sentence-transformers, optimum,
fastembed, transformers.js, qconv's ``Embedder``) and the prompts section. Called by ``EmbeddingTask``'s card
hooks; every line comes from the manifest's ``embedding`` record and the variant the card recommends."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from qconv.hub.snippets import js_dtype, js_dtype_note, render_section, variant_context

if TYPE_CHECKING:
    from qconv.hub.card import _CardData


def outputs_sentence(data: _CardData) -> str:
    """What ``sentence_embedding`` holds (appended to the variants table's "Every graph takes ..." line)."""
    emb = data.manifest.get("embedding") or {}
    return (
        f" `sentence_embedding` is {emb.get('pooling')}-pooled"
        f"{', L2-normalised' if emb.get('normalize') else ' (not normalised)'}, {emb.get('dimension')} "
        f"dimensions; max length {emb.get('max_length')} tokens, {emb.get('padding_side')} padding."
    )


def _pooling_code(pooling: str | None, normalize: bool) -> list[str]:
    if pooling == "lasttoken":
        lines = [
            'mask = batch["attention_mask"]',
            "last = mask.shape[1] - 1 - mask.flip(1).argmax(1)  # each text's last real token",
            "embeddings = hidden[torch.arange(hidden.shape[0]), last]",
        ]
    elif pooling == "cls":
        lines = ["embeddings = hidden[:, 0]"]
    else:
        lines = [
            'mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)',
            "embeddings = (hidden * mask).sum(1) / mask.sum(1)",
        ]
    if normalize:
        lines.append("embeddings = torch.nn.functional.normalize(embeddings, dim=-1)")
    return lines


def usage(data: _CardData, variant: str) -> str:
    """The "Usage" section: sentence-transformers, optimum, fastembed, transformers.js, qconv's ``Embedder``."""
    emb = data.manifest.get("embedding") or {}
    query_prompt = (emb.get("prompts") or {}).get("query")
    query, document = "What is the capital of China?", "The capital of China is Beijing."
    return render_section(
        "usage-embedding.md",
        **variant_context(data, variant),
        query=query,
        document=document,
        named=', prompt_name="query"' if query_prompt else "",
        # The consumers without named prompts get the query's prompt written into its text.
        texts_py=f"{(query_prompt or '') + query!r}, {document!r}",
        texts_js=f"{json.dumps((query_prompt or '') + query)}, {json.dumps(document)}",
        max_length=emb.get("max_length"),
        pooling_code=_pooling_code(emb.get("pooling"), bool(emb.get("normalize"))),
        left_padding=emb.get("padding_side") == "left",
        dimension=emb.get("dimension"),
        js_dtype=js_dtype(data, variant),
        js_dtype_note=js_dtype_note(data, variant),
    )


def prompts(data: _CardData) -> str:
    """The "Prompts" section: the named prompts and the instruction template."""
    emb = data.manifest.get("embedding") or {}
    return render_section(
        "prompts-embedding.md",
        prompts=emb.get("prompts") or {},
        prompts_source=emb.get("prompts_source", "the source model"),
        default_prompt_name=emb.get("default_prompt_name"),
        instruction_template=emb.get("instruction_template"),
    )
