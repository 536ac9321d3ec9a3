"""``qconv quantize``: INT8 (CPU), q4 and q4f16 (GPU), fp16 variants beside the others in ``onnx/``.

Each mode is a small registered pass with declared options (Olive-style); the command writes the new
variant to a temporary file, checks it loads and stays finite and close to its source variant, and only
then moves it into place and records the stage in the manifest.
"""

from __future__ import annotations

import contextlib
import fnmatch
import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

from qconv.artifact import Artifact, variant_file
from qconv.console import console
from qconv.errors import QconvError, one_line

from .graph_passes import convert_to_fp16, quantize_embedding_gathers, unique_node_names
from .onnx_graph import read_onnx
from .variants import check_staged, file_facts, install_staged, needs_external_data, save_model, staging_dir

INT8_PRESETS = {
    # reduce_range: 7-bit weights avoid the u8 x s8 saturation of AVX2/AVX-512 without VNNI (vpmaddubsw).
    "avx512_vnni": {"reduce_range": False},
    "avx2": {"reduce_range": True},
    "arm64": {"reduce_range": False},
}


class _DropPreprocessAdvice(logging.Filter):
    # onnxruntime logs this advice on the root logger for every model; qconv runs the pre-processing itself
    # when the quantizer needs it (see Int8Dynamic.run), so the line only misleads.
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Please consider to run pre-processing")


@contextlib.contextmanager
def _without_preprocess_advice():
    advice_filter = _DropPreprocessAdvice()
    root = logging.getLogger()
    root.addFilter(advice_filter)
    try:
        yield
    finally:
        root.removeFilter(advice_filter)


# MatMulNBits accuracy levels: 0 = the kernel's default, 1-4 = fp32, fp16, bf16, int8 compute.
ACCURACY_LEVELS = (0, 1, 2, 3, 4)


@contextlib.contextmanager
def _quiet_nbits_quantizer():
    """onnxruntime's 4-bit quantizer calls ``logging.basicConfig(level=INFO)`` when imported and logs one INFO
    line per node (~258 on Qwen3): keep its logger at WARNING and the root logger's level as it was."""
    root = logging.getLogger()
    root_level = root.level
    nbits = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    nbits_level = nbits.level
    nbits.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.setLevel(root_level)
        nbits.setLevel(nbits_level)


def detect_preset() -> str:
    if platform.machine().lower() in ("arm64", "aarch64"):
        return "arm64"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    return "avx512_vnni" if "avx512_vnni" in flags else "avx2"


@dataclass
class QuantizeOptions:
    per_channel: bool = True
    preset: str | None = None  # int8: detected from the running CPU when None
    block_size: int = 32  # q4/q4f16
    accuracy_level: int | None = None  # q4/q4f16: MatMulNBits compute precision (None: the kernel's default)
    quantize_embeddings: bool | None = None  # None: the mode's default
    exclude: list[str] = field(default_factory=list)  # fnmatch patterns over node names, kept full precision


class QuantizationMode:
    name: ClassVar[str]
    precision: ClassVar[str]
    converter: ClassVar[str]
    embeddings_by_default: ClassVar[bool] = False

    def variant(self, options: QuantizeOptions) -> str:
        return self.name

    def validate_options(self, options: QuantizeOptions) -> None:
        pass

    def run(self, model, src: Path, options: QuantizeOptions, excluded: set[str], work: Path) -> tuple[object, dict]:
        raise NotImplementedError


MODES: dict[str, QuantizationMode] = {}


def register(cls: type[QuantizationMode]) -> type[QuantizationMode]:
    MODES[cls.name] = cls()
    return cls


@register
class Int8Dynamic(QuantizationMode):
    name = "int8"
    precision = "int8"
    converter = "onnxruntime.quantization.quantize_dynamic (weight MatMuls only) + qconv int8 embedding table"
    embeddings_by_default = True

    def variant(self, options):
        return f"qint8_{options.preset}"

    def validate_options(self, options):
        if options.preset not in INT8_PRESETS:
            raise QconvError(f"unknown --preset '{options.preset}' (choose {', '.join(INT8_PRESETS)})")

    def run(self, model, src, options, excluded, work):
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        staged = work / "in.onnx"
        save_model(model, staged, external=True)
        out = work / "int8.onnx"
        kwargs = dict(
            per_channel=options.per_channel,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            nodes_to_exclude=sorted(excluded),
            use_external_data_format=True,
            # activation x activation MatMuls (attention) stay fp32: quantizing them hurts Qwen3
            extra_options={"MatMulConstBOnly": True},
            **INT8_PRESETS[options.preset],
        )
        with _without_preprocess_advice():
            try:
                quantize_dynamic(str(staged), str(out), **kwargs)
            except Exception as exc:
                # Graphs rewritten by ORT's optimizer lose value types that the quantizer's shape inference
                # needs ("Unable to find data type for weight_name"); ORT's pre-processing restores them.
                from onnxruntime.quantization.shape_inference import quant_pre_process

                console.print(
                    f"[yellow]quantize_dynamic failed ({one_line(exc, 120)}); retrying after quant_pre_process[/]"
                )
                pre = work / "pre.onnx"
                quant_pre_process(str(staged), str(pre), skip_optimization=True, save_as_external_data=True)
                quantize_dynamic(str(pre), str(out), **kwargs)
        quantized = onnx.load(str(out))
        info = {"preset": options.preset, "per_channel": options.per_channel, **INT8_PRESETS[options.preset]}
        if options.quantize_embeddings:
            info["embedding_tables"] = quantize_embedding_gathers(quantized)
        return quantized, info


class _BlockwiseQ4(QuantizationMode):
    def validate_options(self, options):
        if options.block_size not in (16, 32, 64, 128, 256):
            raise QconvError(f"--block-size {options.block_size} is not supported (16, 32, 64, 128 or 256)")
        if options.accuracy_level is not None and options.accuracy_level not in ACCURACY_LEVELS:
            raise QconvError(
                f"--accuracy-level {options.accuracy_level} is not a MatMulNBits accuracy level "
                f"({', '.join(map(str, ACCURACY_LEVELS))})"
            )

    def quantize_q4(self, model, options, excluded):
        with _quiet_nbits_quantizer():
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

            return self._quantize_q4(MatMulNBitsQuantizer, model, options, excluded)

    def _quantize_q4(self, MatMulNBitsQuantizer, model, options, excluded):
        quantizer = MatMulNBitsQuantizer(
            model,
            bits=4,
            block_size=options.block_size,
            is_symmetric=True,
            accuracy_level=options.accuracy_level,
            nodes_to_exclude=sorted(excluded),
            op_types_to_quantize=("MatMul",),
        )
        quantizer.process()
        return quantizer.model.model, {
            "block_size": options.block_size,
            "accuracy_level": options.accuracy_level,
            "symmetric": True,
        }


@register
class Q4(_BlockwiseQ4):
    name = "q4"
    precision = "q4"
    converter = "onnxruntime MatMulNBitsQuantizer (4-bit blocks, fp32 activations)"

    def run(self, model, src, options, excluded, work):
        quantized, info = self.quantize_q4(model, options, excluded)
        if options.quantize_embeddings:
            info["embedding_tables"] = quantize_embedding_gathers(quantized)
        return quantized, info


@register
class Q4F16(_BlockwiseQ4):
    name = "q4f16"
    precision = "q4f16"
    converter = "onnxruntime MatMulNBitsQuantizer (4-bit blocks) + qconv selective fp16"

    def run(self, model, src, options, excluded, work):
        quantized, info = self.quantize_q4(model, options, excluded)
        unique_node_names(quantized)
        info["fp16"] = convert_to_fp16(quantized, exclude=excluded)
        return quantized, info


@register
class Fp16(QuantizationMode):
    name = "fp16"
    precision = "fp16"
    converter = "qconv selective fp16 (MatMul/Gemm/Gather in fp16; norms, softmax, residual adds in fp32)"

    def run(self, model, src, options, excluded, work):
        return model, {"fp16": convert_to_fp16(model, exclude=excluded)}


def module_scope(node) -> str:
    """The PyTorch module a node came from (``model.layers.1.mlp.down_proj``), from exporter metadata."""
    import ast

    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return ""
            return scopes[-2] if len(scopes) >= 2 else ""
    return ""


def _matching_nodes(model, patterns: list[str]) -> set[str]:
    """Names of nodes whose name or module scope matches any pattern (fnmatch)."""
    matched: set[str] = set()
    for pattern in patterns:
        hits = {
            n.name
            for n in model.graph.node
            if fnmatch.fnmatchcase(n.name, pattern) or fnmatch.fnmatchcase(module_scope(n), pattern)
        }
        if not hits:
            raise QconvError(
                f"--exclude '{pattern}' matches no node name or module (modules look like "
                f"'model.layers.0.mlp.down_proj')"
            )
        matched |= hits
    return matched


def check_variant(art: Artifact, variant: str, source_variant: str) -> dict:
    """Load the new variant and compare it with its source on built-in inputs: finite, and how close."""
    import numpy as np

    from qconv.numerics import cosine_rows

    from .parity import PARITY_TEXTS
    from .seqcls import VERIFY_PAIRS

    def timed(run) -> tuple[object, float]:
        # Best of three: a rough CPU latency for the record, not a benchmark.
        best, out = float("inf"), None
        for _ in range(3):
            start = time.perf_counter()
            out = run()
            best = min(best, time.perf_counter() - start)
        return out, round(best * 1000, 2)

    if art.task == "embedding":
        from qconv.runtime import Embedder

        new_model, old_model = Embedder(art, variant=variant), Embedder(art, variant=source_variant)
        new, new_ms = timed(lambda: new_model.encode(list(PARITY_TEXTS), batch_size=len(PARITY_TEXTS)))
        old, old_ms = timed(lambda: old_model.encode(list(PARITY_TEXTS), batch_size=len(PARITY_TEXTS)))
        cos = cosine_rows(new, old)
        result = {
            "against": source_variant,
            "texts": len(PARITY_TEXTS),
            "cosine_min": float(cos.min()),
            "cosine_mean": float(cos.mean()),
            "max_abs_diff": float(np.abs(new - old).max()),
        }
    else:
        from qconv.reranking import Reranker

        new_model, old_model = Reranker(art, variant=variant), Reranker(art, variant=source_variant)
        seqs = [new_model.encoder.encode(q, d) for q, d in VERIFY_PAIRS]
        new, new_ms = timed(lambda: new_model.score_ids(seqs, batch_size=len(seqs)))
        old, old_ms = timed(lambda: old_model.score_ids(seqs, batch_size=len(seqs)))
        result = {"against": source_variant, "pairs": len(seqs), "max_abs_score_diff": float(np.abs(new - old).max())}
    result.update(
        finite=bool(np.isfinite(new).all()),
        latency_ms=new_ms,
        source_latency_ms=old_ms,
        latency_note="one batch of the built-in inputs on CPU, best of 3",
    )
    return result


def quantized_variant(mode: str, source_variant: str, options: QuantizeOptions) -> str:
    """The variant name ``quantize`` will write; fills in the option defaults that depend on the mode."""
    if mode not in MODES:
        raise QconvError(f"unknown mode '{mode}' (choose {', '.join(MODES)})")
    spec = MODES[mode]
    if mode == "int8" and options.preset is None:
        options.preset = detect_preset()
    if options.quantize_embeddings is None:
        options.quantize_embeddings = spec.embeddings_by_default
    spec.validate_options(options)
    name = spec.variant(options)
    return name if source_variant == "model" else f"{source_variant}_{name}"


def quantize(
    artifact: Artifact | str | Path,
    mode: str,
    *,
    source_variant: str = "model",
    options: QuantizeOptions | None = None,
    overwrite: bool = False,
) -> tuple[str, dict]:
    """Write ``onnx/model_<variant>.onnx`` from ``source_variant``; returns (variant, manifest entry)."""
    started = time.perf_counter()
    art = artifact if isinstance(artifact, Artifact) else Artifact(artifact)
    options = options or QuantizeOptions()
    variant = quantized_variant(mode, source_variant, options)
    spec = MODES[mode]
    src = art.variant_path(source_variant)
    source_precision = art.variants[source_variant].get("precision", "fp32")
    if source_precision != "fp32":
        raise QconvError(f"variant '{source_variant}' is {source_precision}; quantize from an fp32 variant")
    target = art.path / variant_file(variant)
    if variant in art.variants and not overwrite:
        raise QconvError(f"variant '{variant}' already exists in {art.name} (pass --overwrite to replace it)")

    with staging_dir(art, "quantize") as work:
        with console.status(f"quantizing {source_variant} -> {variant} ({mode})"):
            model = read_onnx(src)
            unique_node_names(model)
            excluded = _matching_nodes(model, options.exclude) if options.exclude else set()
            try:
                result, info = spec.run(model, src, options, excluded, work)
            except QconvError:
                raise
            except Exception as exc:
                raise QconvError(f"{mode} quantization of {source_variant} failed: {one_line(exc)}") from exc
            unique_node_names(result)
            staged = work / target.name
            save_model(result, staged, needs_external_data(src))
        # Registered provisionally so the runtime can open it; removed again if the check fails.
        check = check_staged(
            art, variant, staged, spec.precision, lambda name: check_variant(art, name, source_variant)
        )
        if not check["finite"]:
            raise QconvError(f"{variant} produces NaN or Inf on built-in inputs; nothing was written")
        install_staged(staged, target)

    facts = file_facts(target)
    size = facts["size_bytes"]
    entry = {
        "file": variant_file(variant),
        "precision": spec.precision,
        "stage": "quantize",
        "mode": mode,
        "from": source_variant,
        "converter": spec.converter,
        "options": asdict(options),
        "details": info,
        **facts,
        "check": check,
    }
    art.variants[variant] = entry
    art.add_stage(
        {
            "stage": "quantize",
            "variant": variant,
            "mode": mode,
            "from": source_variant,
            "seconds": round(time.perf_counter() - started, 1),
        }
    )
    art.save()
    shown = ", ".join(f"{k}={v:.6g}" for k, v in check.items() if isinstance(v, float))
    console.print(f"[green]quantized[/] {source_variant} -> {variant_file(variant)} ({size / 1e6:.1f} MB; {shown})")
    return variant, entry
