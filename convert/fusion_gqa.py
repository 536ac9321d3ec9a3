"""O4 (fp16, CUDA): MultiHeadAttention -> com.microsoft GroupQueryAttention in fp16.

Runs on the O2/O3 graph. GroupQueryAttention reads the grouped K/V heads as they are (the repeat_kv
Expand that MultiHeadAttention needed disappears) and has fp16/bf16 kernels on CUDA (its CPU kernel also
takes fp16, which is how the variant is checked on a machine without a GPU). Queries, keys and values are
cast to fp16 right before it and the output back to fp32; norms, rotary and residual adds stay fp32, the
projections go fp16 through the same selective fp16 conversion as ``qconv quantize --mode fp16``.

Every sequence is passed as full length (``seqlens_k = seq - 1``) with ``causal=1``; padding (left or right)
is carried by ``attention_bias``: the graph's causal+padding mask clamped to -10000 so that it stays finite
in fp16 (a fully masked row, a left-pad query, then averages instead of turning into NaN).

qconv's own: onnxscript 0.7.2's ``gqa`` rule starts from its own intermediate SDPA node, so it matches none
of the MultiHeadAttention nodes of the O2 graph; from the raw export its whole pipeline reaches an fp32
GroupQueryAttention (mask dropped, one-element ``seqlens_k``) that fails at batch 3, see ``fusion_attention``.
"""

from __future__ import annotations

import numpy as np

from .graph_rewrite import MS_DOMAIN, GraphPass, NoMatch, attr, ints, produced_by, register, replace_value

FP16_MASK_FLOOR = -10000.0


def grouped_source(value) -> tuple[object, int, int] | None:
    """(x, kv_heads, groups) for the attention pass's repeat: Reshape(Expand(Reshape(x, [0,0,Hkv,1,D]), G), merged)."""
    merge = produced_by(value, "Reshape")
    expand = produced_by(merge.inputs[0], "Expand") if merge is not None else None
    split = produced_by(expand.inputs[0], "Reshape") if expand is not None else None
    if split is None:
        return None
    split_shape, tile = ints(split.inputs[1]), ints(expand.inputs[1])
    if not split_shape or not tile or len(split_shape) != 5 or split_shape[3] != 1 or len(tile) != 5:
        return None
    if tile[:3] != [1, 1, 1] or tile[4] != 1:
        return None
    return split.inputs[0], split_shape[2], tile[3]


@register
class GroupQueryAttentionFusion(GraphPass):
    name = "attention_gqa"
    summary = "MultiHeadAttention (grouped K/V) -> fp16 com.microsoft GroupQueryAttention (CUDA)"
    anchor_ops = ("MultiHeadAttention",)
    anchor_domains = (MS_DOMAIN,)

    def rewrite_at(self, mha, ctx) -> bool:
        import onnx_ir as ir

        inputs = list(mha.inputs) + [None] * (6 - len(mha.inputs))
        q, k, v, bias, padding, mask = inputs[:6]
        if bias is not None or padding is not None or len(mha.inputs) > 6:
            raise NoMatch("MultiHeadAttention with bias, key_padding_mask or past inputs")
        heads = int(attr(mha, "num_heads"))
        k_group, v_group = grouped_source(k), grouped_source(v)
        if (k_group is None) != (v_group is None) or (k_group and k_group[1:] != v_group[1:]):
            raise NoMatch("K and V are not repeated alike")
        if k_group is not None:
            k, kv_heads, groups = k_group
            v = v_group[0]
            if kv_heads * groups != heads:
                raise NoMatch("kv heads x groups != heads")
        else:
            kv_heads = heads
        seqlens, total = ctx.shared_value("gqa_lengths", lambda: _lengths(ctx, q))
        fp16 = int(ir.DataType.FLOAT16)
        casts = [ctx.node("Cast", [x], {"to": fp16}, base=f"gqa_{n}_fp16") for n, x in zip("qkv", (q, k, v))]
        if mask is not None:
            mask = ctx.shared_value(("gqa_mask", id(mask)), lambda: _fp16_mask(ctx, mask))
        gqa = ctx.node(
            "GroupQueryAttention",
            [*(cast.outputs[0] for cast in casts), None, None, seqlens, total, None, None, None, mask],
            {"num_heads": heads, "kv_num_heads": kv_heads, "scale": attr(mha, "scale"), "causal": 1},
            domain=MS_DOMAIN,
            base="GroupQueryAttention",
        )
        back = ctx.node("Cast", [gqa.outputs[0]], {"to": int(ir.DataType.FLOAT)}, base="gqa_out_fp32")
        ctx.insert_before(mha, [*casts, gqa, back])
        replace_value(mha.outputs[0], back.outputs[0])
        return True


def _lengths(ctx, q):
    """seqlens_k (int32 [batch], every row full length - 1) and total_sequence_length (int32 scalar)."""
    import onnx_ir as ir

    seq = ctx.node("Shape", [q], {"start": 1, "end": 2}, base="gqa_seq_len")
    batch = ctx.node("Shape", [q], {"start": 0, "end": 1}, base="gqa_batch")
    one = ctx.constant(np.array([1], dtype=np.int64), "gqa_one")
    last = ctx.node("Sub", [seq.outputs[0], one], base="gqa_last_index")
    rows = ctx.node("Expand", [last.outputs[0], batch.outputs[0]], base="gqa_rows")
    seqlens = ctx.node("Cast", [rows.outputs[0]], {"to": int(ir.DataType.INT32)}, base="gqa_seqlens_k")
    scalar_shape = ctx.constant(np.array([], dtype=np.int64), "gqa_scalar_shape")
    total64 = ctx.node("Reshape", [seq.outputs[0], scalar_shape], base="gqa_total_len64")
    total = ctx.node("Cast", [total64.outputs[0]], {"to": int(ir.DataType.INT32)}, base="gqa_total_len")
    ctx.insert_after_producer(q, [seq, batch, last, rows, seqlens, total64, total])
    return seqlens.outputs[0], total.outputs[0]


def _fp16_mask(ctx, mask):
    import onnx_ir as ir

    floor = ctx.constant(np.array(FP16_MASK_FLOOR, dtype=np.float32), "gqa_mask_floor")
    clamp = ctx.node("Max", [mask, floor], base="gqa_mask_clamp")
    cast = ctx.node("Cast", [clamp.outputs[0]], {"to": int(ir.DataType.FLOAT16)}, base="gqa_mask_fp16")
    ctx.insert_after_producer(mask, [clamp, cast])
    return cast.outputs[0]
