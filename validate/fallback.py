"""Operator placement as onnxruntime really runs it (a profile), compared with the static analysis.

The static analysis (kernel tables, type inference, ``analyse``) lives in ``qconv.kernels`` so that
``convert/`` can use it without importing ``validate/``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path


def runtime_placement(model_path: Path, provider: str, feeds: dict) -> dict | None:
    """Nodes each provider really ran (from an ORT profile), or None when the provider is unavailable."""
    import os
    import tempfile

    import onnxruntime as ort

    if provider not in ort.get_available_providers():
        return None
    options = ort.SessionOptions()
    # No graph rewrites: runtime node names must be the graph's own to compare with the static analysis.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_profiling = True
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = os.path.join(tmp, "profile")
        session = ort.InferenceSession(str(model_path), options, providers=[provider])
        session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    ran: dict[str, str] = {}
    for event in events:
        if event.get("cat") == "Node" and "provider" in event.get("args", {}):
            ran[re.sub(r"_kernel_time$", "", event["name"])] = event["args"]["provider"]
    return {"nodes_per_provider": dict(Counter(ran.values())), "nodes": ran}


def dummy_feeds(model) -> dict:
    import numpy as np

    feeds = {}
    for value in model.graph.input:
        dims = [
            d.dim_value if d.dim_value > 0 else (2 if i == 0 else 8)
            for i, d in enumerate(value.type.tensor_type.shape.dim)
        ]
        feeds[value.name] = (
            np.ones(dims, dtype=np.int64) if "mask" in value.name else np.full(dims, 100, dtype=np.int64)
        )
    return feeds


def compare_runtime(static: dict, runtime: dict) -> dict:
    """Static prediction vs the nodes the provider really ran (inserted and removed nodes listed apart)."""
    provider = static["provider"]
    predicted = static["on_device"]
    ran = runtime["nodes"]
    common = [n for n in predicted if n in ran]
    disagree = [n for n in common if predicted[n] != (ran[n] == provider)]
    return {
        "provider": provider,
        "nodes_per_provider": runtime["nodes_per_provider"],
        "compared": len(common),
        "disagreements": disagree[:20],
        "agree": not disagree,
        "inserted_by_onnxruntime": sorted(n for n in ran if n not in predicted)[:20],
        "inserted_count": sum(1 for n in ran if n not in predicted),
        "removed_by_onnxruntime_count": sum(1 for n in predicted if n not in ran),
    }
