"""``qconv fallback``: per-provider placement reports for an artifact's variants (JSON + Markdown)."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from qconv.artifact import Artifact, write_json_atomic
from qconv.console import console
from qconv.errors import QconvError
from qconv.kernels import KNOWN_PROVIDERS, analyse, load_graph

from .fallback import compare_runtime, dummy_feeds, runtime_placement

DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


def parse_providers(providers: str | list[str] | None) -> list[str]:
    names = [p.strip() for p in providers.split(",")] if isinstance(providers, str) else list(providers or [])
    names = [n for n in names if n] or list(DEFAULT_PROVIDERS)
    for name in names:
        if name not in KNOWN_PROVIDERS:
            raise QconvError(f"unknown execution provider '{name}' (known: {', '.join(KNOWN_PROVIDERS)})")
    return names


def placement(art: Artifact, variant: str, providers: list[str], runtime: bool) -> dict:
    path = art.variant_path(variant)
    model = load_graph(path)
    if not len(model.graph.node):
        raise QconvError(f"{path} has no nodes")
    result = {"variant": variant, "file": art.variants[variant]["file"], "providers": {}}
    for provider in providers:
        static = analyse(model, provider)
        entry = {k: v for k, v in static.items() if k != "on_device"}
        if runtime:
            measured = runtime_placement(path, provider, dummy_feeds(model))
            entry["runtime"] = (
                compare_runtime(static, measured)
                if measured is not None
                else {
                    "measured": False,
                    "note": f"{provider} is not available on this machine: runtime placement could not be measured",
                }
            )
        result["providers"][provider] = entry
    return result


def render_markdown(result: dict) -> str:
    lines = [
        f"# Operator placement: {result['variant']} (`{result['file']}`)",
        "",
        "| provider | nodes | on device | fall back | copies per run | MatMul FLOPs on device | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for provider, r in result["providers"].items():
        share = "n/a" if r["matmul_flops_on_device"] is None else f"{r['matmul_flops_on_device']:.0%}"
        lines.append(
            f"| {provider} | {r['nodes_total']} | {r['nodes_on_device']} | {r['fallback_nodes']} | "
            f"{r['partition_boundaries']} | {share} | {r['verdict']} |"
        )
    for provider, r in result["providers"].items():
        lines += ["", f"## {provider}", "", f"Kernel source: {r['source']}."]
        if r["fallback"]:
            lines += ["", "| op | input types | count | reason | examples |", "|---|---|---|---|---|"]
            lines += [
                f"| {g['op']} | {g['types']} | {g['count']} | {g['reason']} | {', '.join(g['examples'])} |"
                for g in r["fallback"]
            ]
        if "runtime" in r:
            rt = r["runtime"]
            lines.append("")
            lines.append(
                f"Runtime: {rt['note']}"
                if "note" in rt
                else f"Runtime (profile): nodes per provider {rt['nodes_per_provider']}; static and runtime "
                f"{'agree' if rt['agree'] else 'DISAGREE'} on {rt['compared']} nodes; onnxruntime "
                f"inserted {rt['inserted_count']} nodes and removed {rt['removed_by_onnxruntime_count']}."
            )
    return "\n".join(lines) + "\n"


def fallback_report(
    artifact: Artifact | str | Path,
    *,
    variants: list[str] | None = None,
    providers: str | list[str] | None = None,
    runtime: bool = False,
) -> list[dict]:
    art = artifact if isinstance(artifact, Artifact) else Artifact(artifact)
    provider_list = parse_providers(providers)
    chosen = variants or ["model"]
    for variant in chosen:
        art.variant_path(variant, verify=True)
    results = [placement_of(art, variant, provider_list, runtime) for variant in chosen]
    with art.staged_outputs() as stage:  # the reports and the manifest in one step
        for variant, result in zip(chosen, results):
            write_json_atomic(stage / f"fallback-{variant}.json", result)
            (stage / f"fallback-{variant}.md").write_text(render_markdown(result), encoding="utf-8")
            art.manifest.setdefault("fallback", {})[variant] = {
                p: {
                    "fallback_nodes": r["fallback_nodes"],
                    "partition_boundaries": r["partition_boundaries"],
                    "verdict": r["verdict"],
                    "report": f"reports/fallback-{variant}.json",
                }
                for p, r in result["providers"].items()
            }
        art.add_stage({"stage": "fallback", "variants": chosen, "providers": provider_list, "runtime": runtime})
    for variant, result in zip(chosen, results):
        table = Table(title=f"placement: {variant}")
        for col in ("provider", "fall back", "copies/run", "verdict"):
            table.add_column(col)
        for p, r in result["providers"].items():
            table.add_row(p, str(r["fallback_nodes"]), str(r["partition_boundaries"]), r["verdict"])
        console.print(table)
    return results


def placement_of(art: Artifact, variant: str, provider_list: list[str], runtime: bool) -> dict:
    with console.status(f"placement of {variant} on {', '.join(provider_list)}"):
        return placement(art, variant, provider_list, runtime)
