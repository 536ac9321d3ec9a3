"""The embedding task: sentence embeddings (Qwen3-Embedding, BERT-family sentence-transformers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .base import Task, register_task


def _at_least(low: int, high: int | None = None) -> dict:
    return {"range": (low, high)}


@dataclass
class EmbeddingExport:
    """Export options of an embedding artifact (recipe ``export:`` and ``qconv export embedding``)."""

    pooling: Literal["auto", "lasttoken", "mean", "cls"] = "auto"
    normalize: bool = True
    opset: int | None = field(default=None, metadata=_at_least(18, 23))  # what the exporter handles
    external_data: bool | None = None


@register_task
class EmbeddingTask(Task):
    name = "embedding"
    dataset_kind = "pairs"
    output = "sentence_embedding"
    export_config = EmbeddingExport

    def export(self, source, output, config: EmbeddingExport, **common):
        from qconv.convert.export import export_embedding

        return export_embedding(source, output, pooling=config.pooling, normalize=config.normalize, **common)

    def validate(self, art, dataset: str, **options) -> dict:
        from qconv.validate.embedding import validate_embedding

        return validate_embedding(art, dataset, **options)

    def describe(self, manifest: dict) -> str:
        return "sentence embeddings"

    # -- model card -------------------------------------------------------------------------------------
    model_index_task = ("sentence-similarity", "Semantic Textual Similarity")

    def card_metadata(self, manifest: dict) -> tuple[str | None, str | None, list[str]]:
        return (
            "sentence-transformers",
            "sentence-similarity",
            ["sentence-transformers", "sentence-similarity", "feature-extraction"],
        )

    def card_outputs(self, data) -> str:
        from qconv.hub.usage_embedding import outputs_sentence

        return outputs_sentence(data)

    def card_usage(self, data, variant: str) -> str:
        from qconv.hub.usage_embedding import usage

        return usage(data, variant)

    def card_prompt(self, data) -> str:
        from qconv.hub.usage_embedding import prompts

        return prompts(data)
