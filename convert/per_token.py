"""Per-token dynamic activation quantization for ``quantize_dynamic``'s INT8 graphs.

``DynamicQuantizeLinear`` takes one (scale, zero point) for its whole ``[batch*seq, K]`` input. On Qwen3 a few
tokens (the first token, delimiters) carry hidden values ~1e4 (massive activations): one such row sets the step
for every token of every sequence in the batch, so ordinary values round to the zero point, and the output of a
text depends on what else is in its batch. This rewrite gives every row (token) its own scale:

    s = max(|x|, over K) / 127                     per row, shape [..., 1]
    q = QuantizeLinear(x / s, scale=1, zero_point=128)   uint8 in [1, 255], symmetric around 128

Each ``MatMulInteger -> Cast -> Mul(a_scale * b_scale)`` that read the quantized value becomes one
``MatMulIntegerToFloat`` (ORT's contrib op, which ORT itself fuses that pattern into for per-tensor graphs) with an
activation scale of 1, the weight's per-channel scale applied inside the GEMM's output loop and the scalar zero
point 128 (so ORT runs the same u8 x s8 kernel as before), then one ``Mul`` by the row scale: its kernel takes only
a scalar activation scale, so the row scale is the one extra pass. Written directly because ORT's own fusion would
not match once the activation scale is a row vector; the unfused form (``Cast * row_scale * weight_scale``, three
passes over the output) was 7% slower on a stack of true-0.6B-width MatMuls at 8 x 128 (AVX2 host, 2 threads).
A row's result depends on that row alone: no batch coupling, no padding dependence. The cost left is a few
elementwise ops per quantized input (shared by the MatMuls that read it: q/k/v, gate/up) and the row-scale
``Mul``; BENCHMARKS.md measures it at the true 0.6B shape.
"""

from __future__ import annotations

import numpy as np

from .graph_index import GraphIndex

ZERO_POINT = 128
LEVELS = 127.0
# Smallest row maximum: a row of zeros quantizes to the zero point (its product is 0) instead of dividing by 0.
MIN_RANGE = 1e-12


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def per_token_activations(model) -> int:
    """Rewrite every ``DynamicQuantizeLinear`` of ``model`` (in place) into per-token quantization.

    Each quantized value's consumers must be ``MatMulInteger`` nodes whose scale product is a ``Mul`` of the
    activation scale and a constant weight scale, then a ``Mul`` after the ``Cast`` (what ``quantize_dynamic``
    writes); anything else is refused with ``ValueError`` (the model is unchanged). Returns the number of
    rewritten activations.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    index = GraphIndex(model)
    consumers, producers, graph_outputs = index.consumers, index.producer, index.outputs
    plans = []
    for node in graph.node:
        if node.op_type != "DynamicQuantizeLinear" or node.domain not in ("", "ai.onnx"):
            continue
        _, scale, zero_point = node.output
        if graph_outputs.intersection(node.output) or not consumers.get(scale):
            raise ValueError(f"{node.name}: its outputs are not read by quantize_dynamic's MatMulInteger and Mul nodes")
        for user in consumers.get(zero_point, []):
            if user.op_type != "MatMulInteger":
                raise ValueError(f"{node.name}: zero point read by {user.op_type} {user.name}, not MatMulInteger")
        scale_muls = consumers.get(scale, [])
        rewired = []
        for mul in scale_muls:
            if mul.op_type != "Mul":
                raise ValueError(f"{node.name}: scale read by {mul.op_type} {mul.name}, not Mul")
            weight_scale = next(i for i in mul.input if i != scale)
            outputs = consumers.get(mul.output[0], [])
            if len(outputs) != 1 or outputs[0].op_type != "Mul":
                raise ValueError(f"{node.name}: scale product {mul.output[0]} is not read by a single Mul")
            cast_input = next(i for i in outputs[0].input if i != mul.output[0])
            if producers.get(cast_input) is None or producers[cast_input].op_type != "Cast":
                raise ValueError(f"{node.name}: {outputs[0].name} does not scale a Cast of MatMulInteger")
            rewired.append((mul, outputs[0], weight_scale, cast_input))
        plans.append((node, rewired))

    if not plans:
        return 0
    opset = _opset(model)
    shared = {
        "qconv_pt_levels": np.array(LEVELS, dtype=np.float32),
        "qconv_pt_min_range": np.array(MIN_RANGE, dtype=np.float32),
        "qconv_pt_unit_scale": np.array(1.0, dtype=np.float32),
        "qconv_pt_zero_point": np.array(ZERO_POINT, dtype=np.uint8),
    }
    if opset >= 18:
        shared["qconv_pt_last_axis"] = np.array([-1], dtype=np.int64)
    for name, value in shared.items():
        graph.initializer.append(numpy_helper.from_array(value, name))

    rebuilt, added, dropped = [], [], set()
    by_node = {id(node): rewired for node, rewired in plans}
    for node in graph.node:
        if id(node) not in by_node:
            rebuilt.append(node)
            continue
        x = node.input[0]
        q, scale, zero_point = node.output
        base = node.name or q
        absx, row_max, row_range = f"{base}_abs", f"{base}_row_max", f"{base}_row_range"
        scaled = f"{base}_scaled"
        if opset >= 18:
            reduce = helper.make_node(
                "ReduceMax", [absx, "qconv_pt_last_axis"], [row_max], keepdims=1, name=f"{base}_ReduceMax"
            )
        else:
            reduce = helper.make_node("ReduceMax", [absx], [row_max], axes=[-1], keepdims=1, name=f"{base}_ReduceMax")
        rebuilt += [
            helper.make_node("Abs", [x], [absx], name=f"{base}_Abs"),
            reduce,
            helper.make_node("Max", [row_max, "qconv_pt_min_range"], [row_range], name=f"{base}_Max"),
            helper.make_node("Div", [row_range, "qconv_pt_levels"], [scale], name=f"{base}_RowScale"),
            helper.make_node("Div", [x, scale], [scaled], name=f"{base}_Div"),
            helper.make_node(
                "QuantizeLinear", [scaled, "qconv_pt_unit_scale", "qconv_pt_zero_point"], [q], name=f"{base}_Quantize"
            ),
        ]
        # The zero point is now the constant 128: MatMulInteger's scalar zero point, as ORT requires.
        for user in consumers.get(zero_point, []):
            user.input[:] = ["qconv_pt_zero_point" if i == zero_point else i for i in user.input]
        for scale_mul, out_mul, weight_scale, cast_value in by_node[id(node)]:
            fused = _fused_epilogue(index, scale_mul, out_mul, cast_value, weight_scale, scale)
            if fused is not None:
                dropped.update(id(n) for n in fused[0])
                added.extend(fused[1])
                continue
            # out = (Cast * row_scale) * weight_scale: the row scale first, so ORT does not fuse a vector a_scale.
            scale_mul.input[:] = [cast_value, scale]
            rows = f"{scale_mul.output[0]}_rows"
            scale_mul.output[:] = [rows]
            out_mul.input[:] = [rows, weight_scale]
    if added and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    removed = {out for n in graph.node if id(n) in dropped for out in n.output} - {o for n in added for o in n.output}
    rebuilt = [n for n in rebuilt if id(n) not in dropped] + added
    graph.ClearField("node")
    graph.node.extend(_topological(rebuilt))
    # value_info written by the quantizer describes the old per-tensor scale shapes (and the int32 products the
    # fused epilogue no longer has): drop what no longer holds.
    stale = {plan[0].output[1] for plan in plans} | removed
    kept = [vi for vi in graph.value_info if vi.name not in stale]
    graph.ClearField("value_info")
    graph.value_info.extend(kept)
    return len(plans)


def _fused_epilogue(index, scale_mul, out_mul, cast_value: str, weight_scale: str, row_scale: str):
    """``MatMulInteger -> Cast -> Mul(row scale) -> Mul(weight scale)`` as one ``MatMulIntegerToFloat`` (ORT's
    contrib op: the int32 product is scaled by the weight's per-channel scale inside the GEMM's output loop,
    with a scalar activation scale of 1) and one ``Mul`` by the row scale: one pass over the output instead of
    three (Cast, two Mul). Returns (nodes to drop, nodes to add), or None where the pattern is not exactly
    quantize_dynamic's (an int32 product or a Cast read by anything else): that MatMul keeps the unfused form."""
    from onnx import helper

    cast = index.producer.get(cast_value)
    if cast is None or cast.op_type != "Cast" or len(index.consumers.get(cast_value, [])) != 1:
        return None
    matmul = index.producer.get(cast.input[0])
    if matmul is None or matmul.op_type != "MatMulInteger" or len(index.consumers.get(cast.input[0], [])) != 1:
        return None
    b_zero_point = [matmul.input[3]] if len(matmul.input) > 3 and matmul.input[3] else []
    base = matmul.name or matmul.output[0]
    unscaled = f"{base}_to_float"
    fused = helper.make_node(
        "MatMulIntegerToFloat",
        [matmul.input[0], matmul.input[1], "qconv_pt_unit_scale", weight_scale, "qconv_pt_zero_point", *b_zero_point],
        [unscaled],
        name=f"{base}_ToFloat",
        domain="com.microsoft",
    )
    rescale = helper.make_node("Mul", [unscaled, row_scale], [out_mul.output[0]], name=f"{base}_RowScale")
    return [matmul, cast, scale_mul, out_mul], [fused, rescale]


def _topological(nodes: list) -> list:
    """``nodes`` in an order where every value is produced before it is read (the rewrite moved Mul inputs)."""
    produced_by = {out: i for i, node in enumerate(nodes) for out in node.output}
    order, state = [], [0] * len(nodes)  # 0 new, 1 visiting, 2 done
    for start in range(len(nodes)):
        if state[start]:
            continue
        stack = [(start, iter(nodes[start].input))]
        state[start] = 1
        while stack:
            index, inputs = stack[-1]
            dep = next((produced_by[i] for i in inputs if i in produced_by and state[produced_by[i]] == 0), None)
            if dep is None:
                # an input produced by a node still being visited would be a cycle; the rewrite makes none
                state[index] = 2
                order.append(nodes[index])
                stack.pop()
            else:
                state[dep] = 1
                stack.append((dep, iter(nodes[dep].input)))
    return order
