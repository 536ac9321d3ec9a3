"""Turning a PyTorch module into an ONNX file: the dynamo exporter, external data, and checks."""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from qconv.errors import QconvError, one_line

# Protobuf cannot serialise a message over 2 GiB; stay clear of it.
EXTERNAL_DATA_THRESHOLD = 2_000_000_000
MIN_OPSET, MAX_OPSET = 18, 23

# onnxscript's SlicesSplit rule matches its two-Slice pattern by brute force: for every Slice it rescans the
# whole graph and tries every other Slice. On the raw Qwen3-0.6B export (7,463 nodes, 196 Slices) the exporter's
# optimizer took 80 s with it and 7.6 s without, and the optimized graph is the same node for node (rotary's
# Slices feed Neg/Concat, never a Split). The cost grows with the square of the depth, so 4B/8B pay more.
SKIPPED_EXPORTER_REWRITES = ("SlicesSplit",)


def parameter_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def external_data_name(onnx_file: Path) -> str:
    # optimum / sentence-transformers convention: model.onnx -> model.onnx_data
    return onnx_file.name + "_data"


@contextlib.contextmanager
def exporter_rewrites_without(names: Sequence[str] = SKIPPED_EXPORTER_REWRITES):
    """While active, the exporter's optimizer (onnxscript ``optimize_ir``) runs its default rules minus ``names``.

    Yields the names really removed. ``optimize_ir`` reads the module-level default rule set at call time and
    offers no parameter for it; if a future onnxscript moves it, nothing is removed and the export is only slower.
    """
    try:
        from onnxscript import rewriter

        default_rules = rewriter._DEFAULT_REWRITE_RULES
    except (ImportError, AttributeError):
        yield ()
        return
    kept = tuple(r for r in default_rules if getattr(r, "name", None) not in names)
    removed = tuple(r.name for r in default_rules if getattr(r, "name", None) in names)
    rewriter._DEFAULT_REWRITE_RULES = kept
    try:
        yield removed
    finally:
        rewriter._DEFAULT_REWRITE_RULES = default_rules


@dataclass(frozen=True)
class ExportedGraph:
    external_data: bool  # weights went to external data
    rewrites_skipped: tuple[str, ...]  # exporter optimizer rules left out (recorded in the manifest)


def check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise QconvError(f"--opset {opset} is not supported (the exporter handles {MIN_OPSET} to {MAX_OPSET})")


def export_module(
    module,
    example_inputs: tuple,
    path: Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int,
    external_data: bool | None,
    skip_rewrites: Sequence[str] = SKIPPED_EXPORTER_REWRITES,
) -> ExportedGraph:
    """Export with torch's dynamo exporter."""
    import onnx_ir as ir
    import torch

    check_opset(opset)
    dims: dict[str, object] = {}
    dynamic_shapes = {
        name: {axis: dims.setdefault(label, torch.export.Dim(label)) for axis, label in axes.items()}
        for name, axes in dynamic_axes.items()
        if name in input_names
    }
    if external_data is None:
        external_data = parameter_bytes(module) > EXTERNAL_DATA_THRESHOLD
    path.parent.mkdir(parents=True, exist_ok=True)
    chatter = io.StringIO()
    # The exporter prints progress lines and warnings of its own; keep the user's terminal for ours.
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(chatter),
        contextlib.redirect_stderr(chatter),
        exporter_rewrites_without(skip_rewrites) as rewrites_skipped,
    ):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                module,
                example_inputs,
                dynamo=True,
                opset_version=opset,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_shapes=dynamic_shapes,
                optimize=True,
                verbose=False,
            )
        except Exception as exc:
            raise QconvError(f"ONNX export failed: {one_line(exc)}") from exc
    ir.save(program.model, path, external_data=external_data_name(path) if external_data else None)
    # The exporter's IR keeps every weight alive through module-level references; drop them so that
    # ``release_weights`` can really free the PyTorch copy before the ONNX session loads.
    for value in program.model.graph.initializers.values():
        value.const_value = None
    del program
    check_onnx_file(path)
    return ExportedGraph(bool(external_data), rewrites_skipped)


def release_weights(module) -> None:
    """Free a module's weights now (moved to the meta device), whoever still holds the module object."""
    import gc

    import torch

    # In place, on the very Parameter objects: the exporter and transformers hold references to them too,
    # so replacing them (module.to("meta")) would leave the old storage, and its file mapping, alive.
    for tensor in [*module.parameters(), *module.buffers()]:
        tensor.data = torch.empty(0, dtype=tensor.dtype)
    gc.collect()


def read_onnx(path: Path, load_external_data: bool = True):
    """``onnx.load`` whose failure on a damaged file (truncated, not ONNX) is one line naming the file."""
    import onnx

    try:
        return onnx.load(str(path), load_external_data=load_external_data)
    except Exception as exc:  # protobuf's DecodeError, a missing or short external-data file, ...
        raise QconvError(f"{path} is not a readable ONNX model ({one_line(exc)}); re-export it") from exc


def check_onnx_file(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise QconvError(f"{path} is not a valid ONNX model: {one_line(exc)}") from exc
