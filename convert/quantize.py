"""``qconv quantize``: INT8 (CPU), q8, q4 and q4f16 (GPU), fp16 variants beside the others in ``onnx/``.

Each mode is a registered class (``register``) declaring, in one place, its own options as a typed dataclass,
its default validation gates per task and its target providers; the CLI flags, the recipe's quantize stage,
the manifest record and the card's reproduce command are generated from that (Olive-style passes). The
command writes the new variant to a temporary file, checks it loads and stays finite and close to its source
variant, and only then moves it into place and records the stage in the manifest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import logging
import platform
import re
import shutil
import time
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, NamedTuple

from qconv.artifact import Artifact, new_build_id, variant_file
from qconv.console import console
from qconv.errors import QconvError, one_line
from qconv.pipeline.options import flag_of, option

from .fake_quant import FakeQuant
from .graph_passes import convert_to_fp16, quantize_embedding_gathers, unique_node_names
from .onnx_graph import read_onnx
from .onnx_proto import with_initializers
from .per_token import per_token_activations
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


# -- the quantize stage's configuration: common options + each mode's own, declared once -----------------


@dataclass
class QuantizeCommonHead:
    """Options every mode has, before the mode's own (recipe keys, CLI flags and their order)."""

    mode: str = field(default="", metadata=option("Quantization mode."))
    source: str = field(default="model", metadata=option("Variant to quantize.", key="from"))


@dataclass
class QuantizeCommonTail:
    """Options every mode has, after the mode's own. A mode may redeclare one to change its default."""

    quantize_embeddings: bool = field(default=False, metadata=option("Also store the embedding table as int8."))
    exclude: list[str] = field(
        default_factory=list, metadata=option("Keep nodes whose name matches this pattern in full precision.")
    )
    keep: str | None = field(
        default=None,
        metadata=option("auto | N | PATTERN[,PATTERN]: weight MatMuls kept fp32 (by sensitivity or by name)."),
    )
    recover: Literal["auto"] | None = field(
        default=None,
        metadata=option("auto: try int8, +smooth, per-token, +keep, q8; keep the fastest that meets the target."),
    )
    calibration: str | None = field(
        default=None, metadata=option("Calibration texts, one per line [default: built-in].", file=True)
    )


class QuantizeConfig:
    """Base of every mode's generated config dataclass (common head + the mode's options + common tail)."""

    mode: str
    source: str


def _config_class(mode: type[QuantizationMode]) -> type:
    """The mode's full config: common head, its own options (``mode.options``), common tail, flattened so
    that the recipe keys, the CLI flags and the stored record read as one mapping."""
    own = {f.name: f for f in dataclasses.fields(mode.options)} if mode.options else {}
    own_hints = typing.get_type_hints(mode.options) if mode.options else {}
    common = []
    for part in (QuantizeCommonHead, QuantizeCommonTail):
        hints = typing.get_type_hints(part)
        common.append([(own.get(f.name, f), own_hints.get(f.name, hints[f.name])) for f in dataclasses.fields(part)])
    head, tail = common
    common_names = {f.name for f, _ in head + tail}
    middle = [(f, own_hints[f.name]) for name, f in own.items() if name not in common_names]

    def spec(f, tp):
        kwargs = {"metadata": f.metadata}
        if f.name == "mode":
            kwargs["default"] = mode.name
        elif f.default is not dataclasses.MISSING:
            kwargs["default"] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            kwargs["default_factory"] = f.default_factory
        return (f.name, tp, field(**kwargs))

    name = "".join(p.capitalize() for p in re.split(r"[^A-Za-z0-9]", mode.name)) + "Config"
    config = dataclasses.make_dataclass(name, [spec(f, tp) for f, tp in head + middle + tail], bases=(QuantizeConfig,))
    config.__module__ = mode.__module__  # the types are resolved already: hints do not depend on it
    return config


class QuantizationMode:
    """One registered quantization mode: what it makes, the options it takes, the gates its variants meet.

    ``options`` is a dataclass of the mode's own options (fields with ``qconv.pipeline.options.option``
    metadata: help, allowed values, range); the common options are added around it (``config``, built at
    registration). ``gates``: task -> default validation gates (``qconv.gates.GATES`` names);
    a task the mode declares none for cannot validate its variants. ``providers``: the execution providers
    its variants are made for (the card).
    """

    name: ClassVar[str]
    precision: ClassVar[str]
    converter: ClassVar[str]
    description: ClassVar[str]  # a few words for --mode's help
    options: ClassVar[type | None] = None
    gates: ClassVar[dict[str, dict[str, float]]] = {}
    providers: ClassVar[tuple[str, ...]] = ("CPUExecutionProvider",)
    config: ClassVar[type]

    # Activations quantized at run time, where a text's output may depend on its batch: measured per variant.
    measure_batch_coupling: ClassVar[bool] = False
    # ``run`` rewrites the graph it is given (onnxruntime's MatMulNBitsQuantizer, the fp16 converter) instead
    # of writing a new one; the ladder gives such a mode a copy when a later rung needs the graph again.
    modifies_input: ClassVar[bool] = False

    def variant(self, config) -> str:
        return self.name

    def fake_quant(self, config) -> FakeQuant | None:
        """What ``run`` does to one MatMul, in NumPy (convert/fake_quant.py), for choices made on calibration
        activations (SmoothQuant's alpha per site); None where no stand-in is written."""
        return None

    def resolve(self, config) -> None:
        """Fill in what depends on the machine and check what no declaration can (before any work)."""

    def run(self, model, src: Path, config, excluded: set[str], work: Path) -> tuple[object, dict]:
        raise NotImplementedError


MODES: dict[str, QuantizationMode] = {}


def register(cls: type[QuantizationMode]) -> type[QuantizationMode]:
    """Class decorator: the mode's config class is generated and its gates checked here, once."""
    from qconv.gates import check_gates

    if cls.name in MODES:
        raise ValueError(f"quantization mode '{cls.name}' is registered twice")
    for task, gates in cls.gates.items():
        check_gates(task, gates, f"--mode {cls.name}")
    cls.config = _config_class(cls)
    MODES[cls.name] = cls()
    return cls


def unregister(name: str) -> None:
    MODES.pop(name)


def get_mode(name: str) -> QuantizationMode:
    if name not in MODES:
        raise QconvError(f"unknown mode '{name}' (choose {', '.join(MODES)})")
    return MODES[name]


def owners_of(name: str) -> list[str]:
    """The modes whose config declares an option."""
    return [m.name for m in MODES.values() if name in {f.name for f in dataclasses.fields(m.config)}]


def configure(mode: str, **given):
    """The mode's config from options given by name (CLI, Python API); None means 'not given'.

    An option the mode does not declare is an error naming the modes that do."""
    spec = get_mode(mode)
    fields = {f.name: f for f in dataclasses.fields(spec.config)}
    values = {}
    for name, value in given.items():
        if value is None:
            continue
        if name not in fields:
            owners = owners_of(name)
            if not owners:
                raise QconvError(f"unknown quantize option '{name}'")
            declared = next(f for f in dataclasses.fields(MODES[owners[0]].config) if f.name == name)
            raise QconvError(f"{flag_of(declared)} applies to --mode {' or '.join(owners)}, not {mode}")
        values[name] = list(value) if isinstance(value, tuple) else value
    return spec.config(**values)


class QuantizeOptions:
    """Options by name for any mode (the Python API's spelling of the CLI flags, e.g. ``preset="avx2"``);
    ``quantize()`` turns them into the mode's config and refuses those the mode does not declare."""

    def __init__(self, **given):
        self.given = given

    def __repr__(self) -> str:
        return f"QuantizeOptions({', '.join(f'{k}={v!r}' for k, v in self.given.items())})"


def target_providers() -> dict[str, tuple[str, ...]]:
    """The execution providers each precision is made for, as the modes declare them (fp32: the export)."""
    table = {"fp32": ("CPUExecutionProvider", "CUDAExecutionProvider")}
    for mode in MODES.values():
        table.setdefault(mode.precision, mode.providers)
    return table


BLOCK_SIZES = (16, 32, 64, 128, 256)
_CPU, _CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
# Embedding gates of the 8-bit modes (also q8's: weight-only 8-bit blocks are at least as close as int8).
_INT8_GATES = {
    "embedding": {"max_delta": 0.01, "min_cosine_mean": 0.99},
    # Rerankers: the embedding gates' counterparts on MRR@10 (delta) and top-1 agreement.
    "reranker": {"max_delta": 0.01, "min_top1": 0.9},
}
_Q4_GATES = {"embedding": {"max_delta": 0.02}, "reranker": {"max_delta": 0.02, "min_top1": 0.8}}


def _smooth_option():
    return field(
        default=None,
        metadata=option("SmoothQuant alpha in (0, 1], or auto (searched over 0.5-0.9)."),
    )


@dataclass
class Int8Options:
    per_channel: bool = field(
        default=True, metadata=option("one scale per weight tensor instead of per channel.", flag="--per-tensor")
    )
    preset: Literal["avx512_vnni", "avx2", "arm64"] | None = field(
        default=None, metadata=option("avx512_vnni | avx2 | arm64 [default: detected from this CPU].")
    )
    smooth: str | None = _smooth_option()
    activations: Literal["per-tensor", "per-token"] = field(
        default="per-tensor",
        metadata=option(
            "per-tensor: one dynamic scale per MatMul input (ORT's DynamicQuantizeLinear); per-token: one per "
            "token, so a token with massive activations costs only itself and no output depends on its batch."
        ),
    )
    quantize_embeddings: bool = field(default=True, metadata=option("Also store the embedding table as int8."))


@register
class Int8Dynamic(QuantizationMode):
    name = "int8"
    precision = "int8"
    converter = "onnxruntime.quantization.quantize_dynamic (weight MatMuls only) + qconv int8 embedding table"
    description = "dynamic INT8 weight MatMuls (CPU)"
    options = Int8Options
    gates = _INT8_GATES
    providers = (_CPU,)

    # Per-tensor activations couple a text to its batch; per-token ones should not: measured for both, so
    # the record shows it.
    measure_batch_coupling = True

    def variant(self, config):
        if config.recover:
            return f"qint8_{config.preset}_recovered"
        return (
            f"qint8_{config.preset}"
            + ("_pt" if config.activations == "per-token" else "")
            + ("_sq" if config.smooth is not None else "")
            + ("_keep" if config.keep else "")
        )

    def fake_quant(self, config):
        return FakeQuant(
            per_channel=config.per_channel,
            per_token=config.activations == "per-token",
            reduce_range=INT8_PRESETS[config.preset]["reduce_range"],
        )

    def resolve(self, config):
        if config.preset is None:
            config.preset = detect_preset()

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
            except OSError:
                raise  # a full disk or a permission is no shape-inference gap: a retry would only write more
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
        # The ladder runs this a dozen times in one staging folder: 3 GB of inputs per run on a 0.6B model.
        for made in ("in.onnx", "pre.onnx", "int8.onnx"):
            for leftover in work.glob(f"{made}*"):  # the file and its external data (_data or .data)
                leftover.unlink()
        info = {"preset": options.preset, "per_channel": options.per_channel, **INT8_PRESETS[options.preset]}
        info["activations"] = options.activations
        if options.activations == "per-token":
            info["per_token_inputs"] = per_token_activations(quantized)
        if options.quantize_embeddings:
            info["embedding_tables"] = quantize_embedding_gathers(quantized)
        return quantized, info


@dataclass
class BlockwiseOptions:
    block_size: int = field(default=32, metadata=option("weights per scale.", choices=BLOCK_SIZES))
    # MatMulNBits accuracy levels: 0 = the kernel's default, 1-4 = fp32, fp16, bf16, int8 compute.
    accuracy_level: int | None = field(
        default=None,
        metadata=option("MatMulNBits compute precision 0-4 [default: the kernel's].", range=(0, 4)),
    )


class _BlockwiseQ4(QuantizationMode):
    options = BlockwiseOptions
    gates = _Q4_GATES
    modifies_input = True

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
    description = "4-bit weight blocks, fp32 activations"
    providers = (_CPU, _CUDA)

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
    description = "4-bit weight blocks, fp16 elsewhere (GPU)"
    providers = (_CUDA,)

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


@dataclass
class Q8Options:
    block_size: int = field(default=32, metadata=option("weights per scale.", choices=BLOCK_SIZES))
    # 4: int8 compute with activations quantized per row per block
    accuracy_level: int = field(default=4, metadata=option("4 (int8 compute) or 1 (fp32 compute).", choices=(4, 1)))
    smooth: str | None = _smooth_option()


@register
class Q8(QuantizationMode):
    name = "q8"
    precision = "q8"
    converter = "onnxruntime MatMulNBitsQuantizer (8-bit blocks, weight-only)"
    description = "8-bit weight blocks, weight-only (CPU)"
    options = Q8Options
    gates = _INT8_GATES
    providers = (_CPU,)

    # Accuracy level 4 quantizes activations per row and block, which should not couple rows; measured
    # anyway, since that is ORT's kernel behaviour and not something this graph guarantees.
    measure_batch_coupling = True
    modifies_input = True

    def variant(self, config):
        # Smoothed weights are a different model: the same name would replace (or refuse) the plain one.
        return f"q8_acc{config.accuracy_level}" + ("_sq" if config.smooth is not None else "")

    def resolve(self, config):
        import onnxruntime as ort

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
    description = "selective fp16 (GPU)"
    gates = {"embedding": {"min_cosine": 0.999}, "reranker": {"max_delta": 1e-3, "min_top1": 0.95}}
    providers = (_CUDA,)
    modifies_input = True

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
            example = next((m for m in map(module_scope, model.graph.node) if ".layers." in m), "")
            like = f" (modules look like '{example}')" if example else ""
            raise QconvError(f"--exclude '{pattern}' matches no node name or module{like}")
        matched |= hits
    return matched


def check_variant(art: Artifact, variant: str, source_variant: str) -> dict:
    """Load the new variant and compare it with its source on built-in inputs: finite, and how close (the
    artifact's task knows its inputs and its figures)."""
    from qconv.tasks import task_of

    return task_of(art).compare_variants(art, variant, source_variant)


def _check_recovery_options(config) -> None:
    """--smooth, --keep, --recover and --calibration, checked before any work."""
    from .calibration import load_calibration

    smooth = getattr(config, "smooth", None)
    if smooth is not None and smooth != "auto":
        try:
            alpha = float(smooth)
        except (TypeError, ValueError):
            raise QconvError(f"--smooth must be a number in (0, 1] or 'auto', got '{smooth}'") from None
        if not 0.0 < alpha <= 1.0:
            raise QconvError(f"--smooth must be in (0, 1] or 'auto', got {smooth}")
        config.smooth = alpha
    if config.keep is not None:
        keep = str(config.keep).strip()
        if not keep:
            raise QconvError("--keep needs auto, a number of MatMuls or node/module patterns")
        if keep.isdigit() and int(keep) < 1:
            raise QconvError("--keep N needs N >= 1")
        config.keep = keep
    if config.recover is not None:
        if config.recover != "auto":
            raise QconvError(f"--recover takes 'auto', got '{config.recover}'")
        if config.mode != LADDER_START:
            raise QconvError(f"--recover auto starts from --mode {LADDER_START}, not {config.mode}")
        if smooth is not None or config.keep is not None:
            raise QconvError("--recover auto chooses --smooth and --keep itself; pass one or the other")
    if config.calibration is not None or _needs_calibration(config):
        load_calibration(config.calibration)


LADDER_START = "int8"  # the mode --recover auto starts from (its ladder: convert/recovery.py)


def _needs_calibration(config) -> bool:
    keep = config.keep
    smooth = getattr(config, "smooth", None)
    return bool(smooth is not None or config.recover or (keep and (keep == "auto" or keep.isdigit())))


def _check_declared(config) -> None:
    """Every value against its declaration (allowed values, range), in the CLI's words."""
    from qconv.pipeline.options import check_config

    check_config(config, config.mode)


def resolved(config):
    """A checked copy of ``config`` with the machine-dependent defaults filled in (the int8 preset)."""
    if not isinstance(config, QuantizeConfig):
        raise TypeError(f"expected a quantize config, got {type(config).__name__}")
    config = dataclasses.replace(config)
    spec = get_mode(config.mode)
    _check_declared(config)
    spec.resolve(config)
    _check_declared(config)
    _check_recovery_options(config)
    return config


def variant_name(config) -> str:
    """The variant a resolved config writes (``<from>_<mode's name>`` unless from the base graph)."""
    name = MODES[config.mode].variant(config)
    return name if config.source == "model" else f"{config.source}_{name}"


def quantized_variant(config) -> str:
    """The variant name ``quantize`` will write for ``config`` (checked; the config is not changed)."""
    return variant_name(resolved(config))


def as_config(mode: str, source_variant: str | None, options):
    """The mode's config from what ``quantize()`` was given: a config, ``QuantizeOptions`` or nothing."""
    if isinstance(options, QuantizeConfig):
        if options.mode != mode:
            raise QconvError(f"a {options.mode} config given for --mode {mode}")
        if source_variant not in (None, options.source):
            raise QconvError(f"source variant '{source_variant}' given with a config from '{options.source}'")
        return options
    given = dict(options.given) if options is not None else {}
    return configure(mode, source=source_variant, **given)


def record_of(config) -> dict:
    """A config as the manifest stores it (its mode and source sit beside it in the entry)."""
    from qconv.pipeline.options import key_of, public_fields

    return {key_of(f): getattr(config, f.name) for f in public_fields(config) if f.name not in ("mode", "source")}


def config_of_record(entry: dict):
    """The config a manifest entry was made with (None: not a known mode); keys a mode does not declare are
    ignored (entries written before each mode had its own options hold every mode's keys)."""
    from qconv.pipeline.options import from_data

    mode = entry.get("mode", entry.get("precision"))
    if mode not in MODES:
        return None
    return from_data(MODES[mode].config, entry.get("options") or {}, mode=mode, source=entry.get("from", "model"))


def quantize(
    artifact: Artifact | str | Path,
    mode: str,
    *,
    source_variant: str | None = None,
    options: QuantizeOptions | QuantizeConfig | None = None,
    overwrite: bool = False,
) -> tuple[str, dict]:
    """Write ``onnx/model_<variant>.onnx`` from ``source_variant``; returns (variant, manifest entry).

    ``options``: the mode's config (``MODES[mode].config``, what recipes hold) or ``QuantizeOptions``."""
    started = time.perf_counter()
    art = artifact if isinstance(artifact, Artifact) else Artifact(artifact)
    config = resolved(as_config(mode, source_variant, options))
    variant = variant_name(config)
    spec = MODES[mode]
    source_variant = config.source
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
            excluded = _matching_nodes(model, config.exclude) if config.exclude else set()
            if _keep_is_pattern(config.keep):
                _kept_by_pattern(model, config.keep, excluded)  # a pattern that matches nothing: before any work
            external = needs_external_data(src)
            calib = None
            if _needs_calibration(config):
                from .calibration import calibration_source, load_calibration
                from .recovery import CalibrationSet

                calib = CalibrationSet.build(
                    art, src, load_calibration(config.calibration), calibration_source(config.calibration)
                )
            try:
                if config.recover:
                    result, info, spec = _recover(art, model, src, config, excluded, work, calib, external)
                else:
                    result, info, _ = _build(spec, model, src, config, excluded, work, calib, external)
            except QconvError:
                raise
            except Exception as exc:
                raise QconvError(f"{mode} quantization of {source_variant} failed: {one_line(exc)}") from exc
            if calib is not None:
                info["calibration"] = {"texts": calib.source, "rows": sum(len(b["input_ids"]) for b in calib.batches)}
                if calib.groups:  # a ranking task: candidates checked on each query's ranking of several documents
                    info["calibration"]["ranked"] = f"{len(calib.groups)} queries x {len(calib.groups[0])} documents"
            unique_node_names(result)
            staged = work / target.name
            save_model(result, staged, external)
            if spec.measure_batch_coupling and "batch_coupling" not in info:  # the ladder measured its winner already
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
        "options": record_of(config),
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


def _build(spec, model, src, options, excluded, work, calib, external, memo: dict | None = None):
    """One quantized graph: optional SmoothQuant fold, optional kept MatMuls, then the mode's pass.

    Returns (graph, info, metrics): ``metrics`` are the calibration metrics of the search candidate that *is*
    the result (the best alpha, the passing keep step), which is reused instead of quantized again; None
    when nothing was searched. ``memo`` carries a smoothing search from one ladder rung to the next."""
    extra, final = {}, None
    if getattr(options, "smooth", None) is not None:
        model, extra["smoothquant"], final = _smoothed(spec, model, src, options, excluded, work, calib, external, memo)
    if options.keep:
        kept, extra["kept"], final = _kept(spec, model, src, options, excluded, work, calib, external)
        excluded = excluded | kept
    if final is not None:
        result, info = read_onnx(final["path"]), dict(final["info"])
    else:
        result, info = spec.run(model, src, options, excluded, work)
    info.update(extra)
    return result, info, final


def _candidate(spec, model, src, options, excluded, work: Path, name: str, calib, external) -> dict:
    folder = work / name
    folder.mkdir()
    plain = _with(options, smooth=None, keep=None, recover=None)
    result, info = spec.run(model, src, plain, excluded, folder)
    metrics = calib.evaluate(result, folder, "candidate", external)
    metrics["info"] = info
    return metrics


def _keep_better(best: tuple | None, candidate: tuple, wins: bool) -> tuple:
    """The search step that stays (``candidate`` when it ``wins``); the other one's files are removed at once
    (a 0.6B candidate is ~0.6-2.4 GB; a search tries up to a dozen)."""
    if best is None:
        return candidate
    loser, winner = (best, candidate) if wins else (candidate, best)
    shutil.rmtree(loser[1]["path"].parent)
    return winner


def _smoothed(spec, model, src, options, excluded, work, calib, external, memo=None):
    """(smoothed graph, report, metrics of the candidate that is the final result or None)."""
    from . import smoothquant
    from .recovery import SMOOTH_ALPHAS, describe, log, public, score

    # A search is valid for the rung's other options too (per-token activations want a different alpha).
    searched_for = repr(_with(options, smooth=None, keep=None, recover=None))
    if memo is not None and (options.smooth, searched_for) in memo:
        smoothed, info = memo[options.smooth, searched_for]
        return smoothed, {**info, "reused": "the search of an earlier rung"}, None
    groups = smoothquant.find_groups(model, calib.layout)
    if not groups:
        return model, {"alpha": None, "sites": 0, "note": "no activation could be smoothed exactly"}, None
    sim = spec.fake_quant(options)
    searched, best = [], None
    if options.smooth == "auto" and sim is not None:
        # Each site its own alpha, by its MatMuls' error under the mode's stand-in: one alpha for all sites
        # over- or under-smooths some (o_proj and down_proj want less than q/k/v on the outlier model).
        samples = smoothquant.activation_samples(model, groups, calib.batches, work)
        ranges = smoothquant.ranges_of(samples)
        smoothed, summary = smoothquant.smooth(model, groups, ranges, None, samples, sim)
        del samples
        alpha, chosen_by = (
            "per site",
            (
                "each site's smallest MatMul output error under the mode's stand-in (convert/fake_quant.py), "
                f"alphas {', '.join('none' if a is None else str(a) for a in smoothquant.SITE_ALPHAS)}"
            ),
        )
    else:
        ranges = smoothquant.activation_ranges(model, groups, calib.batches, work)
        if options.smooth == "auto":
            for alpha in SMOOTH_ALPHAS:
                candidate, _ = smoothquant.smooth(model, groups, ranges, alpha)
                metrics = _candidate(spec, candidate, src, options, excluded, work, f"alpha{alpha}", calib, external)
                log(f"SmoothQuant alpha {alpha}: {describe(metrics)}")
                searched.append({"alpha": alpha, **public(metrics)})
                best = _keep_better(best, (alpha, metrics), best is None or score(metrics) > score(best[1]))
                del candidate
            alpha, chosen_by = best[0], "best calibration parity over 0.5-0.9"
        else:
            alpha, chosen_by = float(options.smooth), "--smooth"
        smoothed, summary = smoothquant.smooth(model, groups, ranges, alpha)
    info = {
        "alpha": alpha,
        "chosen_by": chosen_by,
        "searched": searched,
        "sites": len(summary),
        "by_site": {kind: sum(1 for s in summary if s["kind"] == kind) for kind in _sites(summary)},
        "scale_min": min(s["scale_min"] for s in summary),
        "scale_max": max(s["scale_max"] for s in summary),
        "o_proj": _o_proj_note(summary),
    }
    if alpha == "per site":
        info["site_alphas"] = _site_alphas(summary)
        info["per_site"] = [
            {k: row[k] for k in ("activation", "site", "alpha", "output_error", "scale_max")} for row in summary
        ]
        log(f"SmoothQuant per site: {info['site_alphas']}")
    if memo is not None:
        memo.clear()  # one smoothed graph in memory at a time (2.4 GB at 0.6B)
        memo[options.smooth, searched_for] = memo[alpha, searched_for] = (smoothed, info)
    return smoothed, info, best[1] if best else None


def _o_proj_note(summary) -> str:
    smoothed = sum(1 for s in summary if s["kind"] == "attention output")
    if smoothed:
        return f"{smoothed} smoothed through v_proj (one scale per value channel, shared by its query heads)"
    return "not smoothed (no attention output reached from a value projection by layout ops alone)"


def _site_alphas(summary) -> dict[str, dict[str, int]]:
    """How many sites of each kind took each alpha ("none": left unsmoothed)."""
    table: dict[str, dict[str, int]] = {}
    for row in summary:
        chosen = "none" if row["alpha"] is None else str(row["alpha"])
        kind = table.setdefault(row["kind"], {})
        kind[chosen] = kind.get(chosen, 0) + 1
    return table


def _sites(summary) -> list[str]:
    return sorted({s["kind"] for s in summary})


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
        # An example from this graph: a seq-cls reranker's modules read 'classifier.model.layers.0...'.
        example = next((m for m in map(module_scope, map(nodes.get, _weight_matmuls(model, excluded))) if m), "")
        like = f"modules like '{example}'" if example else "modules"
        raise QconvError(f"--keep '{keep}' matches no weight MatMul (node names or {like})")
    return kept, [{"node": n, "module": module_scope(nodes[n]), "why": "named by --keep"} for n in sorted(kept)]


KEEP_PLATEAU = 2  # --keep auto stops after this many doublings without a better calibration score


def _kept(spec, model, src, options, excluded, work, calib, external):
    """Weight MatMuls to keep fp32: named (patterns), the N most sensitive, or as many as the target needs."""
    from .recovery import describe, log, public, score, sensitivity

    candidates = _weight_matmuls(model, excluded)
    keep = options.keep
    if _keep_is_pattern(keep):
        kept, rows = _kept_by_pattern(model, keep, excluded)
        return kept, {"how": "patterns", "patterns": keep.split(","), "nodes": rows}, None
    # The sensitivity proxy is dynamic INT8 of each MatMul alone, as the mode quantizes (per-channel per-tensor
    # INT8 for a mode without a stand-in).
    ranking = sensitivity(model, candidates, calib.batches, work, spec.fake_quant(options) or FakeQuant())
    nodes = {n.name: n for n in model.graph.node}
    steps, final, stopped = [], None, None
    if keep.isdigit():
        count = min(int(keep), len(ranking))
    else:
        count, limit, best, flat = 0, max(1, len(ranking) // 4), None, 0
        sizes = sorted({min(2**i, limit) for i in range(0, 12)})
        for size in sizes:
            top = {r["node"] for r in ranking[:size]}
            metrics = _candidate(spec, model, src, options, excluded | top, work, f"keep{size}", calib, external)
            log(f"keep {size} most sensitive MatMul(s) fp32: {describe(metrics)}")
            steps.append({"kept": size, **public(metrics)})
            # The first step that meets the target, else the best step tried.
            improved = best is None or score(metrics) > score(best[1])
            best = _keep_better(best, (size, metrics), improved or metrics["meets_target"])
            if metrics["meets_target"]:
                break
            flat = 0 if improved else flat + 1
            if flat == KEEP_PLATEAU and size != sizes[-1]:
                # An error spread over every layer (seen on outlier rerankers: keeping 1 or 32 of 196 MatMuls
                # read the same rankings) is not found by keeping more; each step is a whole quantized model.
                stopped = (
                    f"{KEEP_PLATEAU} doublings in a row did not improve on keeping {best[0]}: "
                    "the error is not in a few MatMuls"
                )
                log(f"keep: stopped, {stopped}")
                break
        count, final = best
    kept_rows = [
        {
            "node": r["node"],
            "module": module_scope(nodes[r["node"]]),
            "relative_error": r["relative_error"],
            "why": f"sensitivity rank {i + 1} of {len(ranking)}",
        }
        for i, r in enumerate(ranking[:count])
    ]
    return (
        {r["node"] for r in kept_rows},
        {
            "how": "auto" if keep == "auto" else f"{count} most sensitive",
            "sensitivity": "relative output error of the MatMul alone under dynamic INT8, on calibration activations",
            "nodes": kept_rows,
            "steps": steps,
            **({"stopped": stopped} if stopped else {}),
            "most_sensitive": ranking[:10],
        },
        final,
    )


def _with(config, **changes):
    """A copy of ``config`` with the changes to the options it declares (the others do not apply to it)."""
    names = {f.name for f in dataclasses.fields(config)}
    return dataclasses.replace(config, **{k: v for k, v in changes.items() if k in names})


def _rung_config(rung, config):
    """A ladder rung's config: the options the rung's mode shares with the starting config, the rung's changes,
    the rung's mode's defaults for the rest; resolved (a rung whose mode cannot run here raises)."""
    names = {f.name for f in dataclasses.fields(MODES[rung.mode].config)}
    shared = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name in names}
    values = {**shared, **{k: v for k, v in rung.changes.items() if k in names}, "mode": rung.mode, "recover": None}
    rung_config = MODES[rung.mode].config(**values)
    MODES[rung.mode].resolve(rung_config)
    return rung_config


class _Attempt(NamedTuple):
    """One ladder rung, built and measured on the calibration batches."""

    rung: object  # recovery.Rung
    spec: QuantizationMode
    result: object  # the quantized ModelProto
    info: dict
    metrics: dict
    coupling: dict


def _recover(art, model, src, options, excluded, work, calib, external):
    """--recover auto: the ladder from fastest to safest; the first rung that meets the target wins (or its
    coupling-free twin, when that passes at about the same speed)."""
    from qconv.errors import GateFailed

    from .recovery import LADDER, batch_coupling, describe, log, prefer_twin, public

    tried = []
    memo: dict = {}  # the alpha search runs once; later rungs reuse its smoothed graph
    reference = batch_coupling(art, src)  # the fp32 source's own figures, measured once for every rung
    by_name = {rung.name: index for index, rung in enumerate(LADDER)}

    def attempt(index: int) -> _Attempt | None:
        """Build and measure one rung, or None if it cannot run here (recorded as skipped)."""
        rung = LADDER[index]
        spec = MODES[rung.mode]
        try:
            rung_options = _rung_config(rung, options)
        except QconvError as exc:  # e.g. q8 without 8-bit MatMulNBits kernels in this onnxruntime
            tried.append({"rung": rung.name, "skipped": str(exc)})
            return None
        started = time.perf_counter()
        log(f"rung {rung.name} ({index + 1} of {len(LADDER)})")
        folder = work / f"rung{index}"
        folder.mkdir()
        # Every rung starts from the same fp32 graph (q8 level 1 after level 4 once got level 4's graph).
        given = with_initializers(model, {}) if spec.modifies_input and index < len(LADDER) - 1 else model
        result, info, metrics = _build(spec, given, src, rung_options, excluded, folder, calib, external, memo)
        if metrics is None:
            metrics = calib.evaluate(result, folder, "rung", external)
        coupling = batch_coupling(art, metrics["path"], reference)
        seconds = round(time.perf_counter() - started, 1)
        log(f"rung {rung.name}: {describe(metrics)} ({seconds} s)")
        tried.append(
            {"rung": rung.name, "mode": rung.mode, **public(metrics), "batch_coupling": coupling, "seconds": seconds}
        )
        return _Attempt(rung, spec, result, info, metrics, coupling)

    def discard(index: int) -> None:
        shutil.rmtree(work / f"rung{index}")  # a losing rung's files, searches included: only the winner stays

    for index in range(len(LADDER)):
        built = attempt(index)
        if built is None:
            continue
        if not built.metrics["meets_target"]:
            del built
            discard(index)
            if not any(later.changes.get("smooth") for later in LADDER[index + 1 :]):
                memo.clear()  # no later rung smooths: free the smoothed graph
            continue
        preferred = None
        if built.rung.twin is not None:
            twin_index = by_name[built.rung.twin]
            twin = attempt(twin_index)
            why = prefer_twin(built.metrics, twin.metrics) if twin is not None else None
            if why is not None:
                log(f"rung {twin.rung.name} chosen over {built.rung.name}: {why}")
                preferred = {"chosen": twin.rung.name, "over": built.rung.name, "why": why}
                built, twin = twin, None  # the passing rung's graph is released before its files go
                discard(index)
            elif twin is not None:
                del twin
                discard(twin_index)
        rung, spec, result, info, metrics, coupling = built
        del built
        info["recovery"] = {
            "chosen": rung.name,
            "target": asdict(calib.target),
            "candidates": tried,
            "order": [r.name for r in LADDER],
            "source_latency_ms": calib.source_latency_ms,
        }
        if preferred is not None:
            info["recovery"]["preferred"] = preferred
        speedup = metrics.get("speedup_vs_source")
        if speedup is not None and speedup < 1:
            # Accurate but no faster than fp32 here: say so rather than let "recovered INT8" imply speed.
            info["recovery"]["note"] = (
                f"{rung.name} ran at {speedup}x the fp32 source's speed on the calibration batches on this "
                "host: it saves memory, not time (qconv bench measures it)"
            )
            console.print(f"[yellow]--recover auto: {info['recovery']['note']}[/]")
        info["mode"] = rung.mode
        info["batch_coupling"] = coupling
        return result, info, spec
    summary = "; ".join(f"{t['rung']}: {describe(t) if 'skipped' not in t else t['skipped']}" for t in tried)
    raise GateFailed(f"--recover auto: no rung meets the calibration target ({summary}); nothing was written")
