"""Residual Add + RMSNorm -> SkipSimplifiedLayerNormalization (com.microsoft): onnxscript's rule first.

Runs after ``rms_norm``: an Add of two same-shaped (batch, seq, hidden) tensors whose sum feeds a
SimplifiedLayerNormalization becomes one node that returns both the normalised value and the sum (the
residual stream the next layer adds to). In Qwen3 that is every norm on the hidden size except the first
layer's input norm, which reads the embedding directly: 2 per decoder layer (the last one's second is the
final norm).

The rewrite is onnxscript's ``ort_fusions.skip_normalization`` rule without bias (onnxscript 0.7.2; its
bias variants fuse an Add of a constant, which this pass has always refused as "a bias, not a residual").
Measured on the exported tiny Qwen3 (2 layers): the same 4 nodes, equal op counts, O2's parity gate at
cosine_min 0.9999999999989911 either way (equal to the last digit). Two details of its output are put back
as this pass wrote them, so that the graph and what ``quantize --exclude`` matches do not change:
- the fused node's ``pkg.torch.onnx.name_scopes``: onnxscript keeps the norm's module
  (``model.layers.1.input_layernorm``), this pass the residual Add's (``model.layers.1``);
- the unused mean / inv_std_var outputs (and the sum when nothing reads it): onnxscript names them, so
  onnxruntime would compute and store them; they are left empty.
It adds the residual as its second operand where this pass kept the Add's order (exact either way: an fp32
addition commutes). With both put back, the O2 graph is node for node the one this pass wrote alone (op,
domain, module scope, outputs; onnxscript adds its ``pkg.onnxscript.rewriter.rule_name`` tag). This pass's
own matcher then runs on what is left, for its near-miss report.
"""

from __future__ import annotations

from .graph_rewrite import MS_DOMAIN, GraphPass, NoMatch, attr, produced_by, rank, register, replace_value, same_shape

_FUSED = "SkipSimplifiedLayerNormalization"


def _onnxscript_rules():
    from onnxscript.rewriter import pattern
    from onnxscript.rewriter.ort_fusions.skip_normalization import SkipRmsNormFusion as Rule

    class ResidualScope(Rule):
        """onnxscript's rule, the fused node carrying the residual Add's metadata (onnxscript merges the
        matched nodes' metadata afterwards, keeping the values a node already has)."""

        def rewrite(self, op, skip_sum=None, **bindings):
            normalized, total = super().rewrite(op, skip_sum=skip_sum, **bindings)
            add = skip_sum.producer() if skip_sum is not None else None
            if add is not None:
                normalized.producer().metadata_props.update(add.metadata_props)
            return normalized, total

    return pattern.RewriteRuleSet([ResidualScope.rule("SkipRmsNorm", has_bias=False)])


@register
class SkipRmsNormFusion(GraphPass):
    name = "skip_rms_norm"
    summary = "Add + SimplifiedLayerNormalization -> SkipSimplifiedLayerNormalization"
    anchor_ops = ("SimplifiedLayerNormalization",)

    def run(self, ctx):
        fused = _onnxscript_rules().apply_to_model(ctx.model)
        for node in ctx.graph:
            for out in node.outputs[1:] if node.op_type == _FUSED else ():
                if not out.uses() and not out.is_graph_output():
                    out.name = ""  # an unnamed optional output is one onnxruntime does not compute
        if fused:
            ctx.require_opset(MS_DOMAIN)
        result = super().run(ctx)  # near misses (and anything onnxscript's pattern does not cover)
        result.matched += fused
        return result

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
            _FUSED,
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
