"""Validation gates: defaults per task and variant precision (documented in the README, flag-overridable).

A gate names a value in the report and a bound. A missing key is not checked; NaN never passes.
"""

from __future__ import annotations

import operator
from typing import Any

# gate key -> (dotted path of the value in the report, comparison that must hold, shown as)
GATES: dict[str, tuple[str, Any, str]] = {
    "min_cosine": ("parity.cosine_min", operator.ge, ">="),
    "min_cosine_mean": ("parity.cosine_mean", operator.ge, ">="),
    "max_abs_delta": ("abs_delta", operator.le, "<="),
    "max_abs_score_diff": ("parity.max_abs_diff", operator.le, "<="),
    "min_top1_agreement": ("parity.top1_agreement", operator.ge, ">="),
}

DEFAULT_THRESHOLDS: dict[str, dict[str, dict[str, float]]] = {
    "embedding": {
        "fp32": {"min_cosine": 0.99999, "max_abs_delta": 1e-4},
        "fp16": {"min_cosine": 0.999},
        "int8": {"max_abs_delta": 0.01, "min_cosine_mean": 0.99},
        "q4": {"max_abs_delta": 0.02},
        "q4f16": {"max_abs_delta": 0.02},
    },
    # Rerankers: the embedding gates' counterparts on MRR@10 (delta) and top-1 agreement.
    "reranker": {
        "fp32": {"max_abs_score_diff": 1e-4, "min_top1_agreement": 1.0},
        "fp16": {"max_abs_delta": 1e-3, "min_top1_agreement": 0.95},
        "int8": {"max_abs_delta": 0.01, "min_top1_agreement": 0.9},
        "q4": {"max_abs_delta": 0.02, "min_top1_agreement": 0.8},
        "q4f16": {"max_abs_delta": 0.02, "min_top1_agreement": 0.8},
    },
}


def thresholds_for(task: str, precision: str, overrides: dict[str, float | None] | None = None) -> dict[str, float]:
    """Defaults for a task and precision (fp32's, the strictest, for a precision without its own)."""
    per_task = DEFAULT_THRESHOLDS[task]
    chosen = dict(per_task.get(precision, per_task["fp32"]))
    chosen.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return chosen


def _lookup(report: dict, path: str) -> float:
    if path == "abs_delta":
        return abs(report["delta"])
    value: Any = report
    for part in path.split("."):
        value = value[part]
    return float(value)


def check(thresholds: dict[str, float], report: dict) -> list[str]:
    """Human-readable failures (empty when every gate holds)."""
    failures = []
    for key, bound in thresholds.items():
        path, holds, shown = GATES[key]
        value = _lookup(report, path)
        if not holds(value, bound):  # NaN compares false: it fails
            failures.append(f"{path} {value:.6g} not {shown} {bound}")
    return failures
