"""Accuracy recovery for quantized variants, judged on calibration texts (never the validation data).

- ``CalibrationSet``: the fp32 source's outputs on qconv's calibration texts, and how a candidate compares.
- SmoothQuant's alpha search (0.5-0.9), the per-MatMul sensitivity proxy behind ``--keep auto|N``, the
  ladder behind ``--recover auto`` (fastest rung first, the first that meets the target wins), and the
  batch-coupling measurement of per-tensor dynamic activation quantization.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from qconv.console import console

from .fake_quant import FakeQuant
from .smoothquant import AttentionLayout

SMOOTH_ALPHAS = (0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class RecoveryTarget:
    """Parity with the fp32 source on the calibration texts that a recovered variant must meet."""

    min_cosine: float = 0.98  # embeddings: every pooled vector
    min_cosine_mean: float = 0.995
    # Rankers (one score per pair, pairs grouped by query): the rankings must hold. A score difference
    # relative to the largest score says nothing about a ranking (it shrinks with any common offset).
    min_top1: float = 0.95  # share of queries whose top document stays on top
    min_rank_spearman: float = 0.98  # mean over queries of the Spearman correlation of the scores
    max_rel_score_diff: float = 0.02  # one score per row without query groups: |difference| / largest |score|

    def met(self, metrics: dict) -> bool:
        if not metrics["finite"]:
            return False
        if metrics.get("cosine_min") is not None:
            return metrics["cosine_min"] >= self.min_cosine and metrics["cosine_mean"] >= self.min_cosine_mean
        if metrics.get("top1_agreement") is not None:
            return (
                metrics["top1_agreement"] >= self.min_top1 and metrics["rank_spearman_mean"] >= self.min_rank_spearman
            )
        return metrics["max_rel_score_diff"] <= self.max_rel_score_diff


@dataclass
class CalibrationSet:
    batches: list[dict]  # what SmoothQuant's activation ranges and --keep's sensitivity read
    output: str
    reference: list[np.ndarray] = field(default_factory=list)
    source: str = ""
    target: RecoveryTarget = field(default_factory=RecoveryTarget)
    # The model's attention heads (config.json): SmoothQuant needs them to smooth o_proj under GQA.
    layout: AttentionLayout | None = None
    # What candidates are compared on (None: ``batches``); a ranking task's pairs, query by query, with
    # ``groups`` the rows of each query (Task.calibration_rankings).
    checks: list[dict] | None = None
    groups: list[list[int]] | None = None
    # The fp32 source on the same batches, timed like a candidate: a rung that is not faster than its source
    # saves memory, not time (8-bit weight-only at fp32 compute on AVX2 hosts).
    source_latency_ms: float | None = None

    @classmethod
    def build(cls, art, src: Path, pairs, source: str) -> CalibrationSet:
        from qconv.tasks import task_of

        from .calibration import calibration_batches
        from .optimize import model_config

        layout = AttentionLayout.from_config(model_config(art))
        task = task_of(art)
        calib = cls(calibration_batches(art, pairs), task.output, source=source, layout=layout)
        rankings = task.calibration_rankings(pairs)
        if rankings is not None:
            ranked, calib.groups = rankings
            calib.checks = calibration_batches(art, ranked)
        timings: list[float] = []
        calib.reference = calib.outputs(src, timings)
        calib.source_latency_ms = round(timings[0] * 1000, 1)
        return calib

    @property
    def compared(self) -> list[dict]:
        return self.checks if self.checks is not None else self.batches

    def outputs(self, path: Path, timings: list | None = None) -> list[np.ndarray]:
        from qconv.runtime.embedder import open_session

        session = open_session(path, ["CPUExecutionProvider"])
        inputs = {i.name for i in session.get_inputs()}
        feeds = [{k: v for k, v in b.items() if k in inputs} for b in self.compared]
        session.run([self.output], feeds[0])  # warm-up, not timed
        started = time.perf_counter()
        outputs = [session.run([self.output], f)[0] for f in feeds]
        if timings is not None:
            timings.append(time.perf_counter() - started)
        return outputs

    def compare(self, outputs: list[np.ndarray]) -> dict:
        from qconv.numerics import cosine_rows

        got = np.concatenate([_pooled(o, b["attention_mask"]) for o, b in zip(outputs, self.compared)])
        want = np.concatenate([_pooled(o, b["attention_mask"]) for o, b in zip(self.reference, self.compared)])
        result = {"finite": bool(np.isfinite(got).all()), "rows": int(got.shape[0])}
        if got.shape[1] > 1:
            cos = cosine_rows(got.astype(np.float64), want.astype(np.float64))
            result.update(cosine_min=float(cos.min()), cosine_mean=float(cos.mean()))
            return result
        diff = np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-6)
        result.update(max_rel_score_diff=float(diff))
        if self.groups:
            result.update(ranking_agreement(got[:, 0], want[:, 0], self.groups))
        return result

    def evaluate(self, model, work: Path, name: str, external: bool) -> dict:
        """Save a candidate graph, run it on the calibration batches: parity metrics and a rough latency."""
        from .variants import save_model

        path = work / f"{name}.onnx"
        save_model(model, path, external)
        timings: list[float] = []
        outputs = self.outputs(path, timings)
        metrics = self.compare(outputs)
        # All calibration batches once after a warm-up: a rough CPU figure to order rungs, not a benchmark.
        metrics["latency_ms"] = round(timings[0] * 1000, 1)
        if self.source_latency_ms:
            metrics["speedup_vs_source"] = round(self.source_latency_ms / max(metrics["latency_ms"], 0.1), 2)
        metrics["meets_target"] = self.target.met(metrics)
        metrics["path"] = path
        return metrics


def _pooled(output: np.ndarray, mask: np.ndarray) -> np.ndarray:
    # Per-sequence outputs as they are; a causal LM's per-token logits at each row's last attended token.
    if output.ndim == 3:
        from qconv.runtime.template import last_token_index

        return output[np.arange(output.shape[0]), last_token_index(mask)]
    return output.reshape(output.shape[0], -1)


def ranking_agreement(got: np.ndarray, want: np.ndarray, groups: list[list[int]]) -> dict:
    """How a candidate's scores keep the source's rankings: per query (``groups``: its rows), whether the top
    document stays on top and the Spearman correlation of the scores; validation's per-query agreement
    (``qconv.numerics.query_parity``), so the ladder and ``qconv validate`` read rankings the same way. A query
    whose scores are constant has no Spearman (NaN): it makes the mean NaN, which meets no target."""
    from qconv.numerics import query_parity

    per_query = query_parity(
        [want[rows] for rows in groups], [got[rows] for rows in groups], [[str(r) for r in rows] for rows in groups]
    )
    spearman = [q["spearman"] for q in per_query]
    return {
        "queries": len(groups),
        "top1_agreement": float(np.mean([q["top1_agrees"] for q in per_query])),
        "rank_spearman_mean": float(np.mean(spearman)),
        "rank_spearman_min": float(np.min(spearman)),
    }


def describe(metrics: dict) -> str:
    if metrics.get("cosine_min") is not None:
        return f"cos_min {metrics['cosine_min']:.4f} cos_mean {metrics['cosine_mean']:.4f}"
    if metrics.get("top1_agreement") is not None:
        return (
            f"top-1 {metrics['top1_agreement']:.3f} spearman {metrics['rank_spearman_mean']:.4f} "
            f"({metrics['queries']} queries)"
        )
    return f"rel score diff {metrics['max_rel_score_diff']:.4f}"


def score(metrics: dict) -> tuple:
    """Larger is better."""
    if metrics.get("cosine_min") is not None:
        return (metrics["finite"], metrics["cosine_min"], metrics["cosine_mean"])
    if metrics.get("top1_agreement") is not None:
        return (metrics["finite"], metrics["top1_agreement"], metrics["rank_spearman_mean"])
    return (metrics["finite"], -metrics["max_rel_score_diff"])


def public(metrics: dict) -> dict:
    """Metrics as the manifest records them: without the candidate's file and its build details."""
    return {k: v for k, v in metrics.items() if k not in ("path", "info")}


def sensitivity(model, matmuls: list[str], batches, work: Path, sim: FakeQuant = FakeQuant()) -> list[dict]:
    """Per-MatMul relative output error (mean over tokens) of dynamic INT8 (per-tensor uint8 activations, or
    per-token ones, and int8 weights, as ``sim`` says) on the calibration activations, most sensitive first. A
    local proxy for "the pooled output with only that MatMul quantized": one fp32 run instead of one quantized
    model per MatMul (tests/test_quantize.py checks both put the same MatMuls on top of the outlier model)."""
    from onnx import numpy_helper

    from .smoothquant import _attended_rows
    from .variants import save_probe

    nodes = {n.name: n for n in model.graph.node}
    inits = {i.name: i for i in model.graph.initializer}
    names = sorted({nodes[m].input[0] for m in matmuls})
    path = work / "sensitivity_probe.onnx"
    save_probe(model, names, path)
    from qconv.runtime.embedder import open_session

    session = open_session(path, ["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    activations: dict[str, list] = {n: [] for n in names}
    for feeds in batches:
        for name, value in zip(names, session.run(names, {k: v for k, v in feeds.items() if k in inputs})):
            # One batch is one per-tensor quantization step: keep the batch together.
            activations[name].append(_attended_rows(value, feeds["attention_mask"]))
    ranking = []
    for name in matmuls:
        node = nodes[name]
        weight = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        w_q = sim.weight(weight)
        errors = []
        for x in activations[node.input[0]]:
            error, exact = sim.squared_errors(x, w_q, x @ weight)
            # Per token: one outlier row sets the step for the batch, and the ordinary rows pay for it.
            errors.append(np.sqrt(error / np.maximum(exact, 1e-24)))
        ranking.append({"node": name, "relative_error": float(np.concatenate(errors).mean())})
    ranking.sort(key=lambda r: r["relative_error"], reverse=True)
    return ranking


def batch_coupling(art, path: Path, source: Path | dict | None = None) -> dict:
    """How much a variant's output for a text depends on its batch: the same texts alone vs in one mixed
    batch, and that batch padded left vs right (worst over the texts). Per-tensor dynamic activation
    quantization couples them: one outlier token sets the step for every row of the batch.

    ``source``: the fp32 source (its figures are added beside the variant's), or those figures already
    measured (``batch_coupling(art, source)``), so a ladder measures the source once."""
    from qconv.numerics import cosine_rows
    from qconv.runtime.embedder import open_session
    from qconv.runtime.template import pad_batch
    from qconv.tasks import task_of

    from .calibration import CALIBRATION_PAIRS, calibration_batches

    task = task_of(art)
    pairs = task.one_input_pairs(CALIBRATION_PAIRS[:6])
    singles = [calibration_batches(art, [p], batch_size=1)[0] for p in pairs]
    sequences = [s["input_ids"][0][s["attention_mask"][0].astype(bool)] for s in singles]
    pad_id = task.pad_id(art)
    output = task.output
    session = open_session(path, ["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}

    def run(ids, mask):
        feeds = {k: v for k, v in {"input_ids": ids, "attention_mask": mask}.items() if k in inputs}
        return _pooled(session.run([output], feeds)[0], mask).astype(np.float64)

    alone = np.concatenate([run(*pad_batch([seq], pad_id, "left")) for seq in sequences])
    sides = {side: run(*pad_batch(sequences, pad_id, side)) for side in ("left", "right")}

    def gap(a, b):
        if a.shape[1] > 1:
            return float(1.0 - cosine_rows(a, b).min())
        return float(np.abs(a - b).max())

    measure = "1 - cosine (worst text)" if alone.shape[1] > 1 else "max |logit difference|"
    result = {
        "texts": len(sequences),
        "measure": measure,
        "alone_vs_batch": max(gap(alone, sides[art.manifest[art.task]["padding_side"]]), 0.0),
        "left_vs_right": max(gap(sides["left"], sides["right"]), 0.0),
    }
    if source is not None:
        # The fp32 source's own figures: a model with absolute positions (BERT) is not left/right invariant
        # even unquantized, and that is not coupling.
        reference = source if isinstance(source, dict) else batch_coupling(art, source)
        result["source_alone_vs_batch"] = reference["alone_vs_batch"]
        result["source_left_vs_right"] = reference["left_vs_right"]
    return result


@dataclass
class Rung:
    name: str
    mode: str
    changes: dict  # config fields this rung sets (applied by quantize._rung_config)
    # A later rung that is the same model without batch coupling (per-token activations) at about the same
    # speed: when this rung passes, the twin is tried too and wins if it passes and is not slower by more
    # than TWIN_SLOWER_OK (issue #16: prefer variants without coupling where the speed is equal).
    twin: str | None = None


# How much slower (calibration latency) a coupling-free twin may be and still be preferred: the fused
# per-token graph ran at 91-119% of plain INT8 in benchmarks, and BENCHMARKS reads ratios < 1.15x as noise.
TWIN_SLOWER_OK = 0.15


# Fastest first: the int8 rungs all run MatMulInteger (smoothing costs nothing at run time; each kept
# MatMul runs in fp32); 8-bit weight-only MatMulNBits is slower than MatMulInteger on AVX2 hosts.
_PER_TENSOR = {"activations": "per-tensor"}
_PER_TOKEN = {"activations": "per-token"}
LADDER = (
    Rung("int8", "int8", {"smooth": None, "keep": None, **_PER_TENSOR}, twin="int8 per-token"),
    Rung("int8+smooth", "int8", {"smooth": "auto", "keep": None, **_PER_TENSOR}, twin="int8 per-token+smooth"),
    # Per-token activations: a few elementwise ops per quantized input, no batch coupling.
    Rung("int8 per-token", "int8", {"smooth": None, "keep": None, **_PER_TOKEN}),
    Rung("int8 per-token+smooth", "int8", {"smooth": "auto", "keep": None, **_PER_TOKEN}),
    Rung("int8 per-token+smooth+keep", "int8", {"smooth": "auto", "keep": "auto", **_PER_TOKEN}),
    Rung("q8 accuracy level 4", "q8", {"smooth": None, "keep": None, "accuracy_level": 4}),
    Rung("q8 accuracy level 1", "q8", {"smooth": None, "keep": None, "accuracy_level": 1}),
)


def prefer_twin(first: dict, twin: dict) -> str | None:
    """Why the coupling-free ``twin`` wins over the passing ``first`` rung (metrics of both), or None."""
    if not twin["meets_target"]:
        return None
    slower = twin["latency_ms"] / max(first["latency_ms"], 0.1) - 1
    if slower > TWIN_SLOWER_OK:
        return None
    return (
        f"per-token activations (no output depends on what else is in its batch) at about the same speed "
        f"({twin['latency_ms']} ms against {first['latency_ms']} ms on the calibration batches; up to "
        f"{TWIN_SLOWER_OK:.0%} slower is preferred)"
    )


def as_dict(target: RecoveryTarget) -> dict:
    return asdict(target)


def log(message: str) -> None:
    console.print(f"  [dim]{message}[/]")
