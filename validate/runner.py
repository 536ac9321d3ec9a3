"""What every validation shares: thresholds, report files, manifest update, summary, the exit gate."""

from __future__ import annotations

from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from qconv.artifact import Artifact, now_iso
from qconv.console import console
from qconv.errors import GateFailed, QconvError

from .datasets import DatasetSpec, dataset_spec
from .report import Figure, write_report
from .thresholds import check, thresholds_for

TASK_OF_KIND = {"pairs": "embedding", "rerank": "reranker"}


def _a(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"


def progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def open_for_validation(
    artifact: Artifact | str | Path, dataset: str, variant: str, overrides: dict[str, float | None]
) -> tuple[Artifact, DatasetSpec, str, dict]:
    """Check that artifact, dataset and variant fit together; returns (artifact, spec, precision, thresholds)."""
    art = artifact if isinstance(artifact, Artifact) else Artifact(artifact)
    spec = dataset_spec(dataset)
    needed = TASK_OF_KIND[spec.kind]
    if art.task != needed:
        raise QconvError(f"dataset '{dataset}' needs {_a(needed)} artifact; {art.name} is {_a(art.task)} artifact")
    art.variant_path(variant)
    precision = art.variants[variant].get("precision", "fp32")
    return art, spec, precision, thresholds_for(art.task, precision, overrides)


def check_batching(batch_size: int, batch_tokens: int) -> None:
    if batch_size < 1:
        raise QconvError(f"--batch-size must be positive, got {batch_size}")
    if batch_tokens < 1:
        raise QconvError(f"--batch-tokens must be positive, got {batch_tokens}")


def note_truncated(truncated: int, total: int, what: str, max_length: int) -> None:
    """Say how many inputs were cut to the artifact's max length (both sides cut them the same way)."""
    if truncated:
        console.print(
            f"[yellow]{truncated} of {total} {what} are longer than the artifact's max length ({max_length} tokens) "
            f"and were truncated to it, as the runtimes do[/]"
        )


def placement_summary(art: Artifact, variant: str, providers: list[str]) -> dict:
    """Static placement of the validated variant on the providers it ran on (see ``qconv fallback``)."""
    from .fallback import analyse, load_graph

    model = load_graph(art.variant_path(variant))
    summary = {}
    for provider in providers:
        report = analyse(model, provider)
        summary[provider] = {k: report[k] for k in ("nodes_total", "fallback_nodes", "partition_boundaries", "verdict")}
    return summary


def base_report(spec: DatasetSpec, data, variant: str, precision: str, providers: list[str]) -> dict:
    return {
        "dataset": spec.name,
        "dataset_description": spec.description,
        "hub_path": spec.hub_path,
        "revision": spec.revision or "unpinned",
        "split": data.split,
        "source": data.source,
        "location": data.location,
        "fingerprint": data.fingerprint,
        "variant": variant,
        "precision": precision,
        "providers": providers,
        "metric": spec.main_metric,
        "created": now_iso(),
    }


def scored_results(metric: str, ref_metrics: dict, cand_metrics: dict, reference_info: dict, throughput: dict) -> dict:
    """The reference/candidate/delta part of a report, main metric first."""
    return {
        "reference": {**reference_info, "metric_value": ref_metrics[metric], **ref_metrics},
        "candidate": {"metric_value": cand_metrics[metric], **cand_metrics, **throughput},
        "delta": cand_metrics[metric] - ref_metrics[metric],
    }


def finalize(
    art: Artifact, report: dict, figures: list[Figure], *, extra_failures: list[str], raise_on_fail: bool
) -> dict:
    """Apply the gates, write the report, record it in the manifest, print a summary, gate the exit."""
    report["placement"] = placement_summary(art, report["variant"], report["providers"])
    report["failures"] = check(report["thresholds"], report) + extra_failures
    report["passed"] = not report["failures"]
    paths = write_report(art.reports_dir(), report, figures)
    metric = report["metric"]
    summary = {k: report[k] for k in ("dataset", "split", "source", "size", "metric", "delta", "passed")}
    summary.update(
        reference=report["reference"][metric],
        candidate=report["candidate"][metric],
        report=f"reports/{paths['json'].name}",
    )
    art.manifest.setdefault("validation", {}).setdefault(report["variant"], {})[report["dataset"]] = summary
    art.add_stage(
        {"stage": "validate", "variant": report["variant"], "dataset": report["dataset"], "passed": report["passed"]}
    )
    art.save()
    print_summary(report, paths["md"])
    if not report["passed"] and raise_on_fail:
        raise GateFailed(
            f"validation failed for {report['variant']} on {report['dataset']}: "
            f"{'; '.join(report['failures'])} (report: {paths['json']})"
        )
    return report


def print_summary(report: dict, md_path: Path) -> None:
    table = Table(title=f"{report['variant']} on {report['dataset']} ({report['source']}, {report['size']})")
    table.add_column("")
    for metric in report["metrics"]:
        table.add_column(metric)
    ref, cand = report["reference"], report["candidate"]
    table.add_row("PyTorch", *[f"{ref[m]:.6f}" for m in report["metrics"]])
    table.add_row("ONNX", *[f"{cand[m]:.6f}" for m in report["metrics"]])
    table.add_row("delta", *[f"{cand[m] - ref[m]:+.2e}" for m in report["metrics"]])
    console.print(table)
    shown = ", ".join(f"{k}={v:.7g}" for k, v in report["parity"].items() if isinstance(v, float))
    console.print(f"parity: {shown}")
    verdict = "[green]PASSED[/]" if report["passed"] else f"[red]FAILED[/]: {'; '.join(report['failures'])}"
    console.print(f"{verdict} — report {md_path}")


def validate_dataset(art: Artifact | str | Path, dataset: str, **options) -> dict:
    """Validate on any dataset: the embedding or the reranker path, by the dataset's kind. Never raises on a
    failed gate (the report says ``passed: false``); callers decide the exit status."""
    if dataset_spec(dataset).kind == "rerank":
        from .rerank import validate_reranker

        return validate_reranker(art, dataset, raise_on_fail=False, **options)
    from .embedding import validate_embedding

    return validate_embedding(art, dataset, raise_on_fail=False, **options)
