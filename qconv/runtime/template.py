"""The reranker prompt as data, and how a (query, document) pair becomes token ids.

Shared by the ONNX runtime and the PyTorch reference, so both score exactly the same ids. Only the
``tokenizers`` library is needed (no torch).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from qconv.errors import QconvError


@dataclass(frozen=True)
class RerankTemplate:
    prefix: str
    body: str  # with {instruction}, {query}, {document}
    suffix: str
    default_instruction: str

    def to_manifest(self) -> dict:
        return asdict(self)

    @classmethod
    def from_manifest(cls, data: dict) -> "RerankTemplate":
        return cls(**{k: data[k] for k in ("prefix", "body", "suffix", "default_instruction")})

    def text(self, query: str, document: str, instruction: str | None = None) -> str:
        """The whole scored string, as consumers without a chat template must build it."""
        body = self.body.format(instruction=instruction or self.default_instruction, query=query, document=document)
        return self.prefix + body + self.suffix

    def chat_template(self, instruction: str | None = None) -> str:
        """A Jinja chat template that renders a ``query``/``document`` message pair as :meth:`text` does.

        sentence-transformers (5.7+) maps a CrossEncoder pair to one message per role and renders it with
        the tokenizer's chat template. Every literal is a Jinja string expression, never template text:
        Jinja drops one trailing newline of a template, and the suffix ends in "\n\n" (without it the
        score is taken at another position). ``instruction`` becomes the default, overridable with the
        ``instruction`` render argument.
        """

        def literal(text: str) -> str:
            return "{{- " + json.dumps(text, ensure_ascii=False) + " -}}"

        def role(name: str) -> str:
            # "flat" messages carry a string; structured ones a list of {"type": "text", "text": ...}.
            return (
                f'{{%- set {name} = (messages | selectattr("role", "eq", "{name}") | first)["content"] -%}}\n'
                f'{{%- if {name} is not string %}}{{% set {name} = {name} | map(attribute="text") | join %}}'
                "{% endif -%}\n"
            )

        default = json.dumps(instruction or self.default_instruction, ensure_ascii=False)
        fields = {
            "instruction": f"{{{{- instruction if instruction is defined and instruction else {default} -}}}}",
            "query": "{{- query -}}",
            "document": "{{- document -}}",
        }
        pieces = [literal(self.prefix)]
        for part in re.split(r"(\{instruction\}|\{query\}|\{document\})", self.body):
            if part:
                pieces.append(
                    fields[part[1:-1]] if part in ("{instruction}", "{query}", "{document}") else literal(part)
                )
        pieces.append(literal(self.suffix))
        return role("query") + role("document") + "".join(pieces)


def resolve_instruction(instruction: str | None, default: str) -> str:
    """One rule for every task: ``None`` means the default, ``''`` means no instruction, anything else is used.

    For a reranker, ``''`` leaves the template's instruction slot empty (``<Instruct>: \n<Query>: ...``), exactly as
    Qwen3-Reranker's reference ``format_instruction`` does: it too substitutes its default only for ``None``."""
    return default if instruction is None else instruction


QWEN3_RERANKER_TEMPLATE = RerankTemplate(
    prefix=(
        "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
        'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
    ),
    body="<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}",
    suffix="<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
    default_instruction="Given a web search query, retrieve relevant passages that answer the query",
)


class PairEncoder:
    """Token ids for templated pairs: prefix + body + suffix, never cutting prefix or suffix.

    The body is tokenized whole (as the Qwen3-Reranker reference code does) and, when the pair is over
    ``max_length``, cut from its end: the document shortens first, then the query. Naive truncation of the
    full text would drop the suffix and silently score a position that is not the assistant turn.
    """

    def __init__(self, tokenizer, template: RerankTemplate, max_length: int):
        self.tokenizer = tokenizer
        self.template = template
        self.max_length = max_length
        self.prefix_ids = tokenizer.encode(template.prefix, add_special_tokens=False).ids
        self.suffix_ids = tokenizer.encode(template.suffix, add_special_tokens=False).ids
        self.body_budget = max_length - len(self.prefix_ids) - len(self.suffix_ids)
        self.truncated = 0  # pairs cut to max_length so far (validation reports how many)
        if self.body_budget < 1:
            raise QconvError(
                f"max length {max_length} leaves no room for the query and document: the template "
                f"alone takes {len(self.prefix_ids) + len(self.suffix_ids)} tokens"
            )

    def body(self, query: str, document: str, instruction: str | None) -> str:
        chosen = resolve_instruction(instruction, self.template.default_instruction)
        return self.template.body.format(instruction=chosen, query=query, document=document)

    def encode(self, query: str, document: str, instruction: str | None = None) -> list[int]:
        body_ids = self.tokenizer.encode(self.body(query, document, instruction), add_special_tokens=False).ids
        self.truncated += len(body_ids) > self.body_budget
        return self.prefix_ids + body_ids[: self.body_budget] + self.suffix_ids

    def encode_pairs(self, query: str, documents: Sequence[str], instruction: str | None = None) -> list[list[int]]:
        return [self.encode(query, d, instruction) for d in documents]


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, side: str) -> tuple[np.ndarray, np.ndarray]:
    """int64 (input_ids, attention_mask), padded to the longest sequence on ``side``."""
    width = max(len(s) for s in sequences)
    ids = np.full((len(sequences), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), width), dtype=np.int64)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[row, span] = seq
        mask[row, span] = 1
    return ids, mask


def last_token_index(attention_mask: np.ndarray) -> np.ndarray:
    """Position of each row's last attended token (left or right padding alike)."""
    positions = np.arange(attention_mask.shape[1])[None, :]
    return (attention_mask * positions).argmax(axis=1)
