"""Residual Add + RMSNorm -> SkipSimplifiedLayerNormalization (com.microsoft).

Runs after ``rms_norm``: an Add of two same-shaped (batch, seq, hidden) tensors whose sum feeds a
SimplifiedLayerNormalization becomes one node that returns both the normalised value and the sum (the
residual stream the next layer adds to). In Qwen3 that is every norm on the hidden size except the first
layer's input norm, which reads the embedding directly: 2 per decoder layer (the last one's second is the
final norm).
"""

from __future__ import annotations

from .graph_rewrite import MS_DOMAIN, GraphPass, NoMatch, attr, produced_by, rank, register, replace_value, same_shape


@register
class SkipRmsNormFusion(GraphPass):
    name = "skip_rms_norm"
    summary = "Add + SimplifiedLayerNormalization -> SkipSimplifiedLayerNormalization"
    anchor_ops = ("SimplifiedLayerNormalization",)

    def rewrite_at(self, norm, ctx) -> bool:
        add = produced_by(norm.inputs[0], "Add")
        if add is None:
            return False
        a, b = add.inputs
        if a.const_value is not None or b.const_value is not None:
            raise NoMatch("one side of the Add is a constant (a bias, not a residual)")
        if not (rank(a) == 3 and same_shape(a, b) and same_shape(a, add.outputs[0])):
            raise NoMatch("the Add is not of two same-shaped 3-D tensors (shapes unknown or broadcasting)")
        if attr(norm, "axis", -1) not in (-1, 2) or attr(norm, "stash_type", 1) != 1:
            raise NoMatch("the norm is not over the last axis in fp32")
        total = add.outputs[0]
        keep_sum = any(use.node is not norm for use in total.uses()) or total.is_graph_output()
        fused = ctx.node(
            "SkipSimplifiedLayerNormalization",
            [a, b, norm.inputs[1]],
            {"epsilon": attr(norm, "epsilon", 1e-5)},
            domain=MS_DOMAIN,
            num_outputs=4,
            used_outputs=(0, 3) if keep_sum else (0,),
            base="SkipSimplifiedLayerNorm",
        )
        ctx.insert_before(add, [fused])
        replace_value(norm.outputs[0], fused.outputs[0])
        if keep_sum:
            replace_value(total, fused.outputs[3])
        ctx.require_opset(MS_DOMAIN)
        return True
