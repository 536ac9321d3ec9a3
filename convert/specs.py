"""What qconv knows about each architecture, one small registered spec per model type.

Adding an architecture means adding a spec class here, not editing if-chains elsewhere
(the way optimum registers one ONNX config per model type).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from qconv.errors import QconvError
from qconv.runtime.template import QWEN3_RERANKER_TEMPLATE, RerankTemplate

Pooling = Literal["lasttoken", "mean", "cls"]
POOLING_MODES: tuple[str, ...] = ("lasttoken", "mean", "cls")

QWEN3_EMBEDDING_QUERY_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


class EmbeddingSpec:
    """Defaults for exporting an architecture as a sentence-embedding model."""

    model_type: ClassVar[str]
    # Used when the checkpoint has no sentence-transformers pooling config.
    default_pooling: ClassVar[Pooling]
    # How an instruction becomes a prompt prefix (None: the model takes no instructions).
    instruction_template: ClassVar[str | None] = None
    # Written into a generated config_sentence_transformers.json when the checkpoint has none.
    default_prompts: ClassVar[dict[str, str]] = {}
    # Token budget when neither sentence-transformers nor the tokenizer state one.
    default_max_length: ClassVar[int] = 512
    # Hard cap on sequence length, whatever the config says (memory for a single batch).
    max_length_cap: ClassVar[int] = 8192
    # Padding sides under which a padded batch must give the same embeddings as batch 1. Rotary models
    # are invariant to both; absolute-position models (BERT) only to right padding, as they are trained.
    padding_sides: ClassVar[tuple[str, ...]] = ("right", "left")

    def prompt_for(self, instruction: str | None) -> str | None:
        if instruction is None or self.instruction_template is None:
            return None
        return self.instruction_template.format(instruction=instruction)


_EMBEDDING_SPECS: dict[str, EmbeddingSpec] = {}


def register_embedding(cls: type[EmbeddingSpec]) -> type[EmbeddingSpec]:
    _EMBEDDING_SPECS[cls.model_type] = cls()
    return cls


def embedding_spec(model_type: str) -> EmbeddingSpec:
    try:
        return _EMBEDDING_SPECS[model_type]
    except KeyError:
        supported = ", ".join(sorted(_EMBEDDING_SPECS))
        raise QconvError(
            f"unsupported architecture '{model_type}' for embedding export (supported: {supported})"
        ) from None


def spec_for_instruction_template(template: str | None) -> EmbeddingSpec:
    """A throwaway spec that formats prompts with a manifest's template (used at validation time)."""
    spec = EmbeddingSpec()
    spec.instruction_template = template  # type: ignore[misc]
    return spec


@register_embedding
class Qwen3EmbeddingSpec(EmbeddingSpec):
    model_type = "qwen3"
    default_pooling = "lasttoken"
    # Qwen3-Embedding's documented query format; documents take no prompt.
    instruction_template = "Instruct: {instruction}\nQuery:"
    default_prompts = {"query": f"Instruct: {QWEN3_EMBEDDING_QUERY_INSTRUCTION}\nQuery:", "document": ""}
    default_max_length = 8192


@register_embedding
class BertEmbeddingSpec(EmbeddingSpec):
    model_type = "bert"
    # sentence-transformers' own default when a plain BERT checkpoint has no pooling config.
    default_pooling = "mean"
    default_max_length = 512
    max_length_cap = 512
    padding_sides = ("right",)


class RerankerSpec:
    """How an architecture's causal LM becomes a yes/no relevance scorer."""

    model_type: ClassVar[str]
    template: ClassVar[RerankTemplate]
    yes_token: ClassVar[str] = "yes"
    no_token: ClassVar[str] = "no"
    causal_architectures: ClassVar[tuple[str, ...]]
    seqcls_architectures: ClassVar[tuple[str, ...]]
    default_max_length: ClassVar[int] = 8192


_RERANKER_SPECS: dict[str, RerankerSpec] = {}


def register_reranker(cls: type[RerankerSpec]) -> type[RerankerSpec]:
    _RERANKER_SPECS[cls.model_type] = cls()
    return cls


def reranker_spec(model_type: str) -> RerankerSpec:
    try:
        return _RERANKER_SPECS[model_type]
    except KeyError:
        supported = ", ".join(sorted(_RERANKER_SPECS))
        raise QconvError(
            f"unsupported architecture '{model_type}' for reranker export (supported: {supported})"
        ) from None


@register_reranker
class Qwen3RerankerSpec(RerankerSpec):
    model_type = "qwen3"
    template = QWEN3_RERANKER_TEMPLATE
    causal_architectures = ("Qwen3ForCausalLM",)
    seqcls_architectures = ("Qwen3ForSequenceClassification",)
