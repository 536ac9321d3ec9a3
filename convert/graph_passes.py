"""Small ONNX graph rewrites used by quantization. Each returns a report of what it matched."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np


def unique_node_names(model) -> int:
    """Give every node a unique, non-empty name (exporters and converters both leave duplicates)."""
    seen: Counter = Counter()
    renamed = 0
    for i, node in enumerate(model.graph.node):
        base = node.name or f"{node.op_type}_{i}"
        seen[base] += 1
        name = base if seen[base] == 1 else f"{base}__{seen[base]}"
        renamed += name != node.name
        node.name = name
    return renamed


def _consumers(graph) -> dict[str, list]:
    users = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            users[name].append(node)
    return users


def quantize_embedding_gathers(model, min_rows: int = 1024) -> dict:
    """Store large fp32 lookup tables as int8 with one scale per row.

    Gather(W, ids) becomes Gather(W_int8, ids) -> Cast -> Mul(Gather(scale, ids)): standard ops only, so
    every execution provider runs it. The tied embedding table is a third of a Qwen3-0.6B model and a plain
    dynamic quantization leaves it fp32. A table also read by another node (a tied LM head) is left as is.
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    users = _consumers(graph)
    report = {"quantized": [], "skipped_shared": [], "bytes_before": 0, "bytes_after": 0}
    new_nodes = []
    for node in graph.node:
        table = node.input[0] if node.op_type == "Gather" and node.input else None
        init = initializers.get(table) if table else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if (
            init is None
            or init.data_type != onnx.TensorProto.FLOAT
            or len(init.dims) != 2
            or axis != 0
            or init.dims[0] < min_rows
        ):
            new_nodes.append(node)
            continue
        if len(users[table]) > 1:
            report["skipped_shared"].append(table)
            new_nodes.append(node)
            continue
        weights = numpy_helper.to_array(init).astype(np.float32)
        scale = np.maximum(np.abs(weights).max(axis=1, keepdims=True), 1e-12) / 127.0
        quantized = np.clip(np.rint(weights / scale), -127, 127).astype(np.int8)
        graph.initializer.remove(init)
        q_name, s_name = f"{table}_int8", f"{table}_scale"
        graph.initializer.extend(
            [numpy_helper.from_array(quantized, q_name), numpy_helper.from_array(scale.astype(np.float32), s_name)]
        )
        base, ids, out = node.name or table, node.input[1], node.output[0]
        new_nodes += [
            helper.make_node("Gather", [q_name, ids], [f"{out}_int8"], name=f"{base}_int8", axis=0),
            helper.make_node("Cast", [f"{out}_int8"], [f"{out}_deq"], name=f"{base}_cast", to=onnx.TensorProto.FLOAT),
            helper.make_node("Gather", [s_name, ids], [f"{out}_scale"], name=f"{base}_scale", axis=0),
            helper.make_node("Mul", [f"{out}_deq", f"{out}_scale"], [out], name=f"{base}_dequantize"),
        ]
        report["quantized"].append(table)
        report["bytes_before"] += weights.nbytes
        report["bytes_after"] += quantized.nbytes + scale.size * 4
    del graph.node[:]
    graph.node.extend(new_nodes)
    return report


# op -> positions of its floating-point inputs (others are indices or packed integers)
FP16_COMPUTE_OPS: dict[str, tuple[int, ...]] = {
    "MatMul": (0, 1),
    "Gemm": (0, 1, 2),
    "Gather": (0,),
    "MatMulNBits": (0, 2, 5),
}


def convert_to_fp16(model, exclude: set[str] = frozenset()) -> dict:
    """Mixed precision that cannot overflow where Qwen-class models do.

    MatMul/Gemm/Gather/MatMulNBits run in fp16 with fp16 weights (nearly all the bytes); everything else
    (RMSNorm's square and mean, softmax, residual adds, rotary, the final normalisation) stays fp32, because
    residual streams of Qwen-class models exceed fp16's 65504 and x**2 in a norm overflows long before.
    Graph inputs and outputs keep their types. Nodes named in ``exclude`` stay fp32.
    """
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    users = _consumers(graph)
    fp16_nodes = [n for n in graph.node if n.op_type in FP16_COMPUTE_OPS and n.name not in exclude]
    fp16_ids = {id(n) for n in fp16_nodes}
    float_inputs = {}
    for node in fp16_nodes:
        float_inputs[id(node)] = [i for pos, i in enumerate(node.input) if pos in FP16_COMPUTE_OPS[node.op_type] and i]
    converted, copies, casts = set(), {}, {}
    new_nodes = []

    def fp16_initializer(name: str) -> str:
        init = initializers[name]
        if init.data_type != onnx.TensorProto.FLOAT:
            return name
        only_fp16 = all(id(u) in fp16_ids and name in float_inputs[id(u)] for u in users[name])
        if only_fp16:
            if name not in converted:
                array = numpy_helper.to_array(init).astype(np.float16)
                init.CopyFrom(numpy_helper.from_array(array, name))
                converted.add(name)
            return name
        if name not in copies:
            copies[name] = f"{name}_fp16"
            graph.initializer.append(
                numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), copies[name])
            )
        return copies[name]

    for node in graph.node:
        if id(node) not in fp16_ids:
            new_nodes.append(node)
            continue
        for pos, name in enumerate(node.input):
            if pos not in FP16_COMPUTE_OPS[node.op_type] or not name:
                continue
            if name in initializers:
                node.input[pos] = fp16_initializer(name)
            else:
                if name not in casts:
                    casts[name] = f"{name}_to_fp16"
                    new_nodes.append(
                        helper.make_node(
                            "Cast", [name], [casts[name]], name=f"{name}_cast_fp16", to=onnx.TensorProto.FLOAT16
                        )
                    )
                node.input[pos] = casts[name]
        new_nodes.append(node)
        for pos, out in enumerate(node.output):
            if pos == 0 and out:
                node.output[pos] = f"{out}_fp16"
                new_nodes.append(
                    helper.make_node("Cast", [f"{out}_fp16"], [out], name=f"{out}_cast_fp32", to=onnx.TensorProto.FLOAT)
                )
    del graph.node[:]
    graph.node.extend(new_nodes)
    # Value types recorded by the exporter are stale for the renamed tensors: let ORT infer them again.
    del graph.value_info[:]
    return {
        "fp16_nodes": len(fp16_nodes),
        "fp16_initializers": len(converted) + len(copies),
        "casts_inserted": len(casts) + len(fp16_nodes),
        "excluded": sorted(exclude),
    }


def drop_cast_round_trips(model) -> int:
    """Cast(Cast(x: fp16 -> fp32) -> fp16) reads x directly: exact, and one copy pair less per occurrence.

    Left behind where an fp16 producer meets an fp16 consumer through the fp32 boundary of
    ``convert_to_fp16`` (e.g. fp16 attention output into an fp16 projection).
    """
    import onnx

    from qconv.kernels import infer_types

    types = infer_types(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    outputs = {o.name for o in model.graph.output}
    dropped = 0
    for node in model.graph.node:
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        if node.op_type != "Cast" or to != onnx.TensorProto.FLOAT16 or node.output[0] in outputs:
            continue
        inner = producers.get(node.input[0])
        inner_to = next((a.i for a in inner.attribute if a.name == "to"), None) if inner is not None else None
        if inner is None or inner.op_type != "Cast" or inner_to != onnx.TensorProto.FLOAT:
            continue
        if types.get(inner.input[0]) != "tensor(float16)":
            continue
        source, out = inner.input[0], node.output[0]
        for consumer in model.graph.node:
            for i, name in enumerate(consumer.input):
                if name == out:
                    consumer.input[i] = source
        dropped += 1
    if dropped:
        used = set(outputs)
        live = []
        for node in reversed(model.graph.node):  # drop the now unread casts (and inner ones left unread)
            if any(o in used for o in node.output if o):
                live.append(node)
                used.update(node.input)
        kept = list(reversed(live))
        del model.graph.node[:]
        model.graph.node.extend(kept)
    return dropped
