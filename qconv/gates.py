"""Validation gates, each declared once (GATES), and their defaults: for fp32 graphs the task's
(``Task.exact_gates``), for quantized ones the quantization mode's (``qconv.convert.quantize``: each mode
declares its gates per task). A foundation module: convert/ declares gates and validate/ checks them.

A gate names a value in the report and a bound; its name is the recipe ``thresholds`` key, the report's
``thresholds`` key, the ``qconv validate`` flag (``--max-delta``) and the keyword of the validation API.
A missing key is not checked; NaN never passes.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable

from qconv.errors import QconvError


@dataclass(frozen=True)
class Gate:
    name: str
    path: str  # dotted path of the value in the report ("abs_delta": |report["delta"]|)
    holds: Callable[[float, float], bool]  # the comparison value vs bound that must hold
    shown: str
    kinds: tuple[str, ...]  # the dataset kinds whose reports carry the value (qconv.validate.datasets)
    help: str  # the CLI flag's help
    legacy: str | None = None  # the name reports and the validation API used before gates had one name

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


GATES: dict[str, Gate] = {
    g.name: g
    for g in (
        Gate(
            "min_cosine",
            "parity.cosine_min",
            operator.ge,
            ">=",
            ("pairs",),
            "Gate: minimum per-text cosine (parity.cosine_min).",
        ),
        Gate(
            "min_cosine_mean",
            "parity.cosine_mean",
            operator.ge,
            ">=",
            ("pairs",),
            "Gate: minimum mean per-text cosine.",
        ),
        Gate(
            "max_delta",
            "abs_delta",
            operator.le,
            "<=",
            ("pairs", "rerank"),
            "Gate: maximum |candidate - reference| of the main metric.",
            legacy="max_abs_delta",
        ),
        Gate(
            "max_score_diff",
            "parity.max_abs_diff",
            operator.le,
            "<=",
            ("rerank",),
            "Gate (msmarco): maximum |P(yes) candidate - reference|.",
            legacy="max_abs_score_diff",
        ),
        Gate(
            "min_top1",
            "parity.top1_agreement",
            operator.ge,
            ">=",
            ("rerank",),
            "Gate (msmarco): minimum top-1 agreement.",
            legacy="min_top1_agreement",
        ),
    )
}
_BY_LEGACY = {g.legacy: g.name for g in GATES.values() if g.legacy}


def gate_name(key: str, strict: bool = True) -> str:
    """The gate's name for a key, also a legacy one (reports written before the rename, older callers)."""
    name = _BY_LEGACY.get(key, key)
    if strict and name not in GATES:
        raise QconvError(f"unknown gate '{key}' (gates: {', '.join(GATES)})")
    return name


def check_gates(task: str, gates: dict[str, float], owner: str) -> None:
    """A declaration of default gates: known gate names with numeric bounds (a bug otherwise, at registration)."""
    for key, bound in gates.items():
        if key not in GATES or not isinstance(bound, (int, float)):
            raise ValueError(f"{owner}: gate '{key}: {bound!r}' for {task} is not a known gate with a number")


def default_gates(task: str, precision: str) -> dict[str, float]:
    """The default gates of a task's variants of one precision; none declared is an error, never fp32's."""
    if precision == "fp32":
        from qconv.tasks import get_task

        # The exported graph and the fp32 optimize levels: the task's strictest gates (same computation).
        declared = {f"the {task} task's fp32 graphs": get_task(task).exact_gates}
    else:
        from qconv.convert.quantize import MODES

        declared = {f"--mode {m.name}": m.gates.get(task) for m in MODES.values() if m.precision == precision}
    found = [gates for gates in declared.values() if gates is not None]
    if not found:
        owners = ", ".join(declared) or f"no quantization mode makes {precision}"
        raise QconvError(f"no default validation gates for {precision} {task} variants ({owners}: none declared)")
    if any(gates != found[0] for gates in found):
        raise QconvError(f"the modes making {precision} declare different gates for {task}: {', '.join(declared)}")
    return dict(found[0])


def thresholds_for(task: str, precision: str, overrides: dict[str, float | None] | None = None) -> dict[str, float]:
    """The gates of a validation: the defaults for its task and precision, updated by the given ones."""
    chosen = default_gates(task, precision)
    chosen.update({gate_name(k): v for k, v in (overrides or {}).items() if v is not None})
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
        gate = GATES[gate_name(key)]
        value = _lookup(report, gate.path)
        if not gate.holds(value, bound):  # NaN compares false: it fails
            failures.append(f"{gate.path} {value:.6g} not {gate.shown} {bound}")
    return failures
