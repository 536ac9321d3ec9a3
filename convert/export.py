"""``qconv export embedding``: a sentence-embedding model to an ONNX artifact, proven by parity."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
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

from .onnx_graph import check_opset, export_module, release_weights
from .parity import ParityThresholds, compare_embedding_parity, embedding_reference, require_parity
from .pooling import resolve_pooling
from .source import SourceModel, load_config_dict, require_tokenizer, resolve_source
from .specs import EmbeddingSpec, embedding_spec
from .st_files import check_supported_modules, read_json, source_prompts, write_st_files
from .torch_embedding import build_embedding_module, load_base_model, load_tokenizer

DEFAULT_EMBEDDING_MODEL = "Qwen/Qwen3-Embedding-0.6B"
DEFAULT_OPSET = 18
EMBEDDING_INPUTS = ("input_ids", "attention_mask")
EMBEDDING_OUTPUTS = ("last_hidden_state", "sentence_embedding")
EMBEDDING_AXES = {
    "input_ids": {0: "batch_size", 1: "sequence_length"},
    "attention_mask": {0: "batch_size", 1: "sequence_length"},
    "last_hidden_state": {0: "batch_size", 1: "sequence_length"},
    "sentence_embedding": {0: "batch_size"},
}


@dataclass(frozen=True)
class ExportResult:
    path: Path
    parity: dict
    source: SourceModel


def resolve_max_length(model_dir: Path, tokenizer, config: dict, spec: EmbeddingSpec) -> int:
    st_length = read_json(model_dir / "sentence_bert_config.json").get("max_seq_length")
    tok_length = getattr(tokenizer, "model_max_length", None)
    length = st_length or (tok_length if tok_length and tok_length < 1_000_000 else None) or spec.default_max_length
    limits = [spec.max_length_cap] + (
        [config["max_position_embeddings"]] if config.get("max_position_embeddings") else []
    )
    return int(min([length] + limits))


def export_embedding(
    model: str = DEFAULT_EMBEDDING_MODEL,
    output: str | Path | None = None,
    *,
    pooling: str = "auto",
    normalize: bool = True,
    opset: int = DEFAULT_OPSET,
    revision: str | None = None,
    external_data: bool | None = None,
    overwrite: bool = False,
    thresholds: ParityThresholds = ParityThresholds(),
) -> ExportResult:
    started = time.perf_counter()
    source = resolve_source(model, revision)
    target = Path(output) if output else Path("artifacts") / source.name
    check_opset(opset)  # the checks that need no model come before the slow loading
    # Never replace the source model, its parent or a folder qconv did not make.
    check_output_dir(target, overwrite=overwrite, protected=[source.path])
    config = load_config_dict(source.path)
    model_type = config.get("model_type")
    if not model_type:
        raise QconvError(f"{source.path / 'config.json'} has no model_type")
    require_tokenizer(source.path, model_type)
    spec = embedding_spec(model_type)
    check_supported_modules(source.path)
    choice = resolve_pooling(source.path, pooling, spec)
    tokenizer = load_tokenizer(source.path)
    max_length = resolve_max_length(source.path, tokenizer, config, spec)
    st_config, prompts_source = source_prompts(source.path, spec.default_prompts)
    dimension = int(config["hidden_size"])

    with console.status(f"loading {source.id}"):
        module = build_embedding_module(load_base_model(source.path), choice.mode, normalize)
    with staged_directory(target, overwrite=overwrite, protected=[source.path]) as tmp:
        onnx_path = tmp / variant_file(BASE_VARIANT)
        with console.status(f"exporting {source.name} to ONNX (opset {opset})"):
            example = tokenizer(
                ["a short text", "a somewhat longer second text for shapes"], padding=True, return_tensors="pt"
            )
            exported = export_module(
                module,
                (example["input_ids"], example["attention_mask"]),
                onnx_path,
                input_names=EMBEDDING_INPUTS,
                output_names=EMBEDDING_OUTPUTS,
                dynamic_axes=EMBEDDING_AXES,
                opset=opset,
                external_data=external_data,
            )
        with console.status("checking ONNX against PyTorch"):
            reference = embedding_reference(module, tokenizer, max_length)
            release_weights(module)  # one copy of the weights at a time: the ONNX session loads next
            parity = compare_embedding_parity(reference, onnx_path, thresholds, invariant_sides=spec.padding_sides)
        print_parity(parity)
        require_parity(parity)
        shutil.copyfile(source.path / "config.json", tmp / "config.json")
        # fastembed and transformers.js truncate at model_max_length: the same limit as qconv and ST.
        tokenizer.model_max_length = max_length
        tokenizer.save_pretrained(tmp)
        st_files = write_st_files(
            tmp,
            pooling=choice.mode,
            normalize=normalize,
            dimension=dimension,
            max_length=max_length,
            do_lower_case=bool(read_json(source.path / "sentence_bert_config.json").get("do_lower_case")),
            st_config=st_config,
        )
        write_new_manifest(
            tmp,
            {
                "task": "embedding",
                "architecture": model_type,
                "source": source.to_manifest(),
                "embedding": {
                    "pooling": choice.mode,
                    "pooling_source": choice.source,
                    "normalize": normalize,
                    "dimension": dimension,
                    "padding_side": tokenizer.padding_side,
                    "max_length": max_length,
                    "prompts": st_config.get("prompts", {}),
                    "default_prompt_name": st_config.get("default_prompt_name"),
                    "prompts_source": prompts_source,
                    "instruction_template": spec.instruction_template,
                },
                "export": {
                    "opset": opset,
                    "exporter": "torch.onnx dynamo",
                    "exporter_rewrites_skipped": list(exported.rewrites_skipped),
                    "inputs": list(EMBEDDING_INPUTS),
                    "outputs": list(EMBEDDING_OUTPUTS),
                    "external_data": exported.external_data,
                    "sentence_transformers_files": st_files,
                },
                "variants": {BASE_VARIANT: base_variant_entry(exported.external_data)},
                "stages": [
                    {
                        "stage": "export",
                        "variant": BASE_VARIANT,
                        "seconds": round(time.perf_counter() - started, 1),
                        "options": {
                            "pooling": pooling,
                            "normalize": normalize,
                            "opset": opset,
                            "revision": revision,
                            "external_data": external_data,
                        },
                        "parity": parity,
                    }
                ],
                "validation": {},
            },
        )
    console.print(
        f"[green]exported[/] {source.id} -> {target.resolve()} ({choice.mode} pooling, "
        f"{'normalised' if normalize else 'not normalised'}, {time.perf_counter() - started:.0f} s)"
    )
    return ExportResult(target.resolve(), parity, source)


def print_parity(parity: dict) -> None:
    mark = "[green]ok[/]" if parity["passed"] else "[red]FAILED[/]"
    console.print(
        f"parity ONNX vs PyTorch on {parity['texts']} built-in texts ({parity['runs']}): "
        f"cosine_min={parity['cosine_min']:.7f} max_abs_diff={parity['max_abs_diff']:.2e} "
        f"padding_invariance={parity['padding_invariance_cosine_min']:.7f} {mark}"
    )
