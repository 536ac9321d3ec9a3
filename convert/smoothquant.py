"""SmoothQuant (Xiao et al. 2023) folded into the ONNX graph: no new op, the quantized graph is still
MatMulInteger.

For an activation ``X`` that feeds only weight MatMuls, per-input-channel scales
``s = max|X|^alpha / max|W|^(1-alpha)`` move the outliers from the activation into the weights:
``X / s`` comes from the op that made ``X`` (exactly), ``W * s`` (rows) from the MatMuls that read it.

Where ``X / s`` is folded:
- a norm's gamma (and beta): plain graphs (``Mul`` by a constant vector: RMSNorm's weight) and fused ones
  (``SimplifiedLayerNormalization``, ``SkipSimplifiedLayerNormalization``, ``LayerNormalization``,
  ``SkipLayerNormalization``) alike: Qwen3's q/k/v (``input_layernorm``) and gate/up
  (``post_attention_layernorm``);
- the gated MLP's ``up_proj`` output columns, for ``down_proj``'s input (``silu(gate) * up``).

- the attention's value projection, for ``o_proj``'s input (the attention output). The attention output
  is, per query head, a convex mix of that head's value rows, so scaling a value channel scales the same
  channel of the output exactly. With GQA one value channel serves every query head of its group: the
  scale is chosen once per value channel (max over the group's heads, activations and ``o_proj`` rows
  alike), divided out of ``v_proj``'s output columns (and bias) and multiplied into the ``o_proj`` rows
  of every head that reads it. Needs the head layout (``AttentionLayout``, from config.json) where there
  are fewer value heads than query heads; without it, or where the path from ``o_proj`` back to
  ``v_proj`` is not plain layout ops (reshape/transpose/repeat_kv) around one attention, ``o_proj`` is
  left alone.
Activations that also feed something other than weight MatMuls (BERT's post-LN residual) are left alone.

``alpha`` is one value for every site, or chosen per site (``smooth(..., alpha=None)``): the candidate whose
quantized MatMul outputs, under a NumPy stand-in of the mode's kernels (``convert/fake_quant.py``), stay
closest to fp32 on the calibration activations ("none" included: a site that smoothing hurts stays as is).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .fake_quant import FakeQuant
from .graph_index import GraphIndex

# op_type -> (gamma input index, beta input index or None)
NORM_SCALE_INPUTS = {
    "SimplifiedLayerNormalization": (1, None),
    "SkipSimplifiedLayerNormalization": (2, None),
    "LayerNormalization": (1, 2),
    "SkipLayerNormalization": (2, 3),
}


@dataclass(frozen=True)
class AttentionLayout:
    """Query heads, value heads and head size: which value channel each attention-output channel reads."""

    heads: int
    kv_heads: int
    head_dim: int

    @classmethod
    def from_config(cls, config: dict) -> AttentionLayout | None:
        """From a transformers config.json (None when it does not say)."""
        heads, hidden = config.get("num_attention_heads"), config.get("hidden_size")
        kv_heads = config.get("num_key_value_heads") or heads
        head_dim = config.get("head_dim") or (hidden // heads if isinstance(hidden, int) and heads else None)
        values = (heads, kv_heads, head_dim)
        if not all(isinstance(v, int) and v > 0 for v in values) or heads % kv_heads:
            return None
        return cls(*values)

    def value_channel(self) -> np.ndarray:
        """For output channel ``h * head_dim + j``: value column ``(h // group) * head_dim + j`` (repeat_kv)."""
        channel = np.arange(self.heads * self.head_dim)
        head, within = np.divmod(channel, self.head_dim)
        return (head // (self.heads // self.kv_heads)) * self.head_dim + within


# Ops that move the (head, channel) pairs of the value around without mixing channels: the reshapes and
# transposes between the projections and the attention, and repeat_kv (Unsqueeze, Expand, Reshape).
_LAYOUT_OPS = {"Reshape", "Transpose", "Unsqueeze", "Expand", "Identity"}
# Heads-first <-> sequence-first, the only transpose whose meaning the value-channel map assumes.
_HEAD_SWAP = [0, 2, 1, 3]
# Fused attention ops (com.microsoft) and the input index of their value.
_FUSED_ATTENTION_VALUE = {"MultiHeadAttention": 2, "GroupQueryAttention": 2}


@dataclass
class SmoothGroup:
    activation: str  # the tensor whose channels are divided by s
    matmuls: list[str]  # nodes reading it; their weight rows are multiplied by s
    divide_vectors: list[str] = field(default_factory=list)  # 1-D initializers divided by s (gamma, beta)
    divide_columns: str | None = None  # 2-D initializer whose columns are divided by s (up_proj's weight)
    site: str = ""  # where the fold goes, for people ("Mul (gated MLP, up = /model/.../up_proj/MatMul)")
    kind: str = ""  # the site's kind, for summaries: a norm's op type, "norm gamma", "gated MLP", "attention output"
    # o_proj: the value column each activation channel reads; the scale is chosen per value column and
    # ``divide_vectors`` / ``divide_columns`` (v_proj's bias / weight) are in value columns.
    value_channel: np.ndarray | None = None

    def row_scale(self, scale: np.ndarray) -> np.ndarray:
        """The scale per activation channel (= weight row) for the group's scale (per value column for o_proj)."""
        return scale if self.value_channel is None else scale[self.value_channel]


class _Graph(GraphIndex):
    def weight_of(self, node) -> str | None:
        """The constant 2-D B of a MatMul ``A x B``, else None."""
        if node.op_type != "MatMul" or len(node.input) < 2:
            return None
        init = self.inits.get(node.input[1])
        return init.name if init is not None and len(init.dims) == 2 else None

    def private_vector(self, name: str, owner, length: int) -> bool:
        init = self.inits.get(name)
        return (
            init is not None
            and list(init.dims) in ([length], [1, length], [1, 1, length])
            and len(self.consumers.get(name, [])) == 1
            and self.consumers[name][0] is owner
        )

    def only_reader(self, name: str, node) -> bool:
        """``node`` is the one op reading ``name`` by value (Shape ops read only its shape, which a channel
        scale leaves alone)."""
        readers = [r for r in self.consumers.get(name, []) if r.op_type != "Shape"]
        return name not in self.outputs and len(readers) == 1 and readers[0] is node

    def through_layout(self, name: str, reader):
        """Walk from ``name`` (read by ``reader``) back through layout ops that only it feeds:
        (the value that entered them, the op that made it), or None where a transpose is not a head swap."""
        while True:
            producer = self.producer.get(name)
            if producer is None or not self.only_reader(name, reader):
                return None
            if producer.op_type not in _LAYOUT_OPS:
                return name, producer
            if producer.op_type == "Transpose" and _perm(producer) != _HEAD_SWAP:
                return None
            name, reader = producer.input[0], producer

    def value_projection(self, activation: str, o_proj, layout: AttentionLayout | None):
        """(v_proj node, v bias or None, value-channel map) when ``activation`` is an attention output made
        from a projected value by layout ops only, else None."""
        found = self.through_layout(activation, o_proj)
        if found is None:
            return None
        _, attention = found
        if attention.op_type in _FUSED_ATTENTION_VALUE and attention.domain == "com.microsoft":
            # A packed bias (input 3) would hold v's bias too; nothing qconv makes uses it.
            if len(attention.input) > 3 and attention.input[3]:
                return None
            value = attention.input[_FUSED_ATTENTION_VALUE[attention.op_type]]
        elif attention.op_type == "MatMul" and not any(i in self.inits for i in attention.input):
            value = attention.input[1]  # softmax(Q K^T) @ V
        else:
            return None
        found = self.through_layout(value, attention)
        if found is None:
            return None
        projected, producer = found
        bias = None
        if producer.op_type == "Add":
            channels = None
            for const, other in (producer.input, producer.input[::-1]):
                init = self.inits.get(const)
                if init is not None and other not in self.inits:
                    channels, bias, projected = init.dims[-1], const, other
                    break
            if bias is None or not self.private_vector(bias, producer, channels):
                return None
            v_proj = self.producer.get(projected)
            if v_proj is None or not self.only_reader(projected, producer):
                return None
        else:
            v_proj = producer
        v_weight, o_weight = self.weight_of(v_proj), self.weight_of(o_proj)
        if v_weight is None or len(self.consumers[v_weight]) != 1:
            return None
        values, outputs = self.inits[v_weight].dims[1], self.inits[o_weight].dims[0]
        if values == outputs and (layout is None or layout.heads == layout.kv_heads):
            return v_proj, bias, np.arange(outputs)  # one value head per query head: channel i reads column i
        if layout is None or (values, outputs) != (layout.kv_heads * layout.head_dim, layout.heads * layout.head_dim):
            return None
        return v_proj, bias, layout.value_channel()


def _perm(node) -> list[int] | None:
    for attr in node.attribute:
        if attr.name == "perm":
            return list(attr.ints)
    return None


def find_groups(model, layout: AttentionLayout | None = None) -> list[SmoothGroup]:
    """Every activation whose channel scale can be folded exactly, with where the fold goes. ``layout``:
    the attention heads, needed to smooth ``o_proj`` under GQA."""
    g = _Graph(model)
    groups = []
    seen = set()
    for node in model.graph.node:
        if g.weight_of(node) is None or node.input[0] in seen:
            continue
        activation = node.input[0]
        seen.add(activation)
        readers = g.consumers.get(activation, [])
        if activation in g.outputs or any(
            g.weight_of(r) is None or r.input[0] != activation or len(g.consumers[g.weight_of(r)]) != 1 for r in readers
        ):
            continue
        channels = g.inits[g.weight_of(node)].dims[0]
        producer = g.producer.get(activation)
        if producer is None:
            continue
        group = SmoothGroup(activation, [r.name for r in readers], site=producer.op_type, kind=producer.op_type)
        if producer.op_type in NORM_SCALE_INPUTS and producer.output[0] == activation:
            gamma_at, beta_at = NORM_SCALE_INPUTS[producer.op_type]
            vectors = [producer.input[gamma_at]]
            if beta_at is not None and len(producer.input) > beta_at and producer.input[beta_at]:
                vectors.append(producer.input[beta_at])
            if all(g.private_vector(v, producer, channels) for v in vectors):
                group.divide_vectors = vectors
                groups.append(group)
        elif producer.op_type == "Mul":
            constant = [i for i in producer.input if g.private_vector(i, producer, channels)]
            if constant:
                group.divide_vectors = constant[:1]
                group.site, group.kind = "Mul (norm gamma)", "norm gamma"
                groups.append(group)
                continue
            for operand in producer.input:
                up = g.producer.get(operand)
                if (
                    up is not None
                    and g.weight_of(up) is not None
                    and operand not in g.outputs
                    and len(g.consumers.get(operand, [])) == 1
                    and g.inits[g.weight_of(up)].dims[1] == channels
                    and len(g.consumers.get(g.weight_of(up), [])) == 1
                ):
                    group.divide_columns = g.weight_of(up)
                    group.site, group.kind = f"Mul (gated MLP, up = {up.name})", "gated MLP"
                    groups.append(group)
                    break
        elif len(readers) == 1 and (value := g.value_projection(activation, node, layout)) is not None:
            v_proj, bias, group.value_channel = value
            group.divide_columns = g.weight_of(v_proj)
            group.divide_vectors = [bias] if bias else []
            group.site, group.kind = f"attention output (v = {v_proj.name})", "attention output"
            groups.append(group)
    return groups


def activation_samples(model, groups: list[SmoothGroup], batches, work) -> dict[str, list[np.ndarray]]:
    """Every group's activation over the calibration batches: per batch, the attended tokens' rows (one ORT
    session). A batch stays together: it is what one per-tensor quantization step sees."""
    from qconv.runtime.embedder import open_session

    from .variants import save_probe

    names = [grp.activation for grp in groups]
    path = work / "smooth_probe.onnx"
    save_probe(model, names, path)
    session = open_session(path, ["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    samples: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for feeds in batches:
        values = session.run(names, {k: v for k, v in feeds.items() if k in inputs})
        for name, value in zip(names, values):
            samples[name].append(_attended_rows(value, feeds["attention_mask"]).astype(np.float32))
    return samples


def ranges_of(samples: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    """max |X| per channel of every sampled activation."""
    return {name: np.max([np.abs(rows).max(axis=0) for rows in batches], axis=0) for name, batches in samples.items()}


def activation_ranges(model, groups: list[SmoothGroup], batches, work) -> dict[str, np.ndarray]:
    """max |X| per channel of every group's activation over the calibration batches."""
    return ranges_of(activation_samples(model, groups, batches, work))


def _max_per_value(per_channel: np.ndarray, value_channel: np.ndarray, columns: int) -> np.ndarray:
    peak = np.zeros(columns)
    np.maximum.at(peak, value_channel, per_channel)
    return peak


def _attended_rows(value: np.ndarray, mask: np.ndarray) -> np.ndarray:
    # Padding rows are nobody's result; per-token activations are [batch, seq, channels].
    if value.ndim == 3 and value.shape[:2] == mask.shape:
        return value[mask.astype(bool)]
    return value.reshape(-1, value.shape[-1])


# Per-site search: each site's own alpha (None: that site is left unsmoothed), by its MatMuls' output error.
SITE_ALPHAS = (None, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def smooth(
    model,
    groups: list[SmoothGroup],
    ranges: dict[str, np.ndarray],
    alpha: float | None,
    samples: dict[str, list[np.ndarray]] | None = None,
    sim: FakeQuant | None = None,
):
    """A smoothed copy of ``model``; returns (model, per-site scale summary). Exact in real arithmetic.

    ``alpha``: one migration strength for every site, or None: each site takes the candidate of
    ``SITE_ALPHAS`` whose quantized MatMul outputs (``sim`` on the calibration ``samples``) are closest to
    the fp32 ones; a site where every alpha does worse than none stays as it is."""
    from onnx import numpy_helper

    from .onnx_proto import with_initializers

    if alpha is None and (samples is None or sim is None):
        raise ValueError("a per-site alpha needs calibration samples and a quantizer stand-in")
    inits = {i.name: i for i in model.graph.initializer}
    arrays: dict[str, np.ndarray] = {}

    def array(name: str) -> np.ndarray:
        if name not in arrays:
            arrays[name] = numpy_helper.to_array(inits[name]).astype(np.float32)
        return arrays[name]

    weights = {n.name: n.input[1] for n in model.graph.node if n.op_type == "MatMul" and len(n.input) > 1}
    summary = []
    # Column folds first (gated MLP, attention output): they change up_proj's / v_proj's columns, which a
    # norm group then reads as weights.
    for group in sorted(groups, key=lambda grp: grp.divide_columns is None):
        readers = [array(weights[m]) for m in group.matmuls]
        if alpha is None:
            chosen, scale, errors = _best_site_alpha(group, readers, ranges, samples[group.activation], sim)
        else:
            chosen, scale, errors = alpha, _scale(group, readers, ranges, alpha), None
        row_scale = group.row_scale(scale)
        for name in group.matmuls:
            arrays[weights[name]] = array(weights[name]) * row_scale[:, None]
        for name in group.divide_vectors:
            arrays[name] = (array(name).reshape(-1) / scale).reshape(array(name).shape)
        if group.divide_columns:
            arrays[group.divide_columns] = array(group.divide_columns) / scale[None, :]
        row = {
            "activation": group.activation,
            "site": group.site,
            "kind": group.kind,
            "matmuls": len(group.matmuls),
            "alpha": chosen,
            "scale_min": float(scale.min()),
            "scale_max": float(scale.max()),
            "activation_max": float(ranges[group.activation].max()),
        }
        if errors is not None:
            row["output_error"] = errors
        summary.append(row)
    # A new model with the folded tensors, not a copy overwritten in place (see convert/onnx_proto.py).
    changed = {name: numpy_helper.from_array(value.astype(np.float32), name) for name, value in arrays.items()}
    return with_initializers(model, changed), summary


def _scale(group: SmoothGroup, readers: list[np.ndarray], ranges, alpha: float | None) -> np.ndarray:
    """The group's scale per channel (per value column for o_proj); all ones for alpha None."""
    w_max = np.max([np.abs(w).max(axis=1) for w in readers], axis=0).astype(np.float64)
    x_max = ranges[group.activation].astype(np.float64)
    if group.value_channel is not None:  # one scale per value channel, shared by its query heads
        columns = int(group.value_channel.max()) + 1
        x_max, w_max = (_max_per_value(v, group.value_channel, columns) for v in (x_max, w_max))
    if alpha is None:
        return np.ones_like(x_max, dtype=np.float32)
    scale = np.power(np.maximum(x_max, 1e-5), alpha) / np.power(np.maximum(w_max, 1e-5), 1.0 - alpha)
    scale = np.where((x_max > 0) & (w_max > 0), scale, 1.0)
    return np.clip(scale, 1e-4, 1e4).astype(np.float32)


def _best_site_alpha(group, readers, ranges, batches, sim) -> tuple[float | None, np.ndarray, dict]:
    """The candidate alpha with the smallest mean relative output error of the group's MatMuls under ``sim``
    (per token; every reader of the activation counted), its scale, and every candidate's error."""
    exact = [[x @ w for w in readers] for x in batches]
    errors, best = {}, None
    for alpha in SITE_ALPHAS:
        scale = _scale(group, readers, ranges, alpha)
        row_scale = group.row_scale(scale)
        quantized = [sim.weight(w * row_scale[:, None]) for w in readers]  # once per alpha, not per batch
        per_row = []
        for x, wanted in zip(batches, exact):
            x_s = x / row_scale[None, :]
            error = norm = 0.0
            for w_q, want in zip(quantized, wanted):
                e, n = sim.squared_errors(x_s, w_q, want)
                error, norm = error + e, norm + n
            per_row.append(np.sqrt(error / np.maximum(norm, 1e-24)))
        errors[str(alpha)] = float(np.concatenate(per_row).mean())
        if best is None or errors[str(alpha)] < best[2]:
            best = (alpha, scale, errors[str(alpha)])
    return best[0], best[1], errors
