"""Embedding validation: an ONNX variant vs the PyTorch original on a sentence-pairs dataset."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from qconv.artifact import Artifact
from qconv.convert.specs import spec_for_instruction_template
from qconv.errors import QconvError
from qconv.runtime.embedder import DEFAULT_BATCH_TOKENS, Embedder, resolve_providers, truncate_dim

from . import metrics
from .datasets import load_pairs
from .reference import reference_embeddings
from .report import log_gap_histogram, scatter_figure
from .runner import (
    base_report,
    check_batching,
    check_bootstrap,
    finalize,
    instruction_rule,
    note_truncated,
    open_for_validation,
    progress_bar,
    scored_results,
)


def prompt_for(artifact: Artifact, instruction: str | None, default_instruction: str | None) -> str | None:
    """The prompt prefix both sides get: an instruction formatted with the model's template, if it has one.
    ``instruction``: None = the dataset's default, '' = none (the texts as they are)."""
    chosen = default_instruction if instruction is None else instruction
    if not chosen:
        return None
    return spec_for_instruction_template(artifact.manifest["embedding"].get("instruction_template")).prompt_for(chosen)


def validate_embedding(
    artifact: Artifact | str | Path,
    dataset: str,
    *,
    variant: str = "model",
    data_files: str | Path | None = None,
    split: str | None = None,
    limit: int | None = None,
    reference: str | None = None,
    providers: str | list[str] | None = None,
    batch_size: int = 32,
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
    instruction: str | None = None,
    dim: int | None = None,
    min_cosine: float | None = None,
    min_cosine_mean: float | None = None,
    max_delta: float | None = None,
    bootstrap: int = metrics.BOOTSTRAP_DEFAULT,
    offline: bool = False,
    note: str | None = None,
    raise_on_fail: bool = True,
) -> dict:
    started = time.perf_counter()
    art, spec, precision, thresholds = open_for_validation(
        artifact,
        dataset,
        variant,
        {"min_cosine": min_cosine, "min_cosine_mean": min_cosine_mean, "max_delta": max_delta},
    )
    settings = art.manifest["embedding"]
    if dim is not None and not 1 <= dim <= settings["dimension"]:
        raise QconvError(f"--dim {dim} is out of range: the embedding size is {settings['dimension']}")
    check_batching(batch_size, batch_tokens)
    check_bootstrap(bootstrap)
    provider_list = resolve_providers(providers)
    data = load_pairs(spec, data_files=data_files, split=split, limit=limit, offline=offline)
    prompt = prompt_for(art, instruction, spec.instruction)
    texts = list(dict.fromkeys(data.sentence1 + data.sentence2))
    position = {t: i for i, t in enumerate(texts)}
    left = np.array([position[t] for t in data.sentence1])
    right = np.array([position[t] for t in data.sentence2])

    with progress_bar() as progress:
        task = progress.add_task(f"ONNX {variant}", total=len(texts))
        embedder = Embedder(art, variant=variant, providers=provider_list)
        t0 = time.perf_counter()
        encodings = embedder.tokenize([(prompt or "") + t for t in texts])
        truncated = sum(1 for e in encodings if e.overflowing)
        candidate = embedder.encode_tokens(
            encodings, batch_size=batch_size, batch_tokens=batch_tokens, progress=lambda n: progress.advance(task, n)
        )
        candidate_seconds = time.perf_counter() - t0
        task = progress.add_task("PyTorch reference", total=len(texts))
        reference_vectors, reference_info = reference_embeddings(
            art,
            texts,
            prompt=prompt,
            batch_size=batch_size,
            batch_tokens=batch_tokens,
            reference=reference,
            progress=lambda n: progress.advance(task, n),
        )
    note_truncated(truncated, len(texts), "texts", settings["max_length"])
    if dim is not None:
        candidate, reference_vectors = truncate_dim(candidate, dim), truncate_dim(reference_vectors, dim)

    ref_scores = metrics.cosine_pairs(reference_vectors[left], reference_vectors[right])
    cand_scores = metrics.cosine_pairs(candidate[left], candidate[right])
    ref_metrics = metrics.sts_metrics(ref_scores, data.scores)
    cand_metrics = metrics.sts_metrics(cand_scores, data.scores)
    parity = metrics.embedding_parity(candidate, reference_vectors)
    parity["pair_score_spearman"] = metrics.spearman(cand_scores, ref_scores)
    parity["pair_score_max_abs_diff"] = float(np.abs(cand_scores - ref_scores).max())
    point = {m: cand_metrics[m] - ref_metrics[m] for m in ("cosine_spearman", "cosine_pearson")}
    intervals = metrics.sts_delta_intervals(cand_scores, ref_scores, data.scores, bootstrap, point) if bootstrap else {}
    per_text = metrics.cosine_pairs(candidate, reference_vectors)
    worst = [{"text": texts[i], "cosine": float(per_text[i])} for i in metrics.worst(per_text)]
    report = base_report(spec, data, variant, precision, provider_list, art)
    report.update(
        {
            "n_pairs": len(data),
            "size": f"{len(data)} pairs, {len(texts)} unique texts",
            "prompt": prompt or "",
            "instruction": spec.instruction if instruction is None else instruction,
            "instruction_rule": instruction_rule(instruction),
            "max_length": settings["max_length"],
            "truncated_texts": truncated,
            "dim": dim,
            "settings": {"prompt": prompt or "", **({"dim": dim} if dim else {})},
            "metrics": ["cosine_spearman", "cosine_pearson"],
            **scored_results(
                spec.main_metric,
                ref_metrics,
                cand_metrics,
                reference_info,
                {"texts_per_second": round(len(texts) / max(candidate_seconds, 1e-9), 2)},
                intervals,
                bootstrap,
                "pairs",
            ),
            "parity": parity,
            "worst": {"by": "per-text cosine between candidate and reference (lowest first)", "items": worst},
            "thresholds": thresholds,
            "note": note,
            "seconds": round(time.perf_counter() - started, 2),
        }
    )
    per_text_gap = 1.0 - per_text
    figures = [
        scatter_figure(ref_scores, cand_scores, "pair cosine"),
        log_gap_histogram(
            per_text_gap,
            "log10(1 - cosine(candidate, reference)) per text",
            "cosine",
            "per-text cosine between candidate and reference",
        ),
    ]
    return finalize(
        art,
        report,
        figures,
        raise_on_fail=raise_on_fail,
        extra_failures=[] if parity["finite"] else ["candidate embeddings contain NaN or Inf"],
        request=dict(
            limit=len(data),
            batch_size=batch_size,
            dim=dim,
            instruction=instruction,
            bootstrap=bootstrap,
            batch_tokens=batch_tokens,
        ),
    )
