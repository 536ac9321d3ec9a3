"""Which nodes of a graph each execution provider can run, decided before deployment (static placement).

Static analysis, on any machine: types come from ONNX shape inference (plus propagation through contrib
ops from their schemas), kernels from the installed onnxruntime's CPU registry and vendored tables
(ONNX Runtime's OperatorKernels.md for CPU, CUDA and DirectML; the onnx-tensorrt support matrix; the
OpenVINO EP coverage list), all stamped with their provenance in ``data/kernels/PROVENANCE.md``.

A foundation module: ``convert/`` (optimize records the target's placement, the fp16 pass reads tensor
types) and ``validate/`` (``qconv fallback``, the validation summary) both use it, and ``convert/`` must not
import ``validate/``. The measured side (an onnxruntime profile of what really ran) is validation and
stays in ``validate/fallback.py``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

from qconv.errors import QconvError

__all__ = ["KNOWN_PROVIDERS", "analyse", "infer_types", "load_graph", "table_for"]

ORT_TABLE_PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider", "DmlExecutionProvider")
KNOWN_PROVIDERS = ORT_TABLE_PROVIDERS + ("TensorrtExecutionProvider", "OpenVINOExecutionProvider")
MATMUL_OPS = {"MatMul", "MatMulInteger", "MatMulNBits", "Gemm", "MatMulIntegerToFloat", "QLinearMatMul"}
_TRT_TYPES = {
    "FP32": "tensor(float)",
    "FP16": "tensor(float16)",
    "BF16": "tensor(bfloat16)",
    "INT32": "tensor(int32)",
    "INT64": "tensor(int64)",
    "INT8": "tensor(int8)",
    "BOOL": "tensor(bool)",
    "UINT8": "tensor(uint8)",
    "DOUBLE": "tensor(double)",
    "FP8": "tensor(float8e4m3fn)",
    "INT4": "tensor(int4)",
}


def _kernel_data(name: str) -> str:
    return resources.files("qconv").joinpath("data", "kernels", name).read_text(encoding="utf-8")


@dataclass
class Kernel:
    since: int
    until: int | None
    types: dict[str, list[str]]


@dataclass
class KernelTable:
    provider: str
    source: str
    kernels: dict[tuple[str, str], list[Kernel]] = field(default_factory=dict)
    typed: bool = True  # False: only op names are known (OpenVINO)
    versioned: bool = True


def _domain(domain: str) -> str:
    return "ai.onnx" if domain in ("", "ai.onnx") else domain


@lru_cache(maxsize=None)
def ort_tables() -> dict[str, KernelTable]:
    records = json.loads(_kernel_data("ort_kernels.json"))
    tables = {
        p: KernelTable(p, "onnxruntime docs/OperatorKernels.md (vendored, see PROVENANCE.md)")
        for p in ORT_TABLE_PROVIDERS
    }
    grouped = defaultdict(list)
    for r in records:
        grouped[(r["provider"], r["domain"], r["op"])].append(r)
    for (provider, domain, op), rows in grouped.items():
        rows.sort(key=lambda r: r["since_version"])
        kernels = []
        for i, r in enumerate(rows):
            until = r["until_version"]
            if until is None and i + 1 < len(rows):  # DirectML writes older ranges as "N+" too
                until = rows[i + 1]["since_version"] - 1
            kernels.append(Kernel(r["since_version"], until, r["types"]))
        tables[provider].kernels[(domain, op)] = kernels
    return tables


@lru_cache(maxsize=None)
def tensorrt_table() -> KernelTable:
    table = KernelTable(
        "TensorrtExecutionProvider",
        "onnx-tensorrt docs/operators.md, release/10.1-GA (vendored; op restrictions not modelled)",
        versioned=False,
    )
    for line in _kernel_data("onnx-tensorrt-operators.md").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[1] == "Y":
            types = [
                _TRT_TYPES[t.strip()]
                for t in (cells[2] if len(cells) > 2 else "").split(",")
                if t.strip() in _TRT_TYPES
            ]
            table.kernels[("ai.onnx", cells[0])] = [Kernel(1, None, {"*": types} if types else {})]
    return table


@lru_cache(maxsize=None)
def openvino_table() -> KernelTable:
    table = KernelTable(
        "OpenVINOExecutionProvider",
        "ONNX Runtime OpenVINO EP coverage list, CPU column (vendored; op names only)",
        typed=False,
        versioned=False,
    )
    for line in _kernel_data("openvino-ep-supported-ops.md").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[1] == "Yes":
            table.kernels[("ai.onnx", cells[0])] = [Kernel(1, None, {})]
    return table


@lru_cache(maxsize=None)
def installed_cpu_table() -> KernelTable | None:
    """The installed onnxruntime's own CPU kernel registry, when it is safe to ask for it.

    onnxruntime-gpu without its CUDA libraries segfaults in get_all_opkernel_def, so never call it there.
    """
    from importlib import metadata

    try:
        metadata.version("onnxruntime-gpu")
        return None
    except metadata.PackageNotFoundError:
        pass
    try:
        from onnxruntime.capi import _pybind_state as C

        definitions = C.get_all_opkernel_def()
    except Exception:
        return None
    table = KernelTable(
        "CPUExecutionProvider", f"installed onnxruntime {metadata.version('onnxruntime')} kernel registry"
    )
    for d in definitions:
        if d.provider != "CPUExecutionProvider":
            continue
        low, high = d.version_range
        table.kernels.setdefault((_domain(d.domain), d.op_name), []).append(
            Kernel(low, None if high >= 2**31 - 1 else high, dict(d.type_constraints))
        )
    return table


def table_for(provider: str) -> KernelTable:
    if provider == "CPUExecutionProvider" and installed_cpu_table() is not None:
        return installed_cpu_table()
    if provider in ORT_TABLE_PROVIDERS:
        return ort_tables()[provider]
    if provider == "TensorrtExecutionProvider":
        return tensorrt_table()
    if provider == "OpenVINOExecutionProvider":
        return openvino_table()
    raise QconvError(f"unknown execution provider '{provider}' (known: {', '.join(KNOWN_PROVIDERS)})")


@lru_cache(maxsize=None)
def _schemas() -> dict[tuple[str, str], list]:
    from onnxruntime.capi import onnxruntime_pybind11_state as C

    found = defaultdict(list)
    for schema in C.get_all_operator_schema():
        found[(_domain(schema.domain), schema.name)].append(schema)
    for versions in found.values():
        versions.sort(key=lambda s: s.since_version)
    return found


def schema_for(domain: str, op: str, opset: int):
    """The schema version in effect for ``op`` under the model's ``opset`` for its domain."""
    candidates = [s for s in _schemas().get((_domain(domain), op), []) if s.since_version <= opset]
    return candidates[-1] if candidates else None


def _type_string(elem_type: int) -> str:
    import onnx

    name = onnx.helper.tensor_dtype_to_np_dtype(elem_type).name if elem_type else "unknown"
    return {"float32": "tensor(float)", "float64": "tensor(double)", "bool": "tensor(bool)"}.get(
        name, f"tensor({name})"
    )


def infer_types(model) -> dict[str, str]:
    """tensor name -> 'tensor(float)' etc.; contrib-op outputs follow their schema's type constraints."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:
        inferred = model
    types: dict[str, str] = {}
    graph = inferred.graph
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.type.tensor_type.elem_type:
            types[value.name] = _type_string(value.type.tensor_type.elem_type)
    for init in graph.initializer:
        types[init.name] = _type_string(init.data_type)
    opsets = {_domain(o.domain): o.version for o in model.opset_import}
    for node in graph.node:
        schema = schema_for(node.domain, node.op_type, opsets.get(_domain(node.domain), 1))
        if node.op_type == "Cast":
            to = next((a.i for a in node.attribute if a.name == "to"), 0)
            types.setdefault(node.output[0], _type_string(to))
        if schema is None:
            continue
        bound = {}
        for formal, actual in zip(_formal_inputs(schema, len(node.input)), node.input):
            if actual and actual in types:
                bound.setdefault(formal.typeStr, types[actual])
        for formal, actual in zip(schema.outputs, node.output):
            if actual and actual not in types:
                if formal.typeStr.startswith("tensor("):
                    types[actual] = formal.typeStr
                elif formal.typeStr in bound:
                    types[actual] = bound[formal.typeStr]
    return types


def _formal_inputs(schema, count: int) -> list:
    formals = list(schema.inputs)
    if formals and len(formals) < count:  # variadic last input
        formals += [formals[-1]] * (count - len(formals))
    return formals[:count]


@dataclass
class NodeVerdict:
    supported: bool
    reason: str
    signature: str


def check_node(node, table: KernelTable, opsets: dict[str, int], types: dict[str, str]) -> NodeVerdict:
    domain = _domain(node.domain)
    signature = ",".join(types.get(i, "?").replace("tensor(", "").rstrip(")") for i in node.input if i) or "-"
    kernels = table.kernels.get((domain, node.op_type))
    if not kernels:
        return NodeVerdict(False, f"no {table.provider} kernel for {domain}::{node.op_type}", signature)
    if not table.typed:
        return NodeVerdict(True, "listed", signature)
    schema = schema_for(domain, node.op_type, opsets.get(domain, 1))
    version = schema.since_version if schema is not None else opsets.get(domain, 1)
    if table.versioned:
        in_range = [k for k in kernels if k.since <= version and (k.until is None or version <= k.until)]
        if not in_range:
            ranges = ", ".join(f"{k.since}-{k.until if k.until is not None else ''}" for k in kernels)
            return NodeVerdict(
                False, f"opset mismatch: kernels cover versions {ranges}; node is version {version}", signature
            )
        kernels = in_range
    bindings = []
    if schema is not None:
        bindings += [(f.typeStr, a) for f, a in zip(_formal_inputs(schema, len(node.input)), node.input) if a]
        bindings += [(f.typeStr, a) for f, a in zip(schema.outputs, node.output) if a]
    problems = []
    for kernel in kernels:
        bad = []
        for constraint, tensor in bindings:
            allowed = kernel.types.get(constraint, kernel.types.get("*"))
            actual = types.get(tensor)
            if allowed is not None and actual is not None and actual not in allowed:
                bad.append(f"{constraint}={actual}")
        if not bad:
            return NodeVerdict(True, "kernel", signature)
        problems.append(", ".join(sorted(set(bad))))
    return NodeVerdict(False, f"no kernel for {problems[0]}", signature)


def _matmul_flops_per_token(node, initializers: dict) -> int:
    """2*K*N for a MatMul against a constant weight (per row of activations); 0 when not constant."""
    if node.op_type == "MatMulNBits":
        attrs = {a.name: a.i for a in node.attribute}
        return 2 * attrs.get("K", 0) * attrs.get("N", 0)
    if node.op_type in MATMUL_OPS and len(node.input) > 1 and node.input[1] in initializers:
        dims = list(initializers[node.input[1]].dims)
        return 2 * dims[-2] * dims[-1] if len(dims) >= 2 else 0
    return 0


ADVICE = [
    (
        {"DynamicQuantizeLinear", "MatMulInteger", "MatMulIntegerToFloat"},  # per-tensor and per-token INT8
        ("CUDAExecutionProvider", "TensorrtExecutionProvider"),
        "INT8 dynamic quantization does not run on {short}: use the q4f16 or fp16 variant for GPUs",
    ),
    (
        {"GroupQueryAttention"},
        ("CUDAExecutionProvider",),
        "GroupQueryAttention has fp16/bf16 kernels only on CUDA: use an fp16 graph",
    ),
]


def analyse(model, provider: str) -> dict:
    """Placement of every node for one provider (nodes without a kernel fall back to the CPU)."""
    table = table_for(provider)
    types = infer_types(model)
    opsets = {_domain(o.domain): o.version for o in model.opset_import}
    initializers = {i.name: i for i in model.graph.initializer}
    groups: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    on_device: dict[str, bool] = {}
    flops_total = flops_device = 0
    upcast = 0
    for node in model.graph.node:
        verdict = check_node(node, table, opsets, types)
        if not verdict.supported and provider == "CPUExecutionProvider" and _runs_upcast(node, table, opsets, types):
            # onnxruntime's CPU EP inserts Casts around fp16 nodes it has no fp16 kernel for and runs them
            # in fp32: supported, but with no fp16 speed or memory benefit for those nodes.
            verdict = NodeVerdict(True, "fp16 upcast to fp32 by onnxruntime", verdict.signature)
            upcast += 1
        on_device[node.name] = verdict.supported
        flops = _matmul_flops_per_token(node, initializers)
        flops_total += flops
        flops_device += flops if verdict.supported else 0
        if not verdict.supported:
            groups[(node.op_type, verdict.signature, verdict.reason)].append(node.name)
    producers = {out: node for node in model.graph.node for out in node.output}
    crossings = set()
    for node in model.graph.node:
        for tensor in node.input:
            producer = producers.get(tensor)
            if producer is not None and on_device[producer.name] != on_device[node.name]:
                crossings.add((tensor, on_device[node.name]))
    fallback = [
        {"op": op, "types": sig, "reason": reason, "count": len(names), "examples": names[:3]}
        for (op, sig, reason), names in sorted(groups.items(), key=lambda kv: -len(kv[1]))
    ]
    n_fallback = sum(g["count"] for g in fallback)
    report = {
        "provider": provider,
        "source": table.source,
        "nodes_total": len(model.graph.node),
        "nodes_on_device": len(model.graph.node) - n_fallback,
        "fallback_nodes": n_fallback,
        "fallback": fallback,
        "partition_boundaries": len(crossings),
        "matmul_flops_on_device": round(flops_device / flops_total, 4) if flops_total else None,
        "fp16_upcast_nodes": upcast,
        "on_device": on_device,
    }
    report["verdict"] = _verdict(report, {g["op"] for g in fallback})
    return report


def _runs_upcast(node, table: KernelTable, opsets: dict[str, int], types: dict[str, str]) -> bool:
    as_fp32 = {k: ("tensor(float)" if v == "tensor(float16)" else v) for k, v in types.items()}
    return as_fp32 != types and check_node(node, table, opsets, as_fp32).supported


def _verdict(report: dict, fallback_ops: set[str]) -> str:
    provider = report["provider"]
    short = provider.replace("ExecutionProvider", "")
    if not report["fallback_nodes"]:
        upcast = report.get("fp16_upcast_nodes")
        suffix = f" ({upcast} fp16 nodes run in fp32 through inserted casts)" if upcast else ""
        return f"all {report['nodes_total']} nodes have a {short} kernel{suffix}"
    if provider == "CPUExecutionProvider":
        return f"{report['fallback_nodes']} nodes have no CPU kernel: this graph cannot run on onnxruntime's CPU EP"
    counts = ", ".join(f"{g['count']} {g['op']}({g['types']})" for g in report["fallback"][:4])
    text = (
        f"{report['fallback_nodes']} of {report['nodes_total']} nodes fall back to CPU ({counts}); "
        f"{report['partition_boundaries']} host<->device copies per run"
    )
    for ops, providers, advice in ADVICE:
        if provider in providers and ops & fallback_ops:
            return f"{text}: {advice.format(short=short)}"
    return text


def load_graph(path: Path):
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        from qconv.errors import one_line

        raise QconvError(f"{path} is not a readable ONNX model: {one_line(exc)}") from exc
