"""``qconv optimize``: graph optimization levels O1-O4 that really fuse Qwen3, written as ``onnx/model_O<n>.onnx``.

The levels mean what they mean in optimum, stated for Qwen3:

- O1: onnxruntime's basic, hardware-independent rewrites (constant folding, redundant node elimination).
- O2: O1 + qconv's fusions, each a small pass that reports its matches (``graph_rewrite``): RMSNorm ->
  SimplifiedLayerNormalization, residual Add + RMSNorm -> SkipSimplifiedLayerNormalization, rotary ->
  RotaryEmbedding (any batch, either padding side), attention -> MultiHeadAttention (q/k norms kept before
  it), SiLU -> QuickGelu, and projections sharing an input merged into one MatMul.
- O3: O2 + approximations. Qwen3 has no GELU for the usual GELU approximation to act on; the report says
  so, and no other approximation is applied.
- O4: O3 + fp16 for CUDA: attention as fp16 GroupQueryAttention, projections fp16 through the same
  selective fp16 conversion as ``qconv quantize --mode fp16`` (norms, rotary, residual stream stay fp32).

Saved at onnxruntime's *basic* level only, with ops every onnxruntime build has kernels for: the file is
portable (onnxruntime's extended/layout levels produce hardware-specific graphs and are left to the session).
Nothing is written unless the new graph matches its source: cosine >= 0.99999 at fp32 on batches of 1 and 3
with left and right padding (``variant_parity``), plus the usual built-in-text check.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from qconv.artifact import Artifact, new_build_id, variant_file
from qconv.console import console
from qconv.errors import QconvError, one_line

from .fusion_gelu import SILU_NOTE
from .graph_rewrite import RewriteContext, load_passes
from .onnx_graph import external_data_name
from .quantize import check_variant
from .variant_parity import DEFAULT_LENGTHS, ParityGate, compare_sessions, passes
from .variants import check_staged, file_facts, install_staged, needs_external_data, save_model, staging_dir
from .variants import op_counts as file_op_counts

TARGETS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
FUSIONS = ("rms_norm", "skip_rms_norm", "rotary_embedding", "attention", "silu")
# Exact rewrites that pay off on one target only. Merging q/k/v and gate/up into wider GEMMs measured within
# noise on CPU (MLAS is already near peak at 32 rows; the Split adds a copy), so CPU graphs keep separate
# projections (and their module names for 'quantize --exclude'); GPUs gain from fewer, wider launches.
TARGET_FUSIONS = {"cpu": (), "cuda": ("merge_projections",)}


@dataclass(frozen=True)
class Level:
    name: str
    description: str
    fusions: tuple[str, ...] = ()
    approximations: tuple[str, ...] = ()
    fp16: bool = False
    targets: tuple[str, ...] = ("cpu", "cuda")


LEVELS: dict[str, Level] = {
    "O1": Level("O1", "onnxruntime basic graph optimizations (constant folding, redundant node elimination)"),
    "O2": Level("O2", "O1 + fused RMSNorm, residual+RMSNorm, rotary, attention, SiLU MLP", FUSIONS),
    "O3": Level("O3", "O2 + approximations measured safe", FUSIONS, ("gelu_approximation",)),
    "O4": Level(
        "O4",
        "O3 + fp16 (GroupQueryAttention, fp16 projections) for CUDA",
        FUSIONS,
        ("gelu_approximation",),
        fp16=True,
        targets=("cuda",),
    ),
}

# What the fusions must produce per decoder layer (per_layer, once), by architecture: the coverage check.
EXPECTED_PER_LAYER: dict[str, dict[str, tuple[int, int]]] = {
    "qwen3": {
        "MultiHeadAttention": (1, 0),
        "SkipSimplifiedLayerNormalization": (2, 0),
        "SimplifiedLayerNormalization": (2, 1),
        "RotaryEmbedding": (2, 0),
        "QuickGelu": (1, 0),
    },
}
PARITY_GATES = {
    "fp32": ParityGate(),  # exact rewrites: only float rounding differs
    "fp32+approximations": ParityGate(min_cosine=0.9999, max_rel_scalar_diff=1e-3),  # O3 where one matched
    "fp16": ParityGate(min_cosine=0.999, max_rel_scalar_diff=0.05),
}


def resolve_level(level: str, target: str) -> Level:
    key = str(level).strip().upper()
    if key not in LEVELS:
        raise QconvError(f"unknown optimization level '{level}' (choose {', '.join(LEVELS)})")
    if target not in TARGETS:
        raise QconvError(f"unknown --target '{target}' (choose {' or '.join(TARGETS)})")
    spec = LEVELS[key]
    if target not in spec.targets:
        raise QconvError(
            f"{key} adds fp16, which pays off only on a GPU: pass --target cuda "
            f"(for CPU use O2 or O3, or 'qconv quantize --mode int8')"
        )
    return spec


def optimized_variant(level: str, target: str = "cpu", source_variant: str = "model") -> str:
    """The variant ``optimize`` writes: ``O2`` (``<source>_O2`` when not made from the exported graph)."""
    name = resolve_level(level, target).name
    return name if source_variant == "model" else f"{source_variant}_{name}"


def run_passes(model, names, **params) -> dict[str, dict]:
    """Apply registered passes in order (each on a fresh context); name -> report."""
    reports, catalogue = {}, load_passes()
    for name in names:
        graph_pass = catalogue[name](**params.get(name, {}))
        result = graph_pass.run(RewriteContext(model))
        reports[name] = {**result.as_dict(), **graph_pass.describe()}
    return reports


def ort_basic(source: Path, target: Path, external: bool) -> None:
    """onnxruntime's basic (portable) optimizations, saved: what O1 is, and O2-O4's last step in fp32.

    onnxruntime drops node metadata (the exporter's module names, which ``quantize --exclude`` matches) and
    declares every domain it knows; both are put back as they were in ``source``.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(target)
    options.log_severity_level = 3
    options.add_session_config_entry("session.disable_prepacking", "1")
    if external:
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", external_data_name(target)
        )
        options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    try:
        ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise QconvError(f"onnxruntime could not optimize {source.name}: {one_line(exc)}") from exc
    _restore_graph_details(source, target)


def _restore_graph_details(source: Path, target: Path) -> None:
    """Copy node metadata_props from ``source`` by node name; keep only the opset imports nodes use."""
    import onnx

    before = onnx.load(str(source), load_external_data=False)
    after = onnx.load(str(target), load_external_data=False)  # weights stay where they are (external or inline)
    metadata = {n.name: n.metadata_props for n in before.graph.node if n.name and n.metadata_props}
    for node in after.graph.node:
        if node.name in metadata and not node.metadata_props:
            node.metadata_props.extend(metadata[node.name])
    used = {n.domain or "" for n in after.graph.node}
    kept = [o for o in after.opset_import if (o.domain or "") in used | {""}]
    del after.opset_import[:]
    after.opset_import.extend(kept)
    onnx.save_model(after, str(target))


def save_ir(model, path: Path, external: bool) -> None:
    import onnx_ir as ir

    ir.save(model, path, external_data=external_data_name(path) if external else None, size_threshold_bytes=1024)


def to_fp16(model_path: Path, out: Path, external: bool) -> dict:
    """O4's last step: fp16 GroupQueryAttention, then the quantize fp16 path for MatMul/Gather."""
    import onnx
    import onnx_ir as ir

    from .graph_passes import convert_to_fp16, drop_cast_round_trips

    model = ir.load(model_path)
    reports = run_passes(model, ["attention_gqa"])
    grouped = out.parent / "gqa" / out.name
    grouped.parent.mkdir()
    save_ir(model, grouped, external)  # through a file: the weights are never held twice in memory
    del model
    proto = onnx.load(str(grouped))
    fp16 = convert_to_fp16(proto)
    fp16["cast_round_trips_dropped"] = drop_cast_round_trips(proto)
    save_model(proto, out, external)
    reports["fp16"] = {"matched": fp16["fp16_nodes"], "details": fp16}
    return reports


def model_config(art: Artifact) -> dict:
    """The artifact's config.json ({} when missing or unreadable)."""
    try:
        config = json.loads((art.path / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return config if isinstance(config, dict) else {}


def coverage(art: Artifact, counts: dict[str, int], spec: Level) -> dict | None:
    """Expected vs fused per-layer counts for a known architecture (None: nothing expected, e.g. O1)."""
    expected = EXPECTED_PER_LAYER.get(art.manifest.get("architecture") or "")
    layers = model_config(art).get("num_hidden_layers")
    if not spec.fusions or expected is None or not isinstance(layers, int):
        return None
    wanted = {op: per * layers + once for op, (per, once) in expected.items()}
    if spec.fp16:
        wanted["GroupQueryAttention"] = wanted.pop("MultiHeadAttention")
    found = {op: counts.get(op, 0) for op in wanted}
    return {"layers": layers, "expected": wanted, "found": found, "complete": found == wanted}


def optimize(
    artifact: Artifact | str | Path,
    level: str,
    *,
    target: str = "cpu",
    source_variant: str = "model",
    overwrite: bool = False,
    parity_lengths: tuple[int, ...] = DEFAULT_LENGTHS,
) -> tuple[str, dict]:
    """Write ``onnx/model_<level>.onnx`` from ``source_variant``; returns (variant, manifest entry)."""
    import onnx_ir as ir

    started = time.perf_counter()
    art = artifact if isinstance(artifact, Artifact) else Artifact(artifact)
    spec = resolve_level(level, target)
    variant = optimized_variant(spec.name, target, source_variant)
    src = art.variant_path(source_variant, verify=True)
    if art.variants[source_variant].get("precision", "fp32") != "fp32":
        precision = art.variants[source_variant]["precision"]
        raise QconvError(f"variant '{source_variant}' is {precision}; optimize an fp32 variant")
    if variant in art.variants and not overwrite:
        raise QconvError(
            f"{art.name} is already optimized at {spec.name} ({variant_file(variant)}); pass --overwrite to redo it"
        )
    target_file = art.path / variant_file(variant)
    # keep the source's layout: weights beside the graph when they were (or must be, over 2 GB)
    external = needs_external_data(src) or (src.parent / external_data_name(src)).exists()
    precision = "fp16" if spec.fp16 else "fp32"
    before = file_op_counts(src)

    with staging_dir(art, "optimize") as work:
        staged = work / target_file.name
        reports: dict[str, dict] = {}
        with console.status(f"optimizing {source_variant} -> {variant} ({spec.name}, {target})"):
            fp32_out = work / "fp32" / target_file.name if spec.fp16 else staged
            fp32_out.parent.mkdir(exist_ok=True)
            if spec.fusions or spec.approximations:
                model = ir.load(src)
                fusions = spec.fusions + (TARGET_FUSIONS[target] if spec.fusions else ())
                reports.update(run_passes(model, fusions + spec.approximations))
                fused = work / "fused" / target_file.name
                fused.parent.mkdir()
                save_ir(model, fused, external)
                del model
            else:
                fused = src
            ort_basic(fused, fp32_out, external)
            reports["onnxruntime_basic"] = _basic_report(file_op_counts(fused), file_op_counts(fp32_out))
            if spec.fp16:
                reports.update(to_fp16(fp32_out, staged, external))
        after = file_op_counts(staged)
        cover = coverage(art, after, spec)
        with console.status(f"checking {variant} against {source_variant}"):
            approximated = any(reports[name]["matched"] for name in spec.approximations)
            gate = PARITY_GATES["fp32+approximations" if approximated and precision == "fp32" else precision]
            vocab = model_config(art).get("vocab_size")
            parity = compare_sessions(staged, src, parity_lengths, vocab=vocab if isinstance(vocab, int) else 30000)
            parity["gate"] = {"min_cosine": gate.min_cosine, "max_rel_scalar_diff": gate.max_rel_scalar_diff}
            if not passes(parity, gate):
                raise QconvError(
                    f"{variant} does not match {source_variant} (cosine_min={parity['cosine_min']}, "
                    f"max_rel_scalar_diff={parity['max_rel_scalar_diff']}, worst at {parity['worst']}, "
                    f"finite={parity['finite']}); nothing was written"
                )
            check = check_staged(art, variant, staged, precision, lambda name: check_variant(art, name, source_variant))
        install_staged(art, staged, target_file)

    facts = file_facts(target_file)
    placement = _placement(target_file, target)
    approximations = {name: reports[name] for name in spec.approximations}
    if spec.approximations and not any(r["matched"] for r in approximations.values()):
        for report in approximations.values():
            report["note"] = SILU_NOTE
    entry = {
        "file": variant_file(variant),
        "build_id": new_build_id(),
        "precision": precision,
        "stage": "optimize",
        "level": spec.name,
        "target": target,
        "from": source_variant,
        "converter": "qconv graph passes (onnx-ir) + onnxruntime basic optimizations"
        + (" + qconv selective fp16" if spec.fp16 else ""),
        "description": spec.description,
        "passes": reports,
        "op_counts_before": before,
        **facts,
        "coverage": cover,
        "placement": placement,
        "parity": parity,
        "check": check,
    }
    art.variants[variant] = entry
    art.add_stage(
        {
            "stage": "optimize",
            "variant": variant,
            "level": spec.name,
            "target": target,
            "from": source_variant,
            "passes": {name: r.get("matched") for name, r in reports.items()},
            "op_counts_before": before,
            "op_counts_after": facts["op_counts"],
            "seconds": round(time.perf_counter() - started, 1),
        }
    )
    art.save()
    _print_summary(variant, entry, before)
    return variant, entry


def _basic_report(before: dict[str, int], after: dict[str, int]) -> dict:
    n_before, n_after = sum(before.values()), sum(after.values())
    note = "ORT_ENABLE_BASIC, saved (portable): " + (
        f"{n_before} -> {n_after} nodes" if n_before != n_after else "nothing left to fold or eliminate"
    )
    return {"matched": None, "nodes_before": n_before, "nodes_after": n_after, "note": note}


def _placement(path: Path, target: str) -> dict:
    """Static placement on the target's execution provider (the ``qconv fallback`` analysis)."""
    from qconv.kernels import analyse, load_graph

    report = analyse(load_graph(path), TARGETS[target])
    return {
        "provider": report["provider"],
        "fallback_nodes": report["fallback_nodes"],
        "fallback_ops": sorted({g["op"] for g in report["fallback"]}),
        "verdict": report["verdict"],
    }


def _print_summary(variant: str, entry: dict, before: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{entry['level']} passes ({entry['target']})")
    for column in ("pass", "matched", "notes"):
        table.add_column(column)
    for name, report in entry["passes"].items():
        matched = "-" if report.get("matched") is None else str(report["matched"])
        notes = report.get("note") or "; ".join(f"{k}: {v}" for k, v in (report.get("skipped") or {}).items())
        table.add_row(name, matched, notes)
    console.print(table)
    nodes_before, nodes_after = sum(before.values()), sum(entry["op_counts"].values())
    cover = entry["coverage"]
    if cover is not None:
        status = "[green]every layer fused[/]" if cover["complete"] else "[bold yellow]INCOMPLETE[/]"
        shown = ", ".join(f"{op} {cover['found'][op]}/{n}" for op, n in cover["expected"].items())
        console.print(f"{cover['layers']} decoder layers: {status} ({shown})")
    placement = entry["placement"]
    if placement["fallback_nodes"]:
        console.print(f"[bold yellow]{placement['provider']}: {placement['verdict']}[/]")
    parity = entry["parity"]
    shown = [f"cosine_min={parity['cosine_min']:.7f}"] if parity["cosine_min"] is not None else []
    if parity["max_rel_scalar_diff"] is not None:
        shown.append(f"max_rel_diff={parity['max_rel_scalar_diff']:.1e}")
    console.print(
        f"[green]optimized[/] {entry['from']} -> {entry['file']} ({nodes_before} -> {nodes_after} nodes, "
        f"{entry['size_bytes'] / 1e6:.1f} MB; parity vs {entry['from']}: {', '.join(shown)} over "
        f"{parity['runs']} batches, lengths {parity['lengths']})"
    )
