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

from qconv.artifact import Artifact, new_build_id, variant_file
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
    smooth: float | str | None = None  # int8/q8: SmoothQuant alpha in (0, 1], or "auto" (search over 0.5-0.9)
    calibration: str | None = None  # calibration texts file (default: qconv's built-in multilingual pairs)
    keep: str | None = None  # auto | N | patterns (comma-separated): weight MatMuls kept fp32 by sensitivity
    recover: str | None = None  # "auto": the recovery ladder, fastest rung that meets the calibration target


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
        if options.recover:
            return f"qint8_{options.preset}_recovered"
        return (
            f"qint8_{options.preset}"
            + ("_sq" if options.smooth is not None else "")
            + ("_keep" if options.keep else "")
        )

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
        return matmul_nbits(MatMulNBitsQuantizer, model, options, excluded, bits=4), {
            "block_size": options.block_size,
            "accuracy_level": options.accuracy_level,
            "symmetric": True,
        }


def matmul_nbits(MatMulNBitsQuantizer, model, options, excluded, bits: int):
    """Weight-only block quantization of every MatMul (symmetric, ``bits`` wide) by onnxruntime's quantizer."""
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=bits,
        block_size=options.block_size,
        is_symmetric=True,
        accuracy_level=options.accuracy_level,
        nodes_to_exclude=sorted(excluded),
        op_types_to_quantize=("MatMul",),
    )
    quantizer.process()
    return quantizer.model.model


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


def _q8_kernels_missing() -> str | None:
    """Why the installed onnxruntime cannot run 8-bit MatMulNBits on CPU (None: it can)."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        weight = numpy_helper.from_array(np.linspace(-1, 1, 64 * 8, dtype=np.float32).reshape(64, 8), "W")
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["X", "W"], ["Y"], name="probe")],
            "q8_probe",
            [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, 64])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, 8])],
            [weight],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=32, is_symmetric=True, accuracy_level=4)
        quantizer.process()
        probe = quantizer.model.model
        if not any(n.op_type == "MatMulNBits" for n in probe.graph.node):
            return "its MatMulNBitsQuantizer does not write 8-bit MatMulNBits"
        session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        session.run(None, {"X": np.ones((1, 64), np.float32)})
    except Exception as exc:
        return one_line(exc, 160)
    return None


@register
class Q8(QuantizationMode):
    name = "q8"
    precision = "q8"
    converter = "onnxruntime MatMulNBitsQuantizer (8-bit blocks, weight-only)"
    default_accuracy_level = 4  # int8 compute with activations quantized per row per block

    def variant(self, options):
        return f"q8_acc{options.accuracy_level}"

    def validate_options(self, options):
        import onnxruntime as ort

        if options.accuracy_level is None:
            options.accuracy_level = self.default_accuracy_level
        if options.accuracy_level not in (1, 4):
            raise QconvError(f"--accuracy-level {options.accuracy_level} is not supported for q8 (4 or 1)")
        if options.block_size not in (16, 32, 64, 128, 256):
            raise QconvError(f"--block-size {options.block_size} is not supported (16, 32, 64, 128 or 256)")
        missing = _q8_kernels_missing()
        if missing:
            raise QconvError(f"--mode q8 needs 8-bit MatMulNBits; onnxruntime {ort.__version__} lacks it: {missing}")

    def run(self, model, src, options, excluded, work):
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        quantized = matmul_nbits(MatMulNBitsQuantizer, model, options, excluded, bits=8)
        info = {"bits": 8, "block_size": options.block_size, "accuracy_level": options.accuracy_level}
        if options.quantize_embeddings:
            info["embedding_tables"] = quantize_embedding_gathers(quantized)
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
    """Load the new variant and compare it with its source on built-in inputs: finite, and how close (the
    artifact's task knows its inputs and its figures)."""
    from qconv.tasks import task_of

    return task_of(art).compare_variants(art, variant, source_variant)


RECOVERY_MODES = ("int8", "q8")  # modes that --smooth / --recover apply to


def _check_recovery_options(mode: str, options: QuantizeOptions) -> None:
    """--smooth, --keep, --recover and --calibration, checked before any work."""
    from .calibration import load_calibration

    if options.smooth is not None:
        if mode not in RECOVERY_MODES:
            raise QconvError(f"--smooth applies to --mode {' or '.join(RECOVERY_MODES)}, not {mode}")
        if options.smooth != "auto":
            try:
                alpha = float(options.smooth)
            except (TypeError, ValueError):
                raise QconvError(f"--smooth must be a number in (0, 1] or 'auto', got '{options.smooth}'") from None
            if not 0.0 < alpha <= 1.0:
                raise QconvError(f"--smooth must be in (0, 1] or 'auto', got {options.smooth}")
            options.smooth = alpha
    if options.keep is not None:
        keep = str(options.keep).strip()
        if not keep:
            raise QconvError("--keep needs auto, a number of MatMuls or node/module patterns")
        if keep.isdigit() and int(keep) < 1:
            raise QconvError("--keep N needs N >= 1")
        options.keep = keep
    if options.recover is not None:
        if options.recover != "auto":
            raise QconvError(f"--recover takes 'auto', got '{options.recover}'")
        if mode != "int8":
            raise QconvError(f"--recover auto starts from --mode int8, not {mode}")
        if options.smooth is not None or options.keep is not None:
            raise QconvError("--recover auto chooses --smooth and --keep itself; pass one or the other")
    if options.calibration is not None or _needs_calibration(options):
        load_calibration(options.calibration)


def _needs_calibration(options: QuantizeOptions) -> bool:
    keep = options.keep
    return bool(options.smooth is not None or options.recover or (keep and (keep == "auto" or keep.isdigit())))


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
    _check_recovery_options(mode, options)
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
    src = art.variant_path(source_variant, verify=True)
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
            if _keep_is_pattern(options.keep):
                _kept_by_pattern(model, options.keep, excluded)  # a pattern that matches nothing: before any work
            external = needs_external_data(src)
            calib = None
            if _needs_calibration(options):
                from .calibration import calibration_source, load_calibration
                from .recovery import CalibrationSet

                calib = CalibrationSet.build(
                    art, src, load_calibration(options.calibration), calibration_source(options.calibration)
                )
            try:
                if options.recover:
                    result, info, spec = _recover(art, model, src, options, excluded, work, calib, external)
                else:
                    result, info = _build(spec, model, src, options, excluded, work, calib, external)
            except QconvError:
                raise
            except Exception as exc:
                raise QconvError(f"{mode} quantization of {source_variant} failed: {one_line(exc)}") from exc
            if calib is not None:
                info["calibration"] = {"texts": calib.source, "rows": sum(len(b["input_ids"]) for b in calib.batches)}
            unique_node_names(result)
            staged = work / target.name
            save_model(result, staged, external)
            if spec.name in RECOVERY_MODES:
                from .recovery import batch_coupling

                info["batch_coupling"] = batch_coupling(art, staged, src)
        # Registered provisionally so the runtime can open it; removed again if the check fails.
        check = check_staged(
            art, variant, staged, spec.precision, lambda name: check_variant(art, name, source_variant)
        )
        if not check["finite"]:
            raise QconvError(f"{variant} produces NaN or Inf on built-in inputs; nothing was written")
        install_staged(art, staged, target)

    facts = file_facts(target)
    size = facts["size_bytes"]
    entry = {
        "file": variant_file(variant),
        "build_id": new_build_id(),
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
    with art.staged_outputs() as stage:  # the quantize report (if any) and the manifest in one step
        if "calibration" in info:
            entry["report"] = _write_report(stage, variant, entry)
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
    shown = ", ".join(f"{k}={v:.6g}" for k, v in check.items() if isinstance(v, float))
    console.print(f"[green]quantized[/] {source_variant} -> {variant_file(variant)} ({size / 1e6:.1f} MB; {shown})")
    return variant, entry


def _write_report(stage: Path, variant: str, entry: dict) -> str:
    """reports/quantize-<variant>.json: smoothing, kept MatMuls and why, every ladder candidate, coupling."""
    import json

    path = stage / f"quantize-{variant}.json"
    path.write_text(json.dumps({"variant": variant, **entry}, indent=2, default=str), encoding="utf-8")
    return f"reports/{path.name}"


def _weight_matmuls(model, excluded: set[str]) -> list[str]:
    inits = {i.name: len(i.dims) for i in model.graph.initializer}
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "MatMul" and len(n.input) > 1 and inits.get(n.input[1]) == 2 and n.name not in excluded
    ]


def _build(spec, model, src, options, excluded, work, calib, external):
    """One quantized graph: optional SmoothQuant fold, optional kept MatMuls, then the mode's pass."""
    extra = {}
    if options.smooth is not None:
        model, extra["smoothquant"] = _smoothed(spec, model, src, options, excluded, work, calib, external)
    if options.keep:
        kept, extra["kept"] = _kept(spec, model, src, options, excluded, work, calib, external)
        excluded = excluded | kept
    result, info = spec.run(model, src, options, excluded, work)
    info.update(extra)
    return result, info


def _candidate(spec, model, src, options, excluded, work: Path, name: str, calib, external) -> dict:
    from dataclasses import replace

    folder = work / name
    folder.mkdir()
    plain = replace(options, smooth=None, keep=None, recover=None)
    result, _ = spec.run(model, src, plain, excluded, folder)
    return calib.evaluate(result, folder, "candidate", external)


def _smoothed(spec, model, src, options, excluded, work, calib, external):
    from . import smoothquant
    from .recovery import SMOOTH_ALPHAS, describe, log, public, score

    groups = smoothquant.find_groups(model)
    if not groups:
        return model, {"alpha": None, "sites": 0, "note": "no activation could be smoothed exactly"}
    ranges = smoothquant.activation_ranges(model, groups, calib.batches, work)
    searched = []
    if options.smooth == "auto":
        best = None
        for alpha in SMOOTH_ALPHAS:
            candidate, _ = smoothquant.smooth(model, groups, ranges, alpha)
            metrics = _candidate(spec, candidate, src, options, excluded, work, f"alpha{alpha}", calib, external)
            log(f"SmoothQuant alpha {alpha}: {describe(metrics)}")
            searched.append({"alpha": alpha, **public(metrics)})
            if best is None or score(metrics) > score(best[1]):
                best = (alpha, metrics)
            del candidate
        alpha = best[0]
    else:
        alpha = float(options.smooth)
    smoothed, summary = smoothquant.smooth(model, groups, ranges, alpha)
    info = {
        "alpha": alpha,
        "chosen_by": "best calibration parity over 0.5-0.9" if searched else "--smooth",
        "searched": searched,
        "sites": len(summary),
        "by_site": {site: sum(1 for s in summary if s["site"].split(" (")[0] == site) for site in _sites(summary)},
        "scale_min": min(s["scale_min"] for s in summary),
        "scale_max": max(s["scale_max"] for s in summary),
        "o_proj": "not smoothed (GQA shares each value channel across a group of query heads)",
    }
    return smoothed, info


def _sites(summary) -> list[str]:
    return sorted({s["site"].split(" (")[0] for s in summary})


def _keep_is_pattern(keep: str | None) -> bool:
    return bool(keep) and keep != "auto" and not keep.isdigit()


def _kept_by_pattern(model, keep: str, excluded: set[str]) -> tuple[set[str], list[dict]]:
    """Weight MatMuls whose node name or module matches one of the comma-separated patterns."""
    patterns = [p.strip() for p in keep.split(",") if p.strip()]
    nodes = {n.name: n for n in model.graph.node}
    kept = {
        name
        for name in _weight_matmuls(model, excluded)
        for pattern in patterns
        if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(module_scope(nodes[name]), pattern)
    }
    if not kept:
        raise QconvError(
            f"--keep '{keep}' matches no weight MatMul (node names or modules like 'model.layers.2.mlp.down_proj')"
        )
    return kept, [{"node": n, "module": module_scope(nodes[n]), "why": "named by --keep"} for n in sorted(kept)]


def _kept(spec, model, src, options, excluded, work, calib, external):
    """Weight MatMuls to keep fp32: named (patterns), the N most sensitive, or as many as the target needs."""
    from .recovery import describe, log, public, score, sensitivity

    candidates = _weight_matmuls(model, excluded)
    keep = options.keep
    if _keep_is_pattern(keep):
        kept, rows = _kept_by_pattern(model, keep, excluded)
        return kept, {"how": "patterns", "patterns": keep.split(","), "nodes": rows}
    ranking = sensitivity(model, candidates, calib.batches, work, per_channel=options.per_channel)
    nodes = {n.name: n for n in model.graph.node}
    steps = []
    if keep.isdigit():
        count = min(int(keep), len(ranking))
    else:
        count, limit, best = 0, max(1, len(ranking) // 4), None
        for size in sorted({min(2**i, limit) for i in range(0, 12)}):
            top = {r["node"] for r in ranking[:size]}
            metrics = _candidate(spec, model, src, options, excluded | top, work, f"keep{size}", calib, external)
            log(f"keep {size} most sensitive MatMul(s) fp32: {describe(metrics)}")
            steps.append({"kept": size, **public(metrics)})
            if metrics["meets_target"]:
                count = size
                break
            if best is None or score(metrics) > score(best[1]):
                best = (size, metrics)  # none meets the target: the best step tried
            count = best[0]
    kept_rows = [
        {
            "node": r["node"],
            "module": module_scope(nodes[r["node"]]),
            "relative_error": r["relative_error"],
            "why": f"sensitivity rank {i + 1} of {len(ranking)}",
        }
        for i, r in enumerate(ranking[:count])
    ]
    return {r["node"] for r in kept_rows}, {
        "how": "auto" if keep == "auto" else f"{count} most sensitive",
        "sensitivity": "relative output error of the MatMul alone under dynamic INT8, on calibration activations",
        "nodes": kept_rows,
        "steps": steps,
        "most_sensitive": ranking[:10],
    }


def _recover(art, model, src, options, excluded, work, calib, external):
    """--recover auto: the ladder from fastest to safest; the first rung that meets the target wins."""
    from qconv.errors import GateFailed

    from .recovery import LADDER, batch_coupling, describe, log, public

    tried = []
    searched_alpha = None  # the alpha search runs once; later rungs reuse its choice
    for index, rung in enumerate(LADDER):
        spec = MODES[rung.mode]
        rung_options = rung.options(options)
        if rung_options.smooth == "auto" and searched_alpha is not None:
            rung_options.smooth = searched_alpha
        if rung.mode == "q8":
            try:
                spec.validate_options(rung_options)
            except QconvError as exc:
                tried.append({"rung": rung.name, "skipped": str(exc)})
                continue
        folder = work / f"rung{index}"
        folder.mkdir()
        result, info = _build(spec, model, src, rung_options, excluded, folder, calib, external)
        if info.get("smoothquant", {}).get("searched"):
            searched_alpha = info["smoothquant"]["alpha"]
        metrics = calib.evaluate(result, folder, "rung", external)
        coupling = batch_coupling(art, metrics["path"], src)
        log(f"rung {rung.name}: {describe(metrics)}")
        tried.append({"rung": rung.name, "mode": rung.mode, **public(metrics), "batch_coupling": coupling})
        if metrics["meets_target"]:
            info["recovery"] = {
                "chosen": rung.name,
                "target": asdict(calib.target),
                "candidates": tried,
                "order": [r.name for r in LADDER],
            }
            info["mode"] = rung.mode
            return result, info, spec
        del result
    summary = "; ".join(f"{t['rung']}: {describe(t) if 'skipped' not in t else t['skipped']}" for t in tried)
    raise GateFailed(f"--recover auto: no rung meets the calibration target ({summary}); nothing was written")
