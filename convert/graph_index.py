"""Who makes and who reads each value of an ONNX graph: the lookups every graph rewrite starts from."""

from __future__ import annotations


class GraphIndex:
    """A snapshot of ``model.graph``: initializers by name, the node producing each value, the nodes reading
    it, and the graph's output names. Rebuild it after changing the graph."""

    def __init__(self, model):
        graph = model.graph
        self.inits = {i.name: i for i in graph.initializer}
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.consumers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in graph.output}
