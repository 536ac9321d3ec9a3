"""The base of qconv's graph passes: small, named rewrites over an onnx-ir model, each declaring its typed
parameters (Olive-style) and reporting how many times it matched and why near misses were skipped.

A pass only builds new nodes and redirects the uses of the values it replaces; dead nodes are swept once
after every pass (``RewriteContext.finish``), so a later pass never sees a half-replaced pattern.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Sequence

import numpy as np

MS_DOMAIN = "com.microsoft"
INT64_MAX = 2**63 - 1


@dataclass
class PassResult:
    name: str
    matched: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> near misses (pattern started, check failed)
    note: str | None = None

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"matched": self.matched}
        if self.skipped:
            out["skipped"] = dict(self.skipped)
        if self.note:
            out["note"] = self.note
        return out


class NoMatch(Exception):
    """Raised inside a pass's matcher: the candidate is not this pattern (the message says why)."""


class GraphPass:
    """One rewrite. Subclasses set ``name`` and ``summary``, may declare a ``Params`` dataclass, and
    implement ``rewrite_at(node, ctx)`` (return True when the pattern rooted at ``node`` was replaced,
    raise ``NoMatch`` for a near miss) or override ``run`` for passes that are not node-rooted."""

    name: ClassVar[str]
    summary: ClassVar[str]
    anchor_ops: ClassVar[tuple[str, ...]] = ()  # op types a match starts from ...
    anchor_domains: ClassVar[tuple[str, ...]] = ("",)  # ... in these domains ("": ONNX)

    @dataclass
    class Params:
        pass

    def __init__(self, **params: Any) -> None:
        self.params = self.Params(**params)

    def describe(self) -> dict[str, Any]:
        return {"summary": self.summary, **({"params": asdict(self.params)} if asdict(self.params) else {})}

    def run(self, ctx: "RewriteContext") -> PassResult:
        result = PassResult(self.name)
        for node in list(ctx.graph):
            if node.op_type not in self.anchor_ops or node.domain not in self.anchor_domains or node.graph is None:
                continue
            try:
                if self.rewrite_at(node, ctx):
                    result.matched += 1
            except NoMatch as miss:
                result.skip(str(miss))
        ctx.finish()
        return result

    def rewrite_at(self, node, ctx: "RewriteContext") -> bool:
        raise NotImplementedError


PASSES: dict[str, type[GraphPass]] = {}
# The modules whose passes register themselves on import (kept lazy: onnx-ir is imported only when used).
PASS_MODULES = (
    "fusion_rmsnorm",
    "fusion_skip_rmsnorm",
    "fusion_rotary",
    "fusion_attention",
    "fusion_mlp",
    "fusion_gelu",
    "fusion_gqa",
)


def register(cls: type[GraphPass]) -> type[GraphPass]:
    PASSES[cls.name] = cls
    return cls


def load_passes() -> dict[str, type[GraphPass]]:
    """name -> pass class, every pass module imported."""
    import importlib

    for module in PASS_MODULES:
        importlib.import_module(f"{__package__}.{module}")
    return PASSES


class RewriteContext:
    """The model being rewritten, fresh names, and values shared between matches (built once)."""

    def __init__(self, model) -> None:
        self.model = model
        self.graph = model.graph
        self.shared: dict[Any, Any] = {}
        self._names = {v.name for v in _all_values(self.graph) if v.name} | {n.name for n in self.graph if n.name}
        self._counter = Counter()

    def fresh(self, base: str) -> str:
        while True:
            self._counter[base] += 1
            name = f"qconv/{base}_{self._counter[base]}"
            if name not in self._names:
                self._names.add(name)
                return name

    def node(
        self,
        op_type: str,
        inputs: Sequence,
        attributes: dict[str, Any] | None = None,
        *,
        domain: str = "",
        num_outputs: int = 1,
        used_outputs: Iterable[int] | None = None,
        base: str | None = None,
    ):
        """A new node (not yet in the graph) with named outputs; outputs not in ``used_outputs`` stay empty."""
        import onnx_ir as ir

        name = self.fresh(base or op_type)
        used = set(range(num_outputs) if used_outputs is None else used_outputs)
        outputs = [ir.Value(name=f"{name}/out{i}" if i in used else "") for i in range(num_outputs)]
        attrs = {k: v for k, v in (attributes or {}).items() if v is not None}
        return ir.node(op_type, list(inputs), attrs, domain=domain, outputs=outputs, name=name)

    def constant(self, array: np.ndarray, base: str = "const"):
        """A new initializer."""
        import onnx_ir as ir

        name = self.fresh(base)
        value = ir.Value(name=name, const_value=ir.tensor(np.asarray(array), name=name))
        value.shape = ir.Shape(np.asarray(array).shape)
        value.type = ir.TensorType(value.const_value.dtype)
        self.graph.register_initializer(value)
        return value

    def shared_value(self, key: Any, build: Callable[[], Any]) -> Any:
        if key not in self.shared:
            self.shared[key] = build()
        return self.shared[key]

    def insert_before(self, anchor, nodes: Sequence) -> None:
        """Insert ``nodes`` before ``anchor``; they inherit its metadata (the exporter's module scope, which
        ``quantize --exclude`` matches) unless they have their own."""
        for node in nodes:
            if not node.metadata_props:
                node.metadata_props.update(anchor.metadata_props)
        self.graph.insert_before(anchor, list(nodes))

    def insert_after_producer(self, value, nodes: Sequence) -> None:
        """Place ``nodes`` right after the producer of ``value`` (first in the graph for inputs/initializers)."""
        producer = value.producer()
        if producer is not None and producer.graph is self.graph:
            self.graph.insert_after(producer, list(nodes))
        else:
            self.graph.insert_before(next(iter(self.graph)), list(nodes))

    def finish(self) -> None:
        """Sweep dead nodes and initializers, restore topological order."""
        from onnx_ir.passes.common import RemoveUnusedNodesPass

        RemoveUnusedNodesPass()(self.model)
        self.graph.sort()

    def require_opset(self, domain: str, version: int = 1) -> None:
        self.model.opset_imports.setdefault(domain, version)


def _all_values(graph) -> Iterable:
    yield from graph.inputs
    yield from graph.initializers.values()
    for node in graph:
        yield from node.outputs


def replace_value(old, new) -> None:
    """Redirect every use of ``old`` to ``new`` (which takes over its known shape and type, so later passes
    can still check them); a graph output keeps its public name."""
    if new.shape is None and old.shape is not None:
        new.shape = old.shape
    if new.type is None and old.type is not None:
        new.type = old.type
    if old.is_graph_output():
        name = old.name
        old.name = None
        new.name = name
    old.replace_all_uses_with(new, replace_graph_outputs=True)


# --- small matching helpers ---------------------------------------------------------------------------


def const_array(value, max_size: int = 1 << 16) -> np.ndarray | None:
    """The constant behind ``value`` (initializer or Constant node) when it is small, else None."""
    import onnx_ir as ir

    if value is None:
        return None
    try:
        tensor = ir.convenience.get_const_tensor(value)
    except ValueError:
        return None
    if tensor is None or math.prod(tensor.shape.numpy()) > max_size:
        return None
    return tensor.numpy()


def scalar(value) -> float | None:
    array = const_array(value, max_size=1)
    return None if array is None or array.size != 1 else array.reshape(()).item()


def ints(value) -> list[int] | None:
    array = const_array(value)
    if array is None or array.dtype.kind not in "iu":
        return None
    return [int(v) for v in array.reshape(-1)]


def produced_by(value, op_type: str, domain: str = ""):
    """The node producing ``value`` when it is ``domain::op_type``."""
    node = value.producer() if value is not None else None
    if node is None or node.op_type != op_type or node.domain != domain:
        return None
    return node


def sole_consumer(value):
    """The only node reading ``value`` (and it is not a graph output), else None."""
    if value is None or value.is_graph_output():
        return None
    users = {id(u.node): u.node for u in value.uses()}
    return next(iter(users.values())) if len(users) == 1 else None


def split_pair(node, is_first: Callable[[Any], bool]):
    """(a, b) = the two inputs of a commutative binary node with ``is_first(a)``, else None."""
    a, b = node.inputs[0], node.inputs[1]
    if is_first(a):
        return a, b
    if is_first(b):
        return b, a
    return None


def attr(node, name: str, default: Any = None) -> Any:
    found = node.attributes.get(name)
    return default if found is None else found.value


def rank(value) -> int | None:
    return None if value is None or value.shape is None else len(value.shape)


def dim(value, index: int) -> Any:
    """A dimension of ``value`` (int, a symbolic name, or None when unknown)."""
    if value is None or value.shape is None:
        return None
    try:
        d = value.shape[index]
    except IndexError:
        return None
    return d if isinstance(d, int) else (d.value if d is not None else None)


def same_shape(a, b) -> bool:
    """Both shapes known, equal rank, and no dimension known to differ."""
    if a.shape is None or b.shape is None or len(a.shape) != len(b.shape):
        return False
    for x, y in zip(a.shape, b.shape):
        x = x if isinstance(x, int) else getattr(x, "value", None)
        y = y if isinstance(y, int) else getattr(y, "value", None)
        if x is not None and y is not None and x != y:
            return False
    return True


def last_axis(axes: Sequence[int] | None, value_rank: int | None) -> bool:
    """``axes`` names exactly the last axis of a tensor of ``value_rank``."""
    if axes is None or len(axes) != 1:
        return False
    return axes[0] == -1 or (value_rank is not None and axes[0] == value_rank - 1)


__all__ = [
    "GraphPass",
    "MS_DOMAIN",
    "NoMatch",
    "PASSES",
    "PassResult",
    "load_passes",
    "RewriteContext",
    "attr",
    "const_array",
    "ints",
    "produced_by",
    "register",
    "replace_value",
    "scalar",
    "sole_consumer",
    "split_pair",
]
