"""Default validation gates per variant precision (documented in the README, overridable by flags).

Keys: ``min_cosine`` (parity.cosine_min), ``min_cosine_mean`` (parity.cosine_mean) and
``max_abs_delta`` (|candidate - reference| on the task's main metric). A missing key is not checked.
"""

from __future__ import annotations

DEFAULT_THRESHOLDS: dict[str, dict[str, float]] = {
    "fp32": {"min_cosine": 0.99999, "max_abs_delta": 1e-4},
    "fp16": {"min_cosine": 0.999},
    "int8": {"max_abs_delta": 0.01, "min_cosine_mean": 0.99},
    "q4": {"max_abs_delta": 0.02},
    "q4f16": {"max_abs_delta": 0.02},
}


def thresholds_for(precision: str, overrides: dict[str, float | None] | None = None) -> dict[str, float]:
    chosen = dict(DEFAULT_THRESHOLDS.get(precision, DEFAULT_THRESHOLDS["fp32"]))
    chosen.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return chosen


def check(thresholds: dict[str, float], *, cosine_min: float, cosine_mean: float, delta: float) -> list[str]:
    """Human-readable failures (empty when every gate holds). NaN never passes."""
    failures = []
    if "min_cosine" in thresholds and not cosine_min >= thresholds["min_cosine"]:
        failures.append(f"parity.cosine_min {cosine_min:.6f} < {thresholds['min_cosine']}")
    if "min_cosine_mean" in thresholds and not cosine_mean >= thresholds["min_cosine_mean"]:
        failures.append(f"parity.cosine_mean {cosine_mean:.6f} < {thresholds['min_cosine_mean']}")
    if "max_abs_delta" in thresholds and not abs(delta) <= thresholds["max_abs_delta"]:
        failures.append(f"|delta| {abs(delta):.2e} > {thresholds['max_abs_delta']}")
    return failures
