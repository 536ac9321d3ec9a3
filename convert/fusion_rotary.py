"""Rotate-half RoPE -> com.microsoft RotaryEmbedding, correct for any batch size and padding side.

Matches ``x * cos + cat(-x[..., h/2:], x[..., :h/2]) * sin`` on (batch, heads, seq, head_dim) tensors, where
``cos``/``sin`` are ``Unsqueeze(Cos|Sin(Concat(freqs, freqs)), 1)`` computed in the graph from the positions
(the exporter's ``Qwen3RotaryEmbedding``). The fused node reads its cos/sin cache from the same in-graph
``freqs``: ``Cos(freqs)`` reshaped to (seq, head_dim / 2), i.e. one row per position of *this* call, and a
one-element ``position_ids`` of 0, so row ``s`` is used for token ``s`` of every sequence in the batch.
Nothing is precomputed: no 32k-position cache in the file, and no ``position_ids`` of batch 1 that breaks
batch > 1 (which is what onnxruntime's own Qwen3 rotary fusion produces). Left padding stays right
because RoPE only sees relative positions, exactly as in the exported graph.

Requires the angles to be shared by the batch (``freqs`` of leading dimension 1), which is what the export
computes when ``position_ids`` is not an input.

Why not onnxscript's rule (``ort_fusions.rotary_embedding`` + ``cos_sin_cache``, onnxscript 0.7.2), measured
on the exported tiny Qwen3: it fuses the same 4 rotations, but it rebuilds the cache from the in-graph
position ids (ReduceMax -> Range -> MatMul) and passes ``position_ids`` of shape (1, seq) to RotaryEmbedding,
which onnxruntime rejects for any batch above 1 ("Input 'position_ids' dimension 0 should be of size
batch_size, got 1"): O2's parity gate fails at batch 3. Its intermediate ``ai.onnxruntime._fusion`` functions
also stay in the model until an onnxscript ``optimize`` inlines them.
"""

from __future__ import annotations

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
    split_pair,
)


def _slice_bounds(node) -> tuple[int, int, int] | None:
    """(start, end, axis) of a single-axis step-1 Slice, else None."""
    if node is None or len(node.inputs) < 4:
        return None
    starts, ends, axes = ints(node.inputs[1]), ints(node.inputs[2]), ints(node.inputs[3])
    steps = ints(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] is not None else [1]
    if not (starts and ends and axes and steps) or len({len(starts), len(ends), len(axes)}) != 1 or len(starts) != 1:
        return None
    if steps != [1]:
        return None
    return starts[0], ends[0], axes[0]


def _trig_source(value, op_type: str):
    """``freqs`` when ``value`` is Unsqueeze(op_type(Concat(freqs, freqs, axis=-1)), [1]), else None."""
    unsqueeze = produced_by(value, "Unsqueeze")
    if unsqueeze is None or ints(unsqueeze.inputs[1]) != [1]:
        return None
    trig = produced_by(unsqueeze.inputs[0], op_type)
    concat = produced_by(trig.inputs[0], "Concat") if trig is not None else None
    if concat is None or len(concat.inputs) != 2 or concat.inputs[0] is not concat.inputs[1]:
        return None
    freqs = concat.inputs[0]
    if attr(concat, "axis") not in (-1, rank(freqs) - 1 if rank(freqs) else -1):
        return None
    return freqs


@register
class RotaryFusion(GraphPass):
    name = "rotary_embedding"
    summary = "x*cos + rotate_half(x)*sin -> com.microsoft RotaryEmbedding (cache = this call's angles)"
    anchor_ops = ("Add",)

    def rewrite_at(self, add, ctx) -> bool:
        mul_a, mul_b = (produced_by(v, "Mul") for v in add.inputs)
        if mul_a is None or mul_b is None:
            return False
        for first, second in ((mul_a, mul_b), (mul_b, mul_a)):
            rotated = self._rotate_half_operand(second)
            if rotated is None:
                continue
            rot_value, x = rotated
            sin_value = next(v for v in second.inputs if v is not rot_value)
            pair = split_pair(first, lambda v: v is x)
            if pair is None:
                continue
            cos_value = pair[1]
            return self._rewrite(add, x, cos_value, sin_value, ctx)
        return False

    @staticmethod
    def _rotate_half_operand(mul):
        """(Concat output, x) when one input of ``mul`` is cat(-x2, x1) of x's two halves."""
        for value in mul.inputs:
            concat = produced_by(value, "Concat")
            if concat is None or len(concat.inputs) != 2:
                continue
            neg = produced_by(concat.inputs[0], "Neg")
            upper = produced_by(neg.inputs[0], "Slice") if neg is not None else None
            lower = produced_by(concat.inputs[1], "Slice")
            if upper is None or lower is None or upper.inputs[0] is not lower.inputs[0]:
                continue
            x = lower.inputs[0]
            lo, up = _slice_bounds(lower), _slice_bounds(upper)
            if lo is None or up is None:
                continue
            half = lo[1]
            x_rank = rank(x) or 4
            axes_ok = {lo[2] % x_rank, up[2] % x_rank, attr(concat, "axis") % x_rank} == {x_rank - 1}
            head = dim(x, -1)
            if not axes_ok or lo[0] != 0 or up[0] != half or up[1] < 2 * half or half <= 0:
                continue
            if head is not None and head != 2 * half:
                continue
            if up[1] != INT64_MAX and up[1] != 2 * half:
                continue
            return value, x
        return None

    def _rewrite(self, add, x, cos_value, sin_value, ctx) -> bool:
        freqs_cos, freqs_sin = _trig_source(cos_value, "Cos"), _trig_source(sin_value, "Sin")
        if freqs_cos is None or freqs_sin is None or freqs_cos is not freqs_sin:
            raise NoMatch("cos/sin are not Unsqueeze(Cos|Sin(Concat(freqs, freqs)), 1) of the same angles")
        freqs = freqs_cos
        if rank(x) != 4:
            raise NoMatch("x is not a known 4-D (batch, heads, seq, head_dim) tensor")
        if rank(freqs) != 3 or dim(freqs, 0) != 1 or not isinstance(dim(freqs, 2), int):
            raise NoMatch("the angles are not shared by the batch (freqs is not (1, seq, head_dim/2))")
        half = dim(freqs, 2)
        if dim(x, -1) not in (None, 2 * half):
            raise NoMatch("head_dim of x does not match the angles")
        cos_cache, sin_cache, position = ctx.shared_value(("rotary_cache", id(freqs)), lambda: _cache(ctx, freqs, half))
        fused = ctx.node(
            "RotaryEmbedding",
            [x, position, cos_cache, sin_cache],
            {"interleaved": 0},
            domain=MS_DOMAIN,
            base="RotaryEmbedding",
        )
        ctx.insert_before(add, [fused])
        replace_value(add.outputs[0], fused.outputs[0])
        ctx.require_opset(MS_DOMAIN)
        return True


def _cache(ctx, freqs, half: int):
    """(cos_cache, sin_cache, position_ids) from the graph's own angles: (seq, half) rows and start 0."""
    shape = ctx.constant(np.array([-1, half], dtype=np.int64), "rotary_cache_shape")
    nodes, caches = [], []
    for op in ("Cos", "Sin"):
        trig = ctx.node(op, [freqs], base=f"rotary_{op.lower()}")
        flat = ctx.node("Reshape", [trig.outputs[0], shape], base=f"rotary_{op.lower()}_cache")
        nodes += [trig, flat]
        caches.append(flat.outputs[0])
    ctx.insert_after_producer(freqs, nodes)
    position = ctx.constant(np.array([0], dtype=np.int64), "rotary_start_position")
    return caches[0], caches[1], position
