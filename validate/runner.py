"""What every validation shares: thresholds, report files, manifest update, summary, the exit gate.

The task-specific validations (validate/embedding.py, validate/rerank.py) build on this module; it never
imports them: ``validate_dataset`` reaches them through the task registry (qconv/tasks).
"""

from __future__ import annotations

from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from qconv.artifact import REPORTS_DIR, Artifact, now_iso
from qconv.console import console
from qconv.errors import GateFailed, QconvError
from qconv.gates import check, thresholds_for
from qconv.tasks import task_for_dataset_kind

from . import metrics
from .datasets import DatasetSpec, dataset_spec
from .report import Figure, write_report


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


def check_validation_request(art: Artifact, dataset: str, limit: int | None = None) -> DatasetSpec:
    """What can be checked about a validation before any work (e.g. before ``quantize --validate`` writes its
    variant): the dataset exists, fits the artifact's task, and ``limit`` is a positive count."""
    spec = dataset_spec(dataset)
    needed = task_for_dataset_kind(spec.kind).name
    if art.task != needed:
        raise QconvError(f"dataset '{dataset}' needs {_a(needed)} artifact; {art.name} is {_a(art.task)} artifact")
    if limit is not None and limit < 1:
        raise QconvError(f"--limit must be positive, got {limit}")
    return spec


def open_for_validation(
    artifact: Artifact | str | Path, dataset: str, variant: str, overrides: dict[str, float | None]
) -> tuple[Artifact, DatasetSpec, str, dict]:
    """Check that artifact, dataset and variant fit together; returns (artifact, spec, precision, thresholds)."""
    art = artifact if isinstance(artifact, Artifact) else Artifact(artifact)
    spec = check_validation_request(art, dataset)
    art.variant_path(variant, verify=True)
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
    from qconv.kernels import analyse, load_graph

    model = load_graph(art.variant_path(variant))
    summary = {}
    for provider in providers:
        report = analyse(model, provider)
        summary[provider] = {k: report[k] for k in ("nodes_total", "fallback_nodes", "partition_boundaries", "verdict")}
    return summary


def has_real_weights(art: Artifact) -> bool:
    """False for qconv's random-weight test models (the manifest's note, the marker or the README)."""
    from qconv.testing.testmodels import is_random_weight_model

    source = art.manifest.get("source") or {}
    return "random weights" not in str(source.get("weights") or "") and not is_random_weight_model(source.get("path"))


def check_bootstrap(n: int) -> None:
    if n is None or n < 0 or int(n) != n:
        raise QconvError(f"--bootstrap must be a whole number >= 0 (0 turns it off), got {n}")


def instruction_rule(instruction: str | None) -> str:
    """How ``--instruction`` was read, the same for every task."""
    if instruction is None:
        return "default (no --instruction given)"
    return "none (--instruction '')" if instruction == "" else "given"


def base_report(spec: DatasetSpec, data, variant: str, precision: str, providers: list[str], art: Artifact) -> dict:
    return {
        "dataset": spec.name,
        "dataset_description": spec.description,
        "hub_path": spec.hub_path,
        "revision": spec.revision or "unpinned",
        "split": data.split,
        "source": data.source,
        "location": data.location,
        "fingerprint": data.fingerprint,
        # The model card's model-index takes a result only when both hold (qconv/hub/card.py).
        "full_split": data.full_split,
        "real_weights": has_real_weights(art),
        "variant": variant,
        "precision": precision,
        "providers": providers,
        "metric": spec.main_metric,
        "created": now_iso(),
    }


def scored_results(
    metric: str,
    ref_metrics: dict,
    cand_metrics: dict,
    reference_info: dict,
    throughput: dict,
    intervals: dict,
    n_resamples: int,
    unit: str,
) -> dict:
    """The reference/candidate/delta part of a report, main metric first, with each delta's bootstrap interval.

    The gates read the point estimate (``delta``); the interval (``delta_ci``) is for the reader."""
    bootstrap = {"n_resamples": n_resamples, "resampled": unit}
    if n_resamples and not intervals:
        bootstrap["skipped"] = f"fewer than {metrics.MIN_BOOTSTRAP_SAMPLES} {unit}: nothing to resample"
    elif n_resamples:
        bootstrap.update(
            seed=metrics.BOOTSTRAP_SEED,
            confidence=metrics.BOOTSTRAP_CONFIDENCE,
            method="paired percentile bootstrap (scipy.stats.bootstrap), same indices for reference and candidate",
        )
    return {
        "reference": {**reference_info, "metric_value": ref_metrics[metric], **ref_metrics},
        "candidate": {"metric_value": cand_metrics[metric], **cand_metrics, **throughput},
        "delta": cand_metrics[metric] - ref_metrics[metric],
        "delta_ci": intervals,
        "bootstrap": bootstrap,
    }


def stored_request(art: Artifact, report: dict, options: dict) -> dict:
    """The ``ValidateRequest`` (qconv.pipeline.configs) that repeats this validation, as data: what the card's
    Reproduce line prints back (``to_argv`` leaves out every value equal to its default).

    Read from the report where it says what was used: the data source (``--offline`` for the bundled sample,
    the file for data files), a split other than the dataset's, the count evaluated (``--limit``), providers
    other than CPU alone, the gates that differ from the precision's defaults. ``options`` are the task's
    (task options equal to the task's declared defaults are left out), instruction, bootstrap and batch_tokens
    as given. The reference model is not kept (a local path of this machine; the manifest records it)."""
    import dataclasses

    from qconv.gates import GATES, default_gates, gate_name
    from qconv.pipeline.configs import validate_request_class

    spec = dataset_spec(report["dataset"])
    task = task_for_dataset_kind(spec.kind)
    task_defaults = dataclasses.asdict(task.validate_options()) if task.validate_options else {}
    try:
        defaults = default_gates(art.task, report["precision"])
    except QconvError:  # no defaults declared: every recorded gate was chosen
        defaults = {}
    gates = {gate_name(k): v for k, v in report["thresholds"].items() if defaults.get(gate_name(k)) != v}
    fields = {f.name for f in dataclasses.fields(validate_request_class())}
    values = {k: v for k, v in options.items() if k in fields and not (k in task_defaults and task_defaults[k] == v)}
    providers = list(report["providers"])
    values.update(
        dataset=[report["dataset"]],
        variant=report["variant"],
        offline=report["source"] == "bundled-sample",
        data_files=report["location"] if report["source"] == "data-files" else None,
        split=report["split"] if report["split"] != spec.split else None,
        providers=None if providers == ["CPUExecutionProvider"] else providers,
        **{name: value for name, value in gates.items() if name in GATES},
    )
    request = validate_request_class()(**{k: v for k, v in values.items() if k in fields})
    return {k: v for k, v in dataclasses.asdict(request).items() if k != "reference"}


def finalize(
    art: Artifact,
    report: dict,
    figures: list[Figure],
    *,
    extra_failures: list[str],
    raise_on_fail: bool,
    request: dict | None = None,
) -> dict:
    """Apply the gates, write the report, record it in the manifest, print a summary, gate the exit.

    ``request``: the options that repeat the validation (see ``stored_request``), kept in the report and the
    manifest's summary."""
    if request is not None:
        report["request"] = stored_request(art, report, request)
    report["placement"] = placement_summary(art, report["variant"], report["providers"])
    report["failures"] = check(report["thresholds"], report) + extra_failures
    report["passed"] = not report["failures"]
    metric = report["metric"]
    # The graph validated, by the hashes its stage recorded: a later rebuild that changes it makes this
    # validation stale (the card and publish compare), whatever order the stages ran in.
    validated = {rel: art.files.get(rel) for rel in art.variant_files(report["variant"])}
    with art.staged_outputs(REPORTS_DIR) as stage:  # reports and manifest in one step (see staged_outputs)
        paths = write_report(stage, report, figures)
        summary = {
            k: report[k]
            for k in ("dataset", "split", "source", "size", "metric", "delta", "full_split", "real_weights", "passed")
        }
        interval = report["delta_ci"].get(metric)
        summary.update(
            reference=report["reference"][metric],
            candidate=report["candidate"][metric],
            delta_ci=[interval["low"], interval["high"]] if interval else None,
            report=f"{REPORTS_DIR}/{paths['json'].name}",
            variant_sha256=validated,
        )
        if "request" in report:
            summary["request"] = report["request"]
        art.manifest.setdefault("validation", {}).setdefault(report["variant"], {})[report["dataset"]] = summary
        stage_entry = {"stage": "validate", "variant": report["variant"], "dataset": report["dataset"]}
        art.add_stage({**stage_entry, "passed": report["passed"]})
    print_summary(report, art.path / REPORTS_DIR / paths["md"].name)
    if not report["passed"] and raise_on_fail:
        raise GateFailed(
            f"validation failed for {report['variant']} on {report['dataset']}: "
            f"{'; '.join(report['failures'])} (report: {art.path / REPORTS_DIR / paths['json'].name})"
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
    if report["delta_ci"]:
        intervals = [report["delta_ci"][m] for m in report["metrics"]]
        table.add_row("95% CI", *[f"[{ci['low']:+.2e}, {ci['high']:+.2e}]" for ci in intervals])
    console.print(table)
    shown = ", ".join(f"{k}={v:.7g}" for k, v in report["parity"].items() if isinstance(v, float))
    console.print(f"parity: {shown}")
    verdict = "[green]PASSED[/]" if report["passed"] else f"[red]FAILED[/]: {'; '.join(report['failures'])}"
    console.print(f"{verdict} — report {md_path}")


def validate_dataset(art: Artifact | str | Path, dataset: str, **options) -> dict:
    """Validate on any dataset: the validation of the task whose datasets are of its kind. Never raises on a
    failed gate (the report says ``passed: false``); callers decide the exit status."""
    task = task_for_dataset_kind(dataset_spec(dataset).kind)
    return task.validate(art, dataset, raise_on_fail=False, **options)
