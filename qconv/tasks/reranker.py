"""The reranker task: Qwen3-Reranker, exported as a one-logit seq-cls head (or the causal-LM format)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from qconv.pipeline.options import option

from .base import ExportCommon, Task, register_task


@dataclass
class RerankerExport(ExportCommon):
    """Export options of a reranker artifact (recipe ``export:`` and ``qconv export reranker``)."""

    seq_cls: bool = field(
        default=True,
        metadata=option(
            "Export a one-logit classification head (W[yes] - W[no]), the fast exact format; --no-seq-cls keeps "
            "the causal-LM format.",
            always=True,
        ),
    )
    instruction: str | None = field(default=None, metadata=option("Default instruction stored in the artifact."))
    max_length: int | None = field(
        default=None, metadata=option("Token budget per pair (template included) [default: 8192].", range=(1, None))
    )


@dataclass
class RerankerValidate:
    """The options of a reranker validation (``qconv validate`` on a ranking dataset)."""

    max_candidates: int = field(default=30, metadata={"help": "Candidates per query, positives first."})
    batch_size: int = field(default=8, metadata={"help": "Pairs per batch."})


@register_task
class RerankerTask(Task):
    name = "reranker"
    dataset_kind = "rerank"
    output = "logits"
    # fp32 graphs (the export, the fp32 optimize levels): the same computation, so the strictest gates
    exact_gates = {"max_score_diff": 1e-4, "min_top1": 1.0}
    export_config = RerankerExport

    def check_export_config(self, config: RerankerExport) -> str | None:
        if not config.seq_cls:
            # The causal-LM format scores one document at a time over the whole vocabulary: only for comparison.
            return "export.seq_cls: false is not a pipeline format (use 'qconv export')"
        return None

    default_model = "Qwen/Qwen3-Reranker-0.6B"
    export_help = "Export a Qwen3-Reranker: a seq-cls head by default (fast, exact), or the causal-LM format."
    model_help = "Qwen3-Reranker checkpoint (causal LM) or a converted seq-cls checkpoint; directory or Hub id."
    output_help = "Artifact directory [default: artifacts/<model-name>-<format>]."

    def export(self, source, output, config: RerankerExport, *, revision=None, overwrite=False):
        from qconv.convert.reranker_export import export_reranker

        return export_reranker(
            source,
            output,
            seq_cls=config.seq_cls,
            instruction=config.instruction,
            max_length=config.max_length,
            revision=revision,
            overwrite=overwrite,
            **config.exporter_options(),
        )

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

    manifest_keys = (
        "format",
        "padding_side",
        "max_length",
        "template",
        "instruction",
        "yes_token_id",
        "no_token_id",
        "pad_token_id",
    )

    def parity_runner(self, art, variant: str):
        from qconv.convert.seqcls import VERIFY_PAIRS
        from qconv.runtime.reranker import Reranker

        model = Reranker(art, variant=variant)
        sequences = [model.encoder.encode(q, d) for q, d in VERIFY_PAIRS]
        return lambda: model.score_ids(sequences, batch_size=len(sequences))

    def parity_figures(self, new, old) -> dict:
        import numpy as np

        return {"pairs": len(new), "max_abs_score_diff": float(np.abs(new - old).max())}

    def calibration_sequences(self, art, pairs) -> tuple[list, int]:
        # Each pair through the reranker's template: the sequences it scores.
        from qconv.runtime.reranker import Reranker

        reranker = Reranker(art)
        return [reranker.encoder.encode(q, d) for q, d in pairs], reranker.settings["pad_token_id"]

    def pad_id(self, art) -> int:
        return int(art.manifest["reranker"]["pad_token_id"])

    # Documents per calibration query when the ladder checks rankings: its own and the next ones' (qconv's
    # calibration documents, none from a validation set).
    calibration_documents: ClassVar[int] = 8

    def calibration_rankings(self, pairs):
        documents = [d for _, d in pairs]
        count = min(self.calibration_documents, len(documents))
        ranked, groups = [], []
        for i, (query, _) in enumerate(pairs):
            groups.append(list(range(len(ranked), len(ranked) + count)))
            ranked += [(query, documents[(i + j) % len(documents)]) for j in range(count)]
        return ranked, groups

    bench_unit = "pairs/s"
    # The baseline is the causal LM the seq-cls head is cut from: its last position's logits.
    torch_model = "transformers.AutoModelForCausalLM"
    torch_call = "last_logits"

    def bench_lm_head(self, manifest: dict) -> bool:
        return manifest["reranker"]["format"] == "causal-lm"

    def bench_extra_runs(self, base: dict, seq_lens: list[int], documents: int) -> list[tuple[str, dict, dict]]:
        # How most users score today: the causal LM, one document per call.
        spec = {
            **base,
            "torch_call": "logits_per_row",
            "shapes": [(documents, s) for s in seq_lens],
            "dtype": "float32",
        }
        meta = {
            "kind": "torch",
            "precision": "fp32",
            "lm_head": True,
            "note": f"the causal LM scoring {documents} documents one call each",
            "speedup_key": "vs_causal_lm_per_document",
        }
        return [("torch-causal-lm-per-document", spec, meta)]

    testmodel_class = "Qwen3ForCausalLM"
    demo_recipe = "demo-reranker.yaml"

    def create_testmodel(self, out, *, shape, seed: int, outliers: bool):
        from qconv.testing.testmodels import create_qwen3_reranker

        return create_qwen3_reranker(out, shape=shape, seed=seed, outliers=outliers)

    validate_options = RerankerValidate
