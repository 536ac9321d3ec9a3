"""The SiLU-gated MLP: ``down(silu(gate(x)) * up(x))``.

``silu``: x * Sigmoid(x) -> com.microsoft QuickGelu(alpha=1.0), which is exactly x * sigmoid(1.0 * x)
(one vectorised kernel on CPU and CUDA instead of two passes over the (batch, seq, intermediate) tensor).

``merge_projections``: MatMuls that read the same input with constant weights of the same input size
(q/k/v, and gate/up) become one MatMul over the concatenated weights followed by a Split, so the input is
read once and the GEMM is wider. The weights are the same numbers in a new layout; INT8 and 4-bit
quantization treat each output column (or block of it) alone, so they quantize the merged weight exactly
as they would the separate ones.

Both are qconv's own: onnxscript 0.7.2 has no SiLU/QuickGelu rule, and its only projection merge
(``gqa_packed_qkv``) packs q/k/v into an existing GroupQueryAttention (0 matches on the O2 graph).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .graph_rewrite import MS_DOMAIN, GraphPass, PassResult, register, replace_value, sole_consumer


@register
class SiluFusion(GraphPass):
    name = "silu"
    summary = "x * Sigmoid(x) -> com.microsoft QuickGelu(alpha=1) (exact SiLU)"
    anchor_ops = ("Sigmoid",)

    def rewrite_at(self, sigmoid, ctx) -> bool:
        x = sigmoid.inputs[0]
        mul = sole_consumer(sigmoid.outputs[0])
        if mul is None or mul.op_type != "Mul" or mul.domain != "":
            return False
        if not ({id(v) for v in mul.inputs} == {id(x), id(sigmoid.outputs[0])} and len(mul.inputs) == 2):
            return False
        fused = ctx.node("QuickGelu", [x], {"alpha": 1.0}, domain=MS_DOMAIN, base="SiLU")
        ctx.insert_before(mul, [fused])
        replace_value(mul.outputs[0], fused.outputs[0])
        ctx.require_opset(MS_DOMAIN)
        return True


@register
class MergeProjections(GraphPass):
    name = "merge_projections"
    summary = "MatMuls sharing an input (q/k/v, gate/up) -> one MatMul over concatenated weights + Split"

    @dataclass
    class Params:
        min_group: int = 2  # fewer MatMuls on one input are left alone
        max_group: int = 4

    def run(self, ctx) -> PassResult:
        import onnx_ir as ir

        result = PassResult(self.name)
        groups: dict[int, list] = {}
        for node in ctx.graph:
            if node.op_type != "MatMul" or node.domain != "" or len(node.inputs) != 2:
                continue
            weight = node.inputs[1]
            tensor = weight.const_value
            if tensor is None or len(tensor.shape) != 2 or tensor.dtype != ir.DataType.FLOAT:
                continue
            if len(weight.uses()) != 1:
                continue  # a tied weight is read elsewhere: keep it whole
            groups.setdefault(id(node.inputs[0]), []).append(node)
        for members in groups.values():
            if not self.params.min_group <= len(members) <= self.params.max_group:
                continue
            if len({m.inputs[1].const_value.shape[0] for m in members}) != 1:
                result.skip("the weights of MatMuls on one input differ in input size")
                continue
            self._merge(ctx, members)
            result.matched += 1
        ctx.finish()
        return result

    @staticmethod
    def _merge(ctx, members) -> None:
        widths = [int(m.inputs[1].const_value.shape[1]) for m in members]
        merged = np.concatenate([m.inputs[1].const_value.numpy() for m in members], axis=1)
        weight = ctx.constant(np.ascontiguousarray(merged), "merged_weight")
        order = {id(n): i for i, n in enumerate(ctx.graph)}
        first = min(members, key=lambda m: order[id(m)])
        matmul = ctx.node("MatMul", [first.inputs[0], weight], base="merged_MatMul")
        sizes = ctx.constant(np.array(widths, dtype=np.int64), "merged_split")
        split = ctx.node(
            "Split", [matmul.outputs[0], sizes], {"axis": -1}, num_outputs=len(members), base="merged_Split"
        )
        ctx.insert_before(first, [matmul, split])
        for member, part in zip(members, split.outputs):
            replace_value(member.outputs[0], part)
