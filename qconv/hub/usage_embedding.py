"""The embedding card's task parts: the outputs sentence, the usage snippets (sentence-transformers, optimum,
fastembed, transformers.js, qconv's ``Embedder``) and the prompts section. Called by ``EmbeddingTask``'s card
hooks; every line comes from the manifest's ``embedding`` record and the variant the card recommends."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from qconv.hub.snippets import js_dtype, js_dtype_note, qconv_snippet

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


def usage_lines(data: _CardData, variant: str) -> list[str]:
    file = data.art.variants[variant]["file"]
    onnx_dir, onnx_name = file.rsplit("/", 1)
    emb = data.manifest.get("embedding") or {}
    query_prompt = (emb.get("prompts") or {}).get("query")
    named = ', prompt_name="query"' if query_prompt else ""
    ref = data.model_ref
    query, document = "What is the capital of China?", "The capital of China is Beijing."
    lines = [
        "## Usage",
        "",
        f"The snippets load `{file}`; any file from the table works.",
        "",
        "### sentence-transformers",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "",
        f'model = SentenceTransformer("{ref}", backend="onnx", model_kwargs={{"file_name": "{file}"}})',
        f'queries = model.encode(["{query}"]{named})',
        f'documents = model.encode(["{document}"])',
        "print(model.similarity(queries, documents))",
        "```",
        "",
        "### optimum",
        "",
        "```python",
        "import torch",
        "from optimum.onnxruntime import ORTModelForFeatureExtraction",
        "from transformers import AutoTokenizer",
        "",
        f'model = ORTModelForFeatureExtraction.from_pretrained("{ref}", subfolder="{onnx_dir}", '
        f'file_name="{onnx_name}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{ref}")',
        f"texts = [{(query_prompt or '') + query!r}, {document!r}]",
        f"batch = tokenizer(texts, padding=True, truncation=True, max_length={emb.get('max_length')}, "
        'return_tensors="pt")',
        "hidden = model(**batch).last_hidden_state",
        *_pooling_code(emb.get("pooling"), bool(emb.get("normalize"))),
        "```",
        "",
        "optimum drops the graph's `sentence_embedding` output: the snippet pools `last_hidden_state` itself. "
        + (
            "The tokenizer pads on the left, so the last position is every text's last token: keep it so "
            "(transformers.js's and fastembed's last-token pooling read that position)."
            if emb.get("padding_side") == "left"
            else ""
        ),
        "",
        "### fastembed",
        "",
        *qconv_snippet(
            data,
            file,
            [
                "import numpy as np",
                "from fastembed import TextEmbedding",
                "from fastembed.common.model_description import ModelSource, PoolingType",
            ],
            [
                "# the graph pools and normalises: read its sentence_embedding output as it is",
                f'TextEmbedding.add_custom_model("{data.name}", pooling=PoolingType.DISABLED, normalization=False, '
                f'sources=ModelSource(hf="{ref}"), dim={emb.get("dimension")}, model_file="{file}", '
                'output_name="sentence_embedding")',
                f'model = TextEmbedding("{data.name}", specific_model_path=path)',
                f"texts = [{(query_prompt or '') + query!r}, {document!r}]",
                "embeddings = np.array(list(model.embed(texts)))",
                "print(embeddings[0] @ embeddings[1])",
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
        f"const texts = [{json.dumps((query_prompt or '') + query)}, {json.dumps(document)}];",
        "const inputs = tokenizer(texts, { padding: true, truncation: true });",
        "const { sentence_embedding } = await model(inputs);",
        "console.log(sentence_embedding.tolist());",
        "```",
        "",
        js_dtype_note(data, variant),
        "",
    ]
    lines += [
        "### onnxruntime with qconv (no torch)",
        "",
        *qconv_snippet(
            data,
            file,
            ["import numpy as np", "from qconv import Embedder"],
            [
                f'model = Embedder(path, variant="{variant}")',
                f'queries = model.encode(["{query}"]{named})',
                f'documents = model.encode(["{document}"])',
                "unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)",
                "print(unit(queries) @ unit(documents).T)",
            ],
        ),
        "",
        "`Embedder` runs the graph with onnxruntime and the tokenizer with `tokenizers`; `encode` takes "
        "`prompt=`, `prompt_name=`, `batch_size=` and `dim=` (Matryoshka truncation, renormalised).",
    ]
    return lines


def prompt_lines(data: _CardData) -> list[str]:
    emb = data.manifest.get("embedding") or {}
    prompts = emb.get("prompts") or {}
    lines = ["## Prompts", ""]
    if prompts:
        lines += [
            f"Named prompts (from {emb.get('prompts_source', 'the source model')}), prefixed to the text; "
            "pass `prompt_name=` to sentence-transformers or `Embedder.encode`:",
            "",
            "| name | prompt |",
            "|---|---|",
        ]
        lines += [f"| `{name}` | " + (f"`{text!r}`" if text else "(none)") + " |" for name, text in prompts.items()]
        if emb.get("default_prompt_name"):
            lines += ["", f"Default prompt: `{emb['default_prompt_name']}`."]
    else:
        lines.append("This model takes no prompt.")
    if emb.get("instruction_template"):
        lines += [
            "",
            f"Instruction template: `{emb['instruction_template']!r}` (a task instruction in place of "
            "`{instruction}`; documents take no prompt).",
        ]
    return lines
