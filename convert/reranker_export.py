"""``qconv export reranker``: a Qwen3-Reranker as a one-logit seq-cls graph (or the causal-LM format)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from qconv.artifact import (
    BASE_VARIANT,
    base_variant_entry,
    check_output_dir,
    staged_directory,
    variant_file,
    write_new_manifest,
)
from qconv.console import console
from qconv.errors import QconvError
from qconv.runtime.template import PairEncoder

from .export import DEFAULT_OPSET, ExportResult
from .onnx_graph import check_opset, export_module, release_weights
from .parity import compare_reranker_parity, require_reranker_parity, reranker_reference
from .seqcls import (
    VERIFY_PAIRS,
    build_causal_module,
    build_seqcls_module,
    single_token_id,
    to_sequence_classifier,
    verify_conversion,
)
from .source import load_config_dict, require_tokenizer, resolve_source
from .specs import RerankerSpec, reranker_spec
from .torch_embedding import load_tokenizer, require_safetensors

DEFAULT_RERANKER_MODEL = "Qwen/Qwen3-Reranker-0.6B"
RERANKER_INPUTS = ("input_ids", "attention_mask")
RERANKER_AXES = {
    "input_ids": {0: "batch_size", 1: "sequence_length"},
    "attention_mask": {0: "batch_size", 1: "sequence_length"},
}
CHAT_TEMPLATE_FILE = "chat_template.jinja"
SCORE_RULE = {"seq-cls": "sigmoid(logits[:, 0])", "causal-lm": "softmax(logits[last, [no, yes]])[yes]"}


def source_format(config: dict, spec: RerankerSpec, source_id: str) -> str:
    architectures = config.get("architectures") or []
    if any(a in spec.seqcls_architectures for a in architectures):
        return "seq-cls"
    if any(a in spec.causal_architectures for a in architectures):
        return "causal-lm"
    raise QconvError(
        f"{source_id} is a {', '.join(architectures) or config.get('model_type')} checkpoint, not a "
        f"causal LM ({', '.join(spec.causal_architectures)}) or a converted "
        f"{', '.join(spec.seqcls_architectures)}: a reranker needs one of those"
    )


def _load(model_dir: Path, fmt: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    require_safetensors(model_dir)
    from safetensors import SafetensorError

    from qconv.errors import one_line

    cls = AutoModelForSequenceClassification if fmt == "seq-cls" else AutoModelForCausalLM
    try:
        model = cls.from_pretrained(
            model_dir, dtype=torch.float32, trust_remote_code=False, use_safetensors=True, attn_implementation="sdpa"
        )
    except (OSError, ValueError, KeyError, SafetensorError) as exc:  # SafetensorError: a truncated or corrupt file
        raise QconvError(f"could not load the model in {model_dir}: {one_line(exc)}") from exc
    return model.eval()


def export_reranker(
    model: str = DEFAULT_RERANKER_MODEL,
    output: str | Path | None = None,
    *,
    seq_cls: bool = True,
    instruction: str | None = None,
    max_length: int | None = None,
    opset: int = DEFAULT_OPSET,
    revision: str | None = None,
    external_data: bool | None = None,
    overwrite: bool = False,
) -> ExportResult:
    started = time.perf_counter()
    source = resolve_source(model, revision)
    fmt = "seq-cls" if seq_cls else "causal-lm"
    target = Path(output) if output else Path("artifacts") / f"{source.name}-{fmt}"
    check_opset(opset)  # the checks that need no model come before the slow loading
    # Never replace the source model, its parent or a folder qconv did not make.
    check_output_dir(target, overwrite=overwrite, protected=[source.path])
    config = load_config_dict(source.path)
    model_type = config.get("model_type") or ""
    require_tokenizer(source.path, model_type)
    spec = reranker_spec(model_type)
    from_format = source_format(config, spec, source.id)
    if from_format == "seq-cls" and not seq_cls:
        raise QconvError(f"{source.id} is already a sequence-classification checkpoint; export it with --seq-cls")
    hf_tokenizer = load_tokenizer(source.path)
    fast = hf_tokenizer.backend_tokenizer
    yes_id = single_token_id(fast, spec.yes_token)
    no_id = single_token_id(fast, spec.no_token)
    limit = min(spec.default_max_length, config.get("max_position_embeddings") or spec.default_max_length)
    if max_length is not None and not 1 <= max_length <= limit:
        raise QconvError(f"--max-length {max_length} is out of range (1 to {limit} for this model)")
    max_length = max_length or limit
    encoder = PairEncoder(fast, spec.template, max_length)
    pad_id = hf_tokenizer.pad_token_id
    if not seq_cls:
        console.print(
            "[yellow]warning: exporting the causal-LM format: full-vocabulary logits for every position, "
            "one 151k-wide row per token. It exists for comparison; --seq-cls scores the same P(yes) "
            "with a one-logit head and is far faster.[/]"
        )

    with console.status(f"loading {source.id}"):
        loaded = _load(source.path, from_format)
    conversion = None
    classifier = None
    if fmt == "causal-lm":
        module = build_causal_module(loaded)
    elif from_format == "seq-cls":
        classifier = loaded
        module = build_seqcls_module(classifier)
    else:
        classifier = to_sequence_classifier(loaded, yes_id, no_id, pad_id)
        module = build_seqcls_module(classifier)
        with console.status("verifying the seq-cls head against the causal LM"):
            conversion = verify_conversion(loaded, module, encoder, pad_id, yes_id, no_id)
        console.print(
            f"seq-cls head = W_yes - W_no (ids {yes_id}, {no_id}): |sigmoid(head) - P(yes)| max "
            f"{conversion['max_abs_diff']:.2e} over {conversion['pairs']} pairs, left and right padding"
        )

    with staged_directory(target, overwrite=overwrite, protected=[source.path]) as tmp:
        onnx_path = tmp / variant_file(BASE_VARIANT)
        sequences = [encoder.encode(q, d) for q, d in VERIFY_PAIRS]
        with console.status(f"exporting {source.name} ({fmt}) to ONNX (opset {opset})"):
            import torch

            from qconv.runtime.template import pad_batch

            ids, mask = pad_batch(sequences[:2], pad_id, "left")
            exported = export_module(
                module,
                (torch.from_numpy(ids), torch.from_numpy(mask)),
                onnx_path,
                input_names=RERANKER_INPUTS,
                output_names=("logits",),
                dynamic_axes={
                    **RERANKER_AXES,
                    "logits": {0: "batch_size"} if seq_cls else {0: "batch_size", 1: "sequence_length"},
                },
                opset=opset,
                external_data=external_data,
            )
        with console.status("checking ONNX against PyTorch"):
            reference = reranker_reference(module, sequences, pad_id)
        checkpoint = None
        if classifier is not None and from_format == "causal-lm":
            # The converted PyTorch checkpoint too, for transformers/vLLM users, in the source's dtype.
            dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32")
            classifier.to(getattr(torch, dtype)).save_pretrained(tmp, safe_serialization=True)
            checkpoint = {"class": type(classifier).__name__, "dtype": dtype, "files": "config.json, model.safetensors"}
        for held in (module, loaded, classifier):
            if held is not None:
                release_weights(held)  # one copy of the weights at a time: the ONNX session loads next
        with console.status("checking ONNX against PyTorch"):
            parity = compare_reranker_parity(reference, fmt, onnx_path, yes_id, no_id)
        console.print(
            f"parity ONNX vs PyTorch P(yes) on {parity['pairs']} templated pairs ({parity['runs']}): "
            f"max_abs_diff={parity['max_abs_diff']:.2e} "
            f"padding_invariance={parity['padding_invariance_max_abs_diff']:.2e} "
            + ("[green]ok[/]" if parity["passed"] else "[red]FAILED[/]")
        )
        require_reranker_parity(parity)
        if checkpoint is None:
            shutil.copyfile(source.path / "config.json", tmp / "config.json")
        # Consumers read these two: sentence-transformers renders CrossEncoder pairs with the chat template
        # (replacing the source's chat one, which does not score), and truncates at model_max_length.
        hf_tokenizer.chat_template = spec.template.chat_template(instruction)
        hf_tokenizer.model_max_length = max_length
        hf_tokenizer.save_pretrained(tmp)
        if not (tmp / CHAT_TEMPLATE_FILE).is_file():
            raise QconvError(f"the tokenizer did not write {CHAT_TEMPLATE_FILE}; transformers is too old")
        write_new_manifest(
            tmp,
            {
                "task": "reranker",
                "architecture": model_type,
                "source": {**source.to_manifest(), "format": from_format},
                "reranker": {
                    "format": fmt,
                    "score": SCORE_RULE[fmt],
                    "template": spec.template.to_manifest(),
                    "instruction": instruction or spec.template.default_instruction,
                    "yes_token_id": yes_id,
                    "no_token_id": no_id,
                    "pad_token_id": pad_id,
                    "padding_side": hf_tokenizer.padding_side,
                    "max_length": max_length,
                    "truncation": "document first, then query; template prefix and suffix kept whole",
                    "chat_template": CHAT_TEMPLATE_FILE,
                },
                "conversion": conversion,
                "pytorch_checkpoint": checkpoint,
                "export": {
                    "opset": opset,
                    "exporter": "torch.onnx dynamo",
                    "exporter_rewrites_skipped": list(exported.rewrites_skipped),
                    "inputs": list(RERANKER_INPUTS),
                    "outputs": ["logits"],
                    "external_data": exported.external_data,
                },
                "variants": {BASE_VARIANT: base_variant_entry(exported.external_data)},
                "stages": [
                    {
                        "stage": "export",
                        "variant": BASE_VARIANT,
                        "format": fmt,
                        "seconds": round(time.perf_counter() - started, 1),
                        "options": {
                            "seq_cls": seq_cls,
                            "instruction": instruction,
                            "max_length": max_length,
                            "opset": opset,
                            "revision": revision,
                            "external_data": external_data,
                        },
                        "conversion": conversion,
                        "parity": parity,
                    }
                ],
                "validation": {},
            },
        )
    console.print(
        f"[green]exported[/] {source.id} -> {target.resolve()} ({fmt}, {time.perf_counter() - started:.0f} s)"
    )
    return ExportResult(target.resolve(), parity, source)
