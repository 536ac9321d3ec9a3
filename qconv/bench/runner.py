"""``qconv bench``: throughput, latency percentiles, load time, file size and peak RSS per variant.

Every runtime is measured in its own subprocess (``qconv.bench.worker``), so memory figures are clean.
Targets live here, as measured tables, never as timed unit tests.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

from qconv.artifact import Artifact, now_iso, package_versions, write_json_atomic
from qconv.console import console
from qconv.errors import QconvError
from qconv.tasks import task_of
from qconv.testing.testmodels import is_random_weight_model

MLP_MATRICES = {"qwen3": 3, "bert": 2}  # SwiGLU has gate, up and down projections; BERT's MLP has two
RUN_ONLY_META = ("lm_head", "speedup_key")  # a run's metadata the runner reads, not copied into its rows


def cpu_description() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def flops_per_token(config: dict, seq: int, lm_head: bool = False) -> float:
    """Model math per token (2 x multiply-adds): projections, MLP, attention over ``seq``, optional LM head."""
    hidden = config["hidden_size"]
    layers = config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv = config.get("num_key_value_heads") or heads
    mlp = MLP_MATRICES.get(config.get("model_type"), 2)
    projections = (
        hidden * heads * head_dim * 2 + hidden * kv * head_dim * 2 + mlp * hidden * config["intermediate_size"]
    )
    attention = 2 * seq * heads * head_dim
    total = 2 * layers * (projections + attention)
    return float(total + (2 * hidden * config["vocab_size"] if lm_head else 0))


def _run_worker(spec: dict, label: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "qconv.bench.worker", json.dumps(spec)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise QconvError(f"benchmark of {label} failed in its subprocess: {last[:300]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plan_runs(
    art: Artifact,
    chosen: list[str],
    common: dict,
    providers: list[str],
    baseline: str,
    seq_lens: list[int],
    documents: int,
) -> tuple[list[tuple[str, dict, dict]], list[str]]:
    """Every runtime to measure as (label, worker spec, row metadata), and notes on what is not measured.
    The artifact's task says what a worker runs: its graph output, its PyTorch baseline and any extra run."""
    task = task_of(art)
    lm_head = task.bench_lm_head(art.manifest)
    runs: list[tuple[str, dict, dict]] = []
    for v in chosen:
        entry = art.variants[v]
        spec = {
            **common,
            "runtime": "onnx",
            "model_path": str(art.variant_path(v)),
            "providers": providers,
            "output": task.output,
        }
        size = sum(p.stat().st_size for p in art.variant_path(v).parent.glob(Path(entry["file"]).name + "*"))
        runs.append(
            (
                v,
                spec,
                {
                    "kind": "onnx",
                    "precision": entry.get("precision", "fp32"),
                    "file_bytes": size,
                    "lm_head": lm_head,
                },
            )
        )
    source = art.manifest["source"]
    source_path = source.get("path") if source.get("kind") == "local" else None
    notes = []
    if baseline == "torch":
        local = source_path and Path(source_path).is_dir() and source.get("format", "causal-lm") != "seq-cls"
        if not task.torch_model:
            notes.append(f"PyTorch baseline not measured: the {task.name} task declares none.")
        elif local:
            base = {
                **common,
                "runtime": "torch",
                "source": source_path,
                "torch_model": task.torch_model,
                "torch_call": task.torch_call,
            }
            runs.append(
                ("torch-fp32", {**base, "dtype": "float32"}, {"kind": "torch", "precision": "fp32", "lm_head": False})
            )
            if cpu_has_bf16():
                runs.append(
                    (
                        "torch-bf16",
                        {**base, "dtype": "bfloat16"},
                        {"kind": "torch", "precision": "bf16", "lm_head": False},
                    )
                )
            else:
                notes.append("PyTorch bf16 not measured: this CPU has neither avx512_bf16 nor AMX.")
            runs += task.bench_extra_runs(base, seq_lens, documents)
        else:
            notes.append(
                "PyTorch baseline not measured: the source model is not a local causal LM / base model "
                "directory recorded in the manifest."
            )
    return runs, notes


def bench(artifact: Artifact | str | Path, config=None, *, documents: int = 10, **given) -> dict:
    """Measure ``artifact``'s variants as ``config`` (a ``BenchStep``: the recipe's ``bench:`` section and
    ``qconv bench``'s options) says, or as options given by name (``batch_sizes="1,8"`` or ``[1, 8]``,
    ``variants="all"``...), checked against the same declaration."""
    from qconv.pipeline.configs import BenchStep
    from qconv.pipeline.options import check_config, configure
    from qconv.runtime.embedder import resolve_providers

    if config is None:
        config = configure(BenchStep, "bench", **given)
    elif given:
        raise TypeError(f"bench() takes a config or options by name, not both ({', '.join(given)})")
    else:
        check_config(config, "bench")
    art = artifact if isinstance(artifact, Artifact) else Artifact(artifact)
    chosen = config.named_variants() or sorted(art.variants)
    for v in chosen:
        art.variant_path(v, verify=True)
    baseline, repeats, warmup, seq_lens = config.baseline, config.repeats, config.warmup, config.seq_lens
    shapes = [(b, s) for b in config.batch_sizes for s in seq_lens]
    threads = config.threads or os.cpu_count() or 1
    provider_list = resolve_providers(config.providers)
    model_config = json.loads((art.path / "config.json").read_text())
    common = {
        "threads": threads,
        "vocab": model_config["vocab_size"],
        "shapes": shapes,
        "warmup": warmup,
        "repeats": repeats,
    }
    runs, notes = plan_runs(art, chosen, common, provider_list, baseline, seq_lens, documents)
    source = art.manifest["source"]
    source_path = source.get("path") if source.get("kind") == "local" else None
    if is_random_weight_model(source_path):
        notes.append(
            "Random weights (qconv testmodel / demo model): speed and memory do not depend on weight "
            "values; quality metrics would be meaningless."
        )

    rows = []
    for label, spec, meta in runs:
        with console.status(f"benchmarking {label} ({len(spec['shapes'])} shapes, {threads} threads)"):
            measured = _run_worker(spec, label)
        for shape in measured["shapes"]:
            times = np.array(shape["seconds"])
            median = float(np.median(times))
            per_token = flops_per_token(model_config, shape["seq"], lm_head=meta["lm_head"])
            rows.append(
                {
                    "runtime": label,
                    **{k: v for k, v in meta.items() if k not in RUN_ONLY_META},
                    "batch": shape["batch"],
                    "seq": shape["seq"],
                    "throughput": shape["batch"] / median,
                    "latency_ms": {q: float(np.percentile(times, q)) * 1000 for q in (50, 90, 99)},
                    "latency_std_ms": float(times.std()) * 1000,
                    "repeats": len(times),
                    "gflops": per_token * shape["batch"] * shape["seq"] / median / 1e9,
                    "load_seconds": measured["load_seconds"],
                    "peak_rss_bytes": measured["peak_rss_bytes"],
                    "pid": measured["pid"],
                }
            )
    baseline_rows = {(r["batch"], r["seq"]): r["throughput"] for r in rows if r["runtime"] == "torch-fp32"}
    for r in rows:
        ref = baseline_rows.get((r["batch"], r["seq"]))
        r["vs_torch_fp32"] = r["throughput"] / ref if ref else None
    for label, _, meta in runs:  # a task's extra run that the others are compared with (bench_extra_runs)
        if meta.get("speedup_key"):
            loop = {r["seq"]: r for r in rows if r["runtime"] == label}
            for r in rows:
                if r["seq"] in loop and r["runtime"] != label:
                    r[meta["speedup_key"]] = r["throughput"] / loop[r["seq"]]["throughput"]
    result = {
        "artifact": art.name,
        "task": art.task,
        "created": now_iso(),
        "machine": {
            "cpu": cpu_description(),
            "cores": os.cpu_count(),
            "threads": threads,
            "platform": platform.platform(),
        },
        "packages": package_versions(),
        "providers": provider_list,
        "notes": notes,
        "unit": task_of(art).bench_unit,
        "rows": rows,
    }
    with art.staged_outputs() as stage:  # the reports and the manifest in one step
        write_json_atomic(stage / "bench.json", result)
        (stage / "bench.md").write_text(render_markdown(result), encoding="utf-8")
        _plot(stage / "bench.png", result)
        art.manifest["bench"] = {
            "report": "reports/bench.json",
            "created": result["created"],
            "threads": threads,
            "notes": notes,
            "options": dataclasses.asdict(config),
        }
        art.add_stage({"stage": "bench", "runtimes": [label for label, _, _ in runs], "shapes": shapes})
    console.print(render_markdown(result))
    return result


def render_markdown(result: dict) -> str:
    lines = [
        f"# Benchmark: {result['artifact']}",
        "",
        f"- machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, "
        f"{result['machine']['threads']} threads; onnxruntime {result['packages'].get('onnxruntime')}, "
        f"torch {result['packages'].get('torch')}; providers {', '.join(result['providers'])}",
        f"- measured {result['created']}; each runtime in its own process; warm-up excluded",
    ]
    lines += [f"- note: {n}" for n in result["notes"]]
    lines += [
        "",
        f"| runtime | precision | batch x seq | {result['unit']} | p50 ms | p90 ms | p99 ms | std ms | "
        f"GFLOP/s | vs torch fp32 | file MB | load s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        ratio = f"{r['vs_torch_fp32']:.2f}x" if r.get("vs_torch_fp32") else "-"
        size = f"{r['file_bytes'] / 1e6:.0f}" if r.get("file_bytes") else "-"
        lat = r["latency_ms"]
        lines.append(
            f"| {r['runtime']} | {r['precision']} | {r['batch']} x {r['seq']} | {r['throughput']:.2f} | "
            f"{lat[50]:.1f} | {lat[90]:.1f} | {lat[99]:.1f} | {r['latency_std_ms']:.1f} | "
            f"{r['gflops']:.1f} | {ratio} | {size} | {r['load_seconds']:.1f} | "
            f"{r['peak_rss_bytes'] / 1e6:.0f} |"
        )
    if any("vs_causal_lm_per_document" in r for r in result["rows"]):
        lines += ["", "Reranker speed-up over the causal LM scoring one document per call:", ""]
        lines += [
            f"- {r['runtime']} {r['batch']} x {r['seq']}: {r['vs_causal_lm_per_document']:.1f}x"
            for r in result["rows"]
            if "vs_causal_lm_per_document" in r
        ]
    return "\n".join(lines) + "\n"


def _plot(path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = sorted({(r["batch"], r["seq"]) for r in result["rows"]})
    runtimes = list(dict.fromkeys(r["runtime"] for r in result["rows"]))
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(shapes) * max(1, len(runtimes)) / 2), 4), dpi=100)
    width = 0.8 / max(1, len(runtimes))
    for i, runtime in enumerate(runtimes):
        values = [
            next(
                (r["throughput"] for r in result["rows"] if r["runtime"] == runtime and (r["batch"], r["seq"]) == s),
                0.0,
            )
            for s in shapes
        ]
        ax.bar(np.arange(len(shapes)) + i * width, values, width, label=runtime)
    ax.set_xticks(np.arange(len(shapes)) + width * (len(runtimes) - 1) / 2)
    ax.set_xticklabels([f"{b} x {s}" for b, s in shapes])
    ax.set_ylabel(result["unit"])
    ax.set_title(f"{result['artifact']} ({result['machine']['threads']} threads)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


__all__ = ["bench", "flops_per_token", "plan_runs"]
