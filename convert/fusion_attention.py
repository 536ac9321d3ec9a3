"""Scaled-dot-product attention -> com.microsoft MultiHeadAttention, the q/k norms kept before it.

Matches the attention torch exports for Qwen3 (``sdpa`` with a 4-D additive mask): the scores
``(q * a) @ transpose(k * b)`` (or scaled after the MatMul), ``+ mask``, ``Softmax``, the exporter's
``Where(IsNaN(p), 0, p)`` guard, ``@ v``, and the transpose/reshape back to (batch, seq, hidden). ``k`` and
``v`` may come through ``repeat_kv`` (Unsqueeze -> Expand -> Reshape) and ``q``/``k`` through a fused
RotaryEmbedding; the key transpose may be the exporter's reshape-transpose-reshape form.

The replacement works on (batch, seq, heads * head_dim) tensors, the layout the projections produce:
q_norm/k_norm stay SimplifiedLayerNormalization on the (batch, seq, heads, head_dim) view, rotary runs on
the 3-D tensor (no transposes), grouped K/V heads are repeated once with Expand, and the graph's own mask
becomes MultiHeadAttention's ``attention_bias`` (causal + padding, built once and shared by every layer).
The mask must be finite (``Where(cond, 0, finfo.min)``, as exported); a ``-inf`` mask is rebuilt with the
float minimum so that a fully masked row (a left-pad query) cannot turn into NaN, which the exporter's guard
used to zero. Padding queries are never read by the outputs (pooling and later layers mask them out).

Why not onnxscript's rules (onnxscript 0.7.2), measured on the exported tiny Qwen3 after the norm and rotary
passes: ``sdpa`` matches both layers but ``mha1``/``mha2`` match none (their patterns are built around a
rotary on heads-first tensors and a past-key Concat, not this graph's q/k norms and repeat_kv), leaving its
intermediate SDPA function and no MultiHeadAttention. Its whole pipeline (``optimize_for_ort``) instead
reaches fp32 GroupQueryAttention without the graph's mask (``seqlens_k`` of one element): onnxruntime rejects
it at batch 3 ("seqlens_k must have batch_size (3) elements, got 1"), and GroupQueryAttention has no fp32
kernel on CUDA.
"""

from __future__ import annotations

import math

import numpy as np

from .graph_rewrite import (
    INT64_MAX,
    MS_DOMAIN,
    GraphPass,
    NoMatch,
    attr,
    dim,
    ints,
    produced_by,
    rank,
    register,
    replace_value,
    scalar,
    sole_consumer,
    split_pair,
)


def strip_scale(value) -> tuple[float, object]:
    """(factor, x) for value = x * c, c * x or x / c with a scalar constant c; (1.0, value) otherwise."""
    for op in ("Mul", "Div"):
        node = produced_by(value, op)
        if node is None:
            continue
        if op == "Div":
            c = scalar(node.inputs[1])
            if c is not None and c != 0:
                return 1.0 / float(c), node.inputs[0]
            continue
        pair = split_pair(node, lambda v: scalar(v) is not None)
        if pair is not None:
            return float(scalar(pair[0])), pair[1]
    return 1.0, value


def shape_parts(value) -> list | None:
    """A 1-D shape tensor element by element: an int for a constant element, ("dim", src, i) for dimension i
    of ``src`` read through ``Shape(src)`` (whole, sliced, or with start/end), None for another dynamic
    element; None overall when the element count cannot be told."""
    const = ints(value)
    if const is not None:
        return list(const)
    concat = produced_by(value, "Concat")
    elements: list = []
    for piece in list(concat.inputs) if concat is not None else [value]:
        const = ints(piece)
        if const is not None:
            elements += const
            continue
        dims = _shape_dims(piece)
        if dims is not None:
            elements += dims
        elif isinstance(dim(piece, 0), int):
            elements += [None] * dim(piece, 0)
        else:
            return None
    return elements


def _shape_dims(value) -> list | None:
    """[("dim", src, i), ...] for Shape(src)[start:end] (Shape's own start/end or a Slice of Shape)."""
    start, end = 0, INT64_MAX
    sliced = produced_by(value, "Slice")
    if sliced is not None:
        starts, ends = ints(sliced.inputs[1]), ints(sliced.inputs[2])
        axes = ints(sliced.inputs[3]) if len(sliced.inputs) > 3 and sliced.inputs[3] is not None else [0]
        steps = ints(sliced.inputs[4]) if len(sliced.inputs) > 4 and sliced.inputs[4] is not None else [1]
        if not (starts and ends) or len(starts) != 1 or axes != [0] or steps != [1]:
            return None
        start, end, value = starts[0], ends[0], sliced.inputs[0]
    shape_node = produced_by(value, "Shape")
    src_rank = rank(shape_node.inputs[0]) if shape_node is not None else None
    if src_rank is None:
        return None
    own = range(src_rank)[slice(attr(shape_node, "start", 0), attr(shape_node, "end", INT64_MAX))]
    return [("dim", shape_node.inputs[0], i) for i in own[slice(start, end)]]


def untranspose_key(kt):
    """k for kt = Transpose(k, [0, 1, 3, 2]) or the exporter's Reshape -> Transpose([0, 2, 1]) -> Reshape."""
    transpose = produced_by(kt, "Transpose")
    if transpose is not None and list(attr(transpose, "perm", [])) == [0, 1, 3, 2]:
        return transpose.inputs[0]
    outer = produced_by(kt, "Reshape")
    transpose = produced_by(outer.inputs[0], "Transpose") if outer is not None else None
    inner = produced_by(transpose.inputs[0], "Reshape") if transpose is not None else None
    if inner is None or list(attr(transpose, "perm", [])) != [0, 2, 1]:
        raise NoMatch("the key is not transposed over its last two axes")
    k = inner.inputs[0]

    def d(i):
        return ("dim", k, i)

    to3d, to4d = shape_parts(inner.inputs[1]), shape_parts(outer.inputs[1])
    if to3d != [-1, d(2), d(3)] or to4d != [d(0), d(1), d(3), d(2)]:
        raise NoMatch("the key's reshape-transpose-reshape is not a transpose of its last two axes")
    return k


def repeated_heads(value) -> tuple[object, int, int] | None:
    """(x, kv_heads, groups) for repeat_kv: Reshape(Expand(Unsqueeze(x, [2]), (B, Hkv, G, S, D)), (B, H, S, D))."""
    reshape = produced_by(value, "Reshape")
    expand = produced_by(reshape.inputs[0], "Expand") if reshape is not None else None
    unsqueeze = produced_by(expand.inputs[0], "Unsqueeze") if expand is not None else None
    if unsqueeze is None or ints(unsqueeze.inputs[1]) != [2]:
        return None
    target, merged = shape_parts(expand.inputs[1]), shape_parts(reshape.inputs[1])
    if target is None or merged is None or len(target) != 5 or len(merged) != 4:
        return None
    kv_heads, groups, heads = target[1], target[2], merged[1]
    if not all(isinstance(v, int) and v > 0 for v in (kv_heads, groups, heads)) or kv_heads * groups != heads:
        return None
    return unsqueeze.inputs[0], kv_heads, groups


def first_int(*candidates) -> int | None:
    return next((c for c in candidates if isinstance(c, int) and not isinstance(c, bool)), None)


def heads_first(value) -> tuple[object, object | None]:
    """(x_bsnh, rotary) for value = [RotaryEmbedding](Transpose(x_bsnh, [0, 2, 1, 3]))."""
    rotary = produced_by(value, "RotaryEmbedding", MS_DOMAIN)
    if rotary is not None:
        value = rotary.inputs[0]
    transpose = produced_by(value, "Transpose")
    if transpose is None or list(attr(transpose, "perm", [])) != [0, 2, 1, 3]:
        raise NoMatch("q/k/v is not a (batch, seq, heads, head_dim) tensor transposed to heads-first")
    return transpose.inputs[0], rotary


def after_softmax(probs):
    """The value the probabilities reach the value MatMul through (skipping Where(IsNaN(p), 0, p))."""
    users = {id(u.node): u.node for u in probs.uses()}
    if len(users) == 2:
        isnan = next((n for n in users.values() if n.op_type == "IsNaN"), None)
        where = next((n for n in users.values() if n.op_type == "Where"), None)
        if (
            isnan is not None
            and where is not None
            and where.inputs[0] is isnan.outputs[0]
            and scalar(where.inputs[1]) == 0.0
            and where.inputs[2] is probs
        ):
            return where.outputs[0]
    return probs


def mask_is_finite(mask) -> bool | None:
    """True for Where(cond, 0, finite), False for Where(cond, 0, -inf), None when unrecognised."""
    where = produced_by(mask, "Where")
    if where is None or scalar(where.inputs[1]) != 0.0 or scalar(where.inputs[2]) is None:
        return None
    return bool(np.isfinite(scalar(where.inputs[2])))


@register
class AttentionFusion(GraphPass):
    name = "attention"
    summary = "SDPA (+ repeat_kv, rotary; q/k norms kept) -> com.microsoft MultiHeadAttention with attention_bias"
    anchor_ops = ("Softmax",)

    def rewrite_at(self, softmax, ctx) -> bool:
        if attr(softmax, "axis", -1) not in (-1, 3):
            return False
        scores = softmax.inputs[0]
        mask = None
        add = produced_by(scores, "Add")
        if add is not None:
            pair = split_pair(add, lambda v: produced_by(strip_scale(v)[1], "MatMul") is not None)
            if pair is None:
                raise NoMatch("the softmax input is not QK^T + mask")
            scores, mask = pair
        qk_scale, qk = strip_scale(scores)
        matmul = produced_by(qk, "MatMul")
        if matmul is None:
            return False
        q_scale, q = strip_scale(matmul.inputs[0])
        k_scale, kt = strip_scale(matmul.inputs[1])
        k = untranspose_key(kt)
        probs = after_softmax(softmax.outputs[0])
        weighted = sole_consumer(probs)
        if weighted is None or weighted.op_type != "MatMul" or weighted.inputs[0] is not probs:
            raise NoMatch("the probabilities are not multiplied with V")
        v = weighted.inputs[1]
        back = sole_consumer(weighted.outputs[0])
        if back is None or back.op_type != "Transpose" or list(attr(back, "perm", [])) != [0, 2, 1, 3]:
            raise NoMatch("the attention output is not transposed back to (batch, seq, heads, head_dim)")
        merge = sole_consumer(back.outputs[0])
        merged = shape_parts(merge.inputs[1]) if merge is not None and merge.op_type == "Reshape" else None
        if merged is None or len(merged) != 3:
            raise NoMatch("the attention output is not reshaped to (batch, seq, hidden)")

        k_rep, v_rep = repeated_heads(k), repeated_heads(v)
        if (k_rep is None) != (v_rep is None) or (k_rep and k_rep[1:] != v_rep[1:]):
            raise NoMatch("K and V are not repeated alike")
        if k_rep is not None:
            k, v = k_rep[0], v_rep[0]
        q_bsnh, q_rotary = heads_first(q)
        k_bsnh, k_rotary = heads_first(k)
        v_bsnh, v_rotary = heads_first(v)
        if (q_rotary is None) != (k_rotary is None) or v_rotary is not None:
            raise NoMatch("rotary is not applied to exactly q and k")
        head_size = first_int(dim(q, -1), dim(q_bsnh, -1), dim(k_bsnh, -1), dim(v_bsnh, -1))
        heads = first_int(dim(q_bsnh, 2), dim(q, 1), k_rep[1] * k_rep[2] if k_rep else None)
        kv_heads, groups = (k_rep[1], k_rep[2]) if k_rep else (heads, 1)
        if head_size is None or heads is None or heads != kv_heads * groups:
            raise NoMatch("head count or head size unknown")
        if merged[2] not in (-1, heads * head_size):
            raise NoMatch("the attention output is not reshaped to (batch, seq, heads * head_dim)")
        if mask is not None:
            if rank(mask) not in (None, 4) or dim(mask, 1) not in (None, 1):
                raise NoMatch("the mask is not (batch|1, 1, seq, total_seq)")
            finite = mask_is_finite(mask)
            if finite is None:
                raise NoMatch("unrecognised mask (not Where(cond, 0, c))")
            if not finite:
                mask = ctx.shared_value(("finite_mask", id(mask)), lambda: _finite_mask(ctx, mask))

        scale = q_scale * k_scale * qk_scale
        default = 1.0 / math.sqrt(head_size)
        flat = ctx.shared_value("to_bsd", lambda: ctx.constant(np.array([0, 0, -1], dtype=np.int64), "to_bsd"))
        nodes = []

        def emit(node):
            nodes.append(node)
            return node.outputs[0]

        def project(x_bsnh, rotary):
            x3 = emit(ctx.node("Reshape", [x_bsnh, flat], base="attention_bsd"))
            if rotary is not None:
                x3 = emit(
                    ctx.node(
                        "RotaryEmbedding",
                        [x3, *rotary.inputs[1:4]],
                        {"interleaved": attr(rotary, "interleaved", 0)},
                        domain=MS_DOMAIN,
                        base="RotaryEmbedding",
                    )
                )
            return x3

        q3, k3, v3 = project(q_bsnh, q_rotary), project(k_bsnh, k_rotary), project(v_bsnh, None)
        if groups > 1:
            k3, v3 = (self._repeat(ctx, x, kv_heads, groups, head_size, emit) for x in (k3, v3))
        mha = ctx.node(
            "MultiHeadAttention",
            [q3, k3, v3, None, None, mask],
            {"num_heads": heads, "scale": None if math.isclose(scale, default, rel_tol=1e-5) else scale},
            domain=MS_DOMAIN,
            base="MultiHeadAttention",
        )
        nodes.append(mha)
        ctx.insert_before(merge, nodes)
        replace_value(merge.outputs[0], mha.outputs[0])
        ctx.require_opset(MS_DOMAIN)
        return True

    @staticmethod
    def _repeat(ctx, x3, kv_heads: int, groups: int, head_size: int, emit):
        """(B, S, Hkv*D) -> (B, S, Hkv*G*D), each kv head repeated G times in place (repeat_kv order)."""
        split = ctx.shared_value(
            ("kv_split", kv_heads, head_size),
            lambda: ctx.constant(np.array([0, 0, kv_heads, 1, head_size], dtype=np.int64), "kv_heads_split"),
        )
        tile = ctx.shared_value(
            ("kv_tile", groups), lambda: ctx.constant(np.array([1, 1, 1, groups, 1], dtype=np.int64), "kv_repeat")
        )
        merged = ctx.shared_value(
            ("kv_merged", kv_heads * groups * head_size),
            lambda: ctx.constant(np.array([0, 0, kv_heads * groups * head_size], dtype=np.int64), "kv_heads_merged"),
        )
        grouped = emit(ctx.node("Reshape", [x3, split], base="repeat_kv_split"))
        tiled = emit(ctx.node("Expand", [grouped, tile], base="repeat_kv_expand"))
        return emit(ctx.node("Reshape", [tiled, merged], base="repeat_kv_merge"))


def _finite_mask(ctx, mask):
    where = mask.producer()
    low = ctx.constant(np.array(np.finfo(np.float32).min, dtype=np.float32), "mask_min")
    node = ctx.node("Where", [where.inputs[0], where.inputs[1], low], base="finite_attention_mask")
    ctx.insert_after_producer(mask, [node])
    return node.outputs[0]


__all__ = ["AttentionFusion", "repeated_heads", "shape_parts", "strip_scale"]
