"""The reranker card's task parts: the outputs sentence, the usage snippets (CrossEncoder, optimum, fastembed,
transformers.js and onnxruntime on the exact scored text, qconv's ``Reranker``) and the template section.
Called by ``RerankerTask``'s card hooks; every line comes from the manifest's ``reranker`` record."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from qconv.hub.snippets import js_dtype, js_dtype_note, qconv_snippet

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


def _seqcls_consumers(data: _CardData, variant: str, file: str, constants: list[str]) -> list[str]:
    """CrossEncoder (reads chat_template.jinja), then the consumers that need the scored text built by hand."""
    onnx_dir, onnx_name = file.rsplit("/", 1)
    rr = data.manifest.get("reranker") or {}
    template = rr.get("template") or {}
    ref = data.model_ref
    max_length = rr.get("max_length")
    overhead = _template_tokens(data)
    head, tail = _template_parts(template)
    text_line = f"BODY = {template.get('body', '')!r}"
    texts = (
        "texts = [PREFIX + BODY.format(instruction=INSTRUCTION, query=query, document=d) + SUFFIX for d in documents]"
    )
    return [
        "### sentence-transformers (CrossEncoder)",
        "",
        "The artifact ships the template as `chat_template.jinja`: sentence-transformers (5.7 and later) renders "
        "each (query, document) pair with it, so plain pairs score as qconv does. The graph has one logit, "
        "`W[yes] - W[no]`; CrossEncoder's sigmoid activation turns it into P(yes). Over the max length "
        f"({max_length} tokens, `tokenizer_config.json`) it cuts the document and writes the template's suffix "
        "back, as qconv does. Another instruction: "
        '`model.predict(pairs, processing_kwargs={"chat_template": {"instruction": "..."}})`.',
        "",
        "```python",
        "from sentence_transformers import CrossEncoder",
        "",
        f'model = CrossEncoder("{ref}", backend="onnx", model_kwargs={{"file_name": "{file}"}})',
        *constants[-2:],
        "pairs = [(query, d) for d in documents]",
        "print(model.predict(pairs))  # P(yes) per document",
        "```",
        "",
        "### Without a chat template: the exact text",
        "",
        "optimum, fastembed, transformers.js and plain onnxruntime apply no template: give them the whole "
        "scored text (see *Template* below), built as `PREFIX + BODY.format(instruction=..., query=..., "
        "document=...) + SUFFIX` with the strings in the snippets, the suffix's two trailing newlines "
        "included. They return the logit; P(yes) = sigmoid(logit). They truncate from the end of the text, "
        f"which cuts the suffix and scores the wrong position: keep each text within {max_length} tokens "
        + (f"(the template with its default instruction takes {overhead}) " if overhead else "")
        + "by shortening the document first, or use CrossEncoder or qconv's `Reranker`.",
        "",
        "### optimum",
        "",
        "```python",
        "import torch",
        "from optimum.onnxruntime import ORTModelForSequenceClassification",
        "from transformers import AutoTokenizer",
        "",
        f'model = ORTModelForSequenceClassification.from_pretrained("{ref}", subfolder="{onnx_dir}", '
        f'file_name="{onnx_name}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{ref}")  # {rr.get("padding_side")} padding',
        *constants,
        text_line,
        texts,
        'batch = tokenizer(texts, padding=True, return_tensors="pt")',
        "logits = model(**batch).logits[:, 0]",
        "print(torch.sigmoid(logits))  # P(yes) per document",
        "```",
        "",
        "### fastembed",
        "",
        "fastembed tokenizes a (query, document) pair as the two halves of the text, split where the "
        "document starts; `rerank_pairs` returns logits.",
        "",
        *qconv_snippet(
            data,
            file,
            [
                "import numpy as np",
                "from fastembed.common.model_description import ModelSource",
                "from fastembed.rerank.cross_encoder import TextCrossEncoder",
            ],
            [
                f'TextCrossEncoder.add_custom_model("{data.name}", sources=ModelSource(hf="{ref}"), '
                f'model_file="{file}")',
                f'model = TextCrossEncoder("{data.name}", specific_model_path=path)',
                *constants,
                f"pairs = [(PREFIX + {head!r}.format(instruction=INSTRUCTION, query=query), "
                f"{tail!r}.format(document=d) + SUFFIX) for d in documents]",
                "logits = np.array(list(model.rerank_pairs(pairs)))",
                "print(1 / (1 + np.exp(-logits)))  # P(yes) per document",
            ],
        ),
        "",
        "### transformers.js",
        "",
        "```js",
        'import { AutoModel, AutoTokenizer } from "@huggingface/transformers";',
        "",
        f'const tokenizer = await AutoTokenizer.from_pretrained("{ref}");',
        f'const model = await AutoModel.from_pretrained("{ref}", {{ dtype: "{js_dtype(data, variant)}" }});',
        f"const PREFIX = {json.dumps(template.get('prefix', ''), ensure_ascii=False)};",
        f"const BODY = {json.dumps(template.get('body', ''), ensure_ascii=False)};",
        f"const SUFFIX = {json.dumps(template.get('suffix', ''), ensure_ascii=False)};",
        f"const INSTRUCTION = {json.dumps(rr.get('instruction', ''), ensure_ascii=False)};",
        'const query = "What is the capital of China?";',
        'const documents = ["The capital of China is Beijing.", "Gravity is a force that attracts bodies."];',
        'const texts = documents.map((d) => PREFIX + BODY.replace("{instruction}", () => INSTRUCTION)',
        '  .replace("{query}", () => query).replace("{document}", () => d) + SUFFIX);',
        "const { logits } = await model(tokenizer(texts, { padding: true }));",
        "console.log(logits.sigmoid().tolist());  // P(yes) per document",
        "```",
        "",
        js_dtype_note(data, variant),
        "",
        "### onnxruntime",
        "",
        *qconv_snippet(
            data,
            file,
            ["import numpy as np", "import onnxruntime as ort", "from tokenizers import Tokenizer"],
            [
                'tokenizer = Tokenizer.from_file(f"{path}/tokenizer.json")',
                f'tokenizer.enable_padding(direction="{rr.get("padding_side")}", pad_id={rr.get("pad_token_id")})',
                f'session = ort.InferenceSession(f"{{path}}/{file}", providers=["CPUExecutionProvider"])',
                *constants,
                text_line,
                texts,
                "encoded = tokenizer.encode_batch(texts)",
                "ids = np.array([e.ids for e in encoded], dtype=np.int64)",
                "mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)",
                '(logits,) = session.run(["logits"], {"input_ids": ids, "attention_mask": mask})',
                "print(1 / (1 + np.exp(-logits[:, 0])))  # P(yes) per document",
            ],
        ),
        "",
    ]


def usage_lines(data: _CardData, variant: str) -> list[str]:
    file = data.art.variants[variant]["file"]
    rr = data.manifest.get("reranker") or {}
    template = rr.get("template") or {}
    constants = [
        f"PREFIX = {template.get('prefix', '')!r}",
        f"SUFFIX = {template.get('suffix', '')!r}",
        f"INSTRUCTION = {rr.get('instruction', '')!r}",
        'query = "What is the capital of China?"',
        'documents = ["The capital of China is Beijing.", "Gravity is a force that attracts bodies."]',
    ]
    lines = ["## Usage", "", f"The snippets load `{file}`; any file from the table works.", ""]
    if _format(data) == "seq-cls":
        lines += _seqcls_consumers(data, variant, file, constants)
    else:
        lines += [
            "This is the causal-LM format: the graph returns full-vocabulary logits for every position, and "
            "P(yes) is the softmax over the *no*/*yes* logits at the last real token. qconv's `Reranker` "
            "does this; the seq-cls format (`qconv export reranker --seq-cls`) is the fast equivalent that "
            "also loads in CrossEncoder and optimum.",
            "",
        ]
    lines += [
        "### onnxruntime with qconv (no torch)",
        "",
        *qconv_snippet(
            data,
            file,
            ["from qconv import Reranker"],
            [
                f'reranker = Reranker(path, variant="{variant}")',
                *constants[-2:],
                "print(reranker.rank(query, documents, top_k=2))  # [{'index', 'score', 'document'}, ...]",
            ],
        ),
        "",
        "`Reranker.score(query, documents, instruction=...)` returns P(yes) per document; the instruction "
        "defaults to the one below.",
    ]
    return lines


def template_lines(data: _CardData) -> list[str]:
    rr = data.manifest.get("reranker") or {}
    template = rr.get("template") or {}
    full = template.get("prefix", "") + template.get("body", "") + template.get("suffix", "")
    return [
        "## Template",
        "",
        "Each (query, document) pair is scored as this text, with `{instruction}`, `{query}` and `{document}` "
        "filled in:",
        "",
        "```text",
        full,
        "```",
        "",
        f"Default instruction: `{rr.get('instruction')}`. Truncation: {rr.get('truncation')}.",
    ]
