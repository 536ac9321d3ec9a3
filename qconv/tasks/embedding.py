"""The embedding task: sentence embeddings (Qwen3-Embedding, BERT-family sentence-transformers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from qconv.pipeline.options import option

from .base import ExportCommon, Task, register_task


@dataclass
class EmbeddingExport(ExportCommon):
    """Export options of an embedding artifact (recipe ``export:`` and ``qconv export embedding``)."""

    pooling: Literal["auto", "lasttoken", "mean", "cls"] = field(
        default="auto", metadata=option("How token states become sentence_embedding (auto: the model's own).")
    )
    normalize: bool = field(
        default=True, metadata=option("Do not L2-normalise sentence_embedding.", flag="--no-normalize")
    )


@dataclass
class EmbeddingValidate:
    """The options of an embedding validation (``qconv validate`` on a pairs dataset)."""

    batch_size: int = field(default=32, metadata={"help": "Texts per batch."})
    dim: int | None = field(
        default=None, metadata={"help": "Matryoshka: truncate embeddings to D dimensions and renormalise."}
    )


@register_task
class EmbeddingTask(Task):
    name = "embedding"
    dataset_kind = "pairs"
    output = "sentence_embedding"
    # fp32 graphs (the export, the fp32 optimize levels): the same computation, so the strictest gates
    exact_gates = {"min_cosine": 0.99999, "max_delta": 1e-4}
    export_config = EmbeddingExport
    default_model = "Qwen/Qwen3-Embedding-0.6B"
    export_help = "Export a sentence-embedding model (Qwen3-Embedding, BERT-family sentence-transformers)."

    def export(self, source, output, config: EmbeddingExport, *, revision=None, overwrite=False):
        from qconv.convert.export import export_embedding

        return export_embedding(
            source,
            output,
            pooling=config.pooling,
            normalize=config.normalize,
            revision=revision,
            overwrite=overwrite,
            **config.exporter_options(),
        )

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

    manifest_keys = ("pooling", "normalize", "dimension", "padding_side", "max_length")

    def parity_runner(self, art, variant: str):
        from qconv.convert.parity import PARITY_TEXTS
        from qconv.runtime.embedder import Embedder

        model, texts = Embedder(art, variant=variant), list(PARITY_TEXTS)
        return lambda: model.encode(texts, batch_size=len(texts))

    def parity_figures(self, new, old) -> dict:
        import numpy as np

        from qconv.numerics import cosine_rows

        cos = cosine_rows(new, old)
        return {
            "texts": len(new),
            "cosine_min": float(cos.min()),
            "cosine_mean": float(cos.mean()),
            "max_abs_diff": float(np.abs(new - old).max()),
        }

    def calibration_sequences(self, art, pairs) -> tuple[list, int]:
        # Queries get the artifact's query prompt, documents none: how retrieval embeds them.
        from qconv.runtime.embedder import load_fast_tokenizer

        settings = art.manifest["embedding"]
        prompt = (settings.get("prompts") or {}).get("query", "")
        texts = [prompt + q for q, _ in pairs] + [d for _, d in pairs if d]
        tokenizer = load_fast_tokenizer(
            art.path, padding_side=settings["padding_side"], max_length=settings["max_length"]
        )
        pad_id = tokenizer.padding["pad_id"]
        tokenizer.no_padding()
        return [e.ids for e in tokenizer.encode_batch(texts)], pad_id

    def one_input_pairs(self, pairs) -> list[tuple[str, str]]:
        return [(query, "") for query, _ in pairs]  # an empty document adds no text: one text each

    def pad_id(self, art) -> int:
        from qconv.runtime.embedder import load_fast_tokenizer

        settings = art.manifest["embedding"]
        tokenizer = load_fast_tokenizer(art.path, padding_side=settings["padding_side"], max_length=8)
        return int(tokenizer.padding["pad_id"])

    bench_unit = "texts/s"
    torch_model = "transformers.AutoModel"
    torch_call = "last_token_hidden"

    testmodel_class = "Qwen3Model"
    demo_recipe = "demo.yaml"

    def create_testmodel(self, out, *, shape, seed: int, outliers: bool):
        from qconv.testing.testmodels import create_qwen3_embedding

        return create_qwen3_embedding(out, shape=shape, seed=seed, outliers=outliers)

    validate_options = EmbeddingValidate
