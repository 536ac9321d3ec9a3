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

``o_proj`` is not smoothed: its input is the attention output, and with GQA a scale on a value channel
applies to every query head of its group, so it would need one scale per group and a path through
reshapes or fused attention; the massive activations that break per-tensor INT8 sit on the MLP side.
Activations that also feed something other than weight MatMuls (BERT's post-LN residual) are left alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .graph_index import GraphIndex

# op_type -> (gamma input index, beta input index or None)
NORM_SCALE_INPUTS = {
    "SimplifiedLayerNormalization": (1, None),
    "SkipSimplifiedLayerNormalization": (2, None),
    "LayerNormalization": (1, 2),
    "SkipLayerNormalization": (2, 3),
}


@dataclass
class SmoothGroup:
    activation: str  # the tensor whose channels are divided by s
    matmuls: list[str]  # nodes reading it; their weight rows are multiplied by s
    divide_vectors: list[str] = field(default_factory=list)  # 1-D initializers divided by s (gamma, beta)
    divide_columns: str | None = None  # 2-D initializer whose columns are divided by s (up_proj's weight)
    site: str = ""


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


def find_groups(model) -> list[SmoothGroup]:
    """Every activation whose channel scale can be folded exactly, with where the fold goes."""
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
        group = SmoothGroup(activation, [r.name for r in readers], site=producer.op_type)
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
                group.site = "Mul (norm gamma)"
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
                    group.site = f"Mul (gated MLP, up = {up.name})"
                    groups.append(group)
                    break
    return groups


def activation_ranges(model, groups: list[SmoothGroup], batches, work) -> dict[str, np.ndarray]:
    """max |X| per channel of every group's activation over the calibration batches (one ORT session)."""
    from qconv.runtime.embedder import open_session

    from .variants import save_probe

    names = [grp.activation for grp in groups]
    path = work / "smooth_probe.onnx"
    save_probe(model, names, path)
    session = open_session(path, ["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    ranges: dict[str, np.ndarray] = {}
    for feeds in batches:
        values = session.run(names, {k: v for k, v in feeds.items() if k in inputs})
        for name, value, mask in zip(names, values, (feeds["attention_mask"],) * len(names)):
            rows = _attended_rows(value, mask)
            peak = np.abs(rows).max(axis=0)
            ranges[name] = peak if name not in ranges else np.maximum(ranges[name], peak)
    return ranges


def _attended_rows(value: np.ndarray, mask: np.ndarray) -> np.ndarray:
    # Padding rows are nobody's result; per-token activations are [batch, seq, channels].
    if value.ndim == 3 and value.shape[:2] == mask.shape:
        return value[mask.astype(bool)]
    return value.reshape(-1, value.shape[-1])


def smooth(model, groups: list[SmoothGroup], ranges: dict[str, np.ndarray], alpha: float):
    """A smoothed copy of ``model``; returns (model, per-site scale summary). Exact in real arithmetic."""
    from onnx import numpy_helper

    from .onnx_proto import with_initializers

    inits = {i.name: i for i in model.graph.initializer}
    arrays: dict[str, np.ndarray] = {}

    def array(name: str) -> np.ndarray:
        if name not in arrays:
            arrays[name] = numpy_helper.to_array(inits[name]).astype(np.float32)
        return arrays[name]

    weights = {n.name: n.input[1] for n in model.graph.node if n.op_type == "MatMul" and len(n.input) > 1}
    summary = []
    # Gated-MLP groups first: their fold changes up_proj's columns, which a norm group then reads as weights.
    for group in sorted(groups, key=lambda grp: grp.divide_columns is None):
        readers = [array(weights[m]) for m in group.matmuls]
        w_max = np.max([np.abs(w).max(axis=1) for w in readers], axis=0)
        x_max = ranges[group.activation].astype(np.float64)
        scale = np.power(np.maximum(x_max, 1e-5), alpha) / np.power(np.maximum(w_max, 1e-5), 1.0 - alpha)
        scale = np.where((x_max > 0) & (w_max > 0), scale, 1.0)
        scale = np.clip(scale, 1e-4, 1e4).astype(np.float32)
        for name in group.matmuls:
            arrays[weights[name]] = array(weights[name]) * scale[:, None]
        for name in group.divide_vectors:
            arrays[name] = (array(name).reshape(-1) / scale).reshape(array(name).shape)
        if group.divide_columns:
            arrays[group.divide_columns] = array(group.divide_columns) / scale[None, :]
        summary.append(
            {
                "activation": group.activation,
                "site": group.site,
                "matmuls": len(group.matmuls),
                "scale_min": float(scale.min()),
                "scale_max": float(scale.max()),
                "activation_max": float(x_max.max()),
            }
        )
    # A new model with the folded tensors, not a copy overwritten in place (see convert/onnx_proto.py).
    changed = {name: numpy_helper.from_array(value.astype(np.float32), name) for name, value in arrays.items()}
    return with_initializers(model, changed), summary
