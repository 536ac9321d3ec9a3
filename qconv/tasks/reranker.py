"""The reranker task: Qwen3-Reranker, exported as a one-logit seq-cls head (or the causal-LM format)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import Task, register_task


def _at_least(low: int, high: int | None = None) -> dict:
    return {"range": (low, high)}


@dataclass
class RerankerExport:
    """Export options of a reranker artifact (recipe ``export:`` and ``qconv export reranker``)."""

    seq_cls: bool = True
    instruction: str | None = None
    max_length: int | None = field(default=None, metadata=_at_least(1))
    opset: int | None = field(default=None, metadata=_at_least(18, 23))
    external_data: bool | None = None


@register_task
class RerankerTask(Task):
    name = "reranker"
    dataset_kind = "rerank"
    output = "logits"
    export_config = RerankerExport

    def check_export_config(self, config: RerankerExport) -> str | None:
        if not config.seq_cls:
            # The causal-LM format scores one document at a time over the whole vocabulary: only for comparison.
            return "export.seq_cls: false is not a pipeline format (use 'qconv export')"
        return None

    def export(self, source, output, config: RerankerExport, **common):
        from qconv.convert.reranker_export import export_reranker

        return export_reranker(source, output, instruction=config.instruction, max_length=config.max_length, **common)

    def validate(self, art, dataset: str, **options) -> dict:
        from qconv.validate.rerank import validate_reranker

        return validate_reranker(art, dataset, **options)

    def describe(self, manifest: dict) -> str:
        fmt = (manifest.get("reranker") or {}).get("format", "seq-cls")
        return f"reranking ({fmt} format)"

    # -- model card -------------------------------------------------------------------------------------
    model_index_task = ("text-ranking", "Reranking")

    def card_metadata(self, manifest: dict) -> tuple[str | None, str | None, list[str]]:
        if (manifest.get("reranker") or {}).get("format") == "seq-cls":
            # The one-logit head loads in sentence-transformers' CrossEncoder (chat_template.jinja).
            return (
                "sentence-transformers",
                "text-ranking",
                ["sentence-transformers", "cross-encoder", "reranker", "text-ranking"],
            )
        return "transformers", "text-ranking", ["reranker", "text-ranking"]

    def card_outputs(self, data) -> str:
        from qconv.hub.usage_reranker import outputs_sentence

        return outputs_sentence(data)

    def card_usage(self, data, variant: str) -> str:
        from qconv.hub.usage_reranker import usage

        return usage(data, variant)

    def card_prompt(self, data) -> str:
        from qconv.hub.usage_reranker import template_section

        return template_section(data)
