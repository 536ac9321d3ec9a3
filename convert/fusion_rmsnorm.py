"""RMSNorm -> SimplifiedLayerNormalization: onnxscript's rule first, this pass's matcher for the rest.

Matches what torch exports for ``weight * x * rsqrt(mean(x**2, -1) + eps)`` (Qwen3RMSNorm, LlamaRMSNorm):
Pow(x, 2) -> ReduceMean(last axis) -> Add(eps) -> Sqrt -> Reciprocal -> Mul(x, .) -> Mul(weight, .),
with Div(x, Sqrt) accepted for the middle and either operand order of every Mul. Qwen3 has four per decoder
layer's worth: input and post-attention norms on the hidden size, q_norm and k_norm on the head size
(these run on the (batch, seq, heads, head_dim) view), plus the final norm.

The rewrite is onnxscript's ``ort_fusions.rms_normalization`` rule (onnxscript 0.7.2). Measured on the
exported tiny Qwen3 (2 layers): it fuses the same 9 norms into the same graph as this pass did alone (equal
op counts, every fused node keeps the ``pkg.torch.onnx.name_scopes`` of its module, and O2's parity gate
gives cosine_min 0.9999999999989911 either way, equal to the last digit). What it does not do, this pass
still does on the nodes it leaves: the Div(x, Sqrt) form and a positive last axis (its pattern is the
Reciprocal-Mul form over axes ``[-1]`` only), and the near-miss report (why a Pow(x, 2) was not fused,
which the pass report and its test rely on; onnxscript says nothing about rules that did not match).
Where they differ the other way: onnxscript also takes a Cast-wrapped (fp16) norm and a scale that is not a
1-D constant (which this matcher refuses); both still pass O2's parity gate before anything is written.
Fused nodes also carry onnxscript's ``pkg.onnxscript.rewriter.rule_name`` tag.

SimplifiedLayerNormalization is onnxruntime's op in the ONNX domain (kernels on CPU, CUDA and DirectML).
"""

from __future__ import annotations

from .graph_rewrite import (
    GraphPass,
    NoMatch,
    attr,
    dim,
    ints,
    last_axis,
    rank,
    register,
    replace_value,
    scalar,
    sole_consumer,
    split_pair,
)


def _reduce_axes(node) -> list[int] | None:
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        return ints(node.inputs[1])
    axes = attr(node, "axes")
    return list(axes) if axes is not None else None


@register
class RmsNormFusion(GraphPass):
    name = "rms_norm"
    summary = "RMSNorm (Pow/ReduceMean/Add/Sqrt/Reciprocal/Mul/Mul) -> SimplifiedLayerNormalization"
    anchor_ops = ("Pow",)

    def run(self, ctx):
        from onnxscript.rewriter.ort_fusions.rms_normalization import rms_normalization_ruleset

        fused = rms_normalization_ruleset.apply_to_model(ctx.model)
        result = super().run(ctx)  # the forms onnxscript leaves, and the near misses
        result.matched += fused
        return result

    def rewrite_at(self, pow_node, ctx) -> bool:
        if scalar(pow_node.inputs[1]) != 2.0:
            return False
        x = pow_node.inputs[0]
        mean = sole_consumer(pow_node.outputs[0])
        if mean is None or mean.op_type != "ReduceMean":
            return False
        if not last_axis(_reduce_axes(mean), rank(x)) or attr(mean, "keepdims", 1) != 1:
            raise NoMatch("ReduceMean is not over the last axis with keepdims=1")
        add = sole_consumer(mean.outputs[0])
        pair = split_pair(add, lambda v: scalar(v) is not None) if add is not None and add.op_type == "Add" else None
        if pair is None:
            raise NoMatch("mean(x**2) is not followed by Add(epsilon)")
        epsilon = float(scalar(pair[0]))
        sqrt = sole_consumer(add.outputs[0])
        if sqrt is None or sqrt.op_type != "Sqrt":
            raise NoMatch("no Sqrt after Add(epsilon)")
        nxt = sole_consumer(sqrt.outputs[0])
        if nxt is not None and nxt.op_type == "Reciprocal":
            normalized = sole_consumer(nxt.outputs[0])
            if normalized is None or normalized.op_type != "Mul" or x not in normalized.inputs:
                raise NoMatch("Reciprocal(Sqrt) is not multiplied with x")
        elif nxt is not None and nxt.op_type == "Div" and nxt.inputs[0] is x:
            normalized = nxt
        else:
            raise NoMatch("Sqrt is followed by neither Reciprocal nor Div(x, .)")
        scale = sole_consumer(normalized.outputs[0])
        if scale is None or scale.op_type != "Mul":
            raise NoMatch("normalised x is not scaled by a weight")
        weight = split_pair(scale, lambda v: v is not normalized.outputs[0])[0]
        tensor = weight.const_value
        if tensor is None or len(tensor.shape) != 1:
            raise NoMatch("the scale is not a 1-D constant weight")
        if dim(x, -1) is not None and dim(x, -1) != tensor.shape[0]:
            raise NoMatch("the weight does not match the normalised axis")
        fused = ctx.node(
            "SimplifiedLayerNormalization",
            [x, weight],
            {"axis": -1, "epsilon": epsilon, "stash_type": 1},
            base="SimplifiedLayerNorm",
        )
        ctx.insert_before(scale, [fused])
        replace_value(scale.outputs[0], fused.outputs[0])
        return True
