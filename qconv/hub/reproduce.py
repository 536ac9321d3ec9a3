"""The card's "Reproduce" section: the ``qconv`` command lines that rebuild an artifact, from its manifest."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qconv.artifact import BASE_VARIANT, Artifact
from qconv.errors import QconvError
from qconv.validate.metrics import BOOTSTRAP_DEFAULT

if TYPE_CHECKING:
    from qconv.hub.card import _CardData

# Stages that describe the artifact's history but do not make a variant.
_NON_BUILD_STAGES = ("validate", "fallback", "bench", "card", "publish")


def _q(value: Any) -> str:
    return shlex.quote(str(value))


def _export_command(data: _CardData, out: str) -> list[str]:
    stage = next((s for s in data.manifest.get("stages", []) if s.get("stage") == "export"), {})
    options = stage.get("options") or {}
    source = data.source
    lines: list[str] = []
    model = source.get("model", "MODEL")
    marker = Path(source["path"]) / "qconv_testmodel.json" if source.get("path") else None
    if marker is not None and marker.is_file():
        note = json.loads(marker.read_text(encoding="utf-8"))
        lines.append(
            f"qconv testmodel create {_q(model)} --shape {_q(note['shape'])} --kind {_q(note['kind'])} "
            f"--layers {note['layers']} --seed {note['seed']}"
        )
    elif data.random_weights:
        lines.append(f"# {model}: a random-weight test model (qconv.testing.testmodels), not a published checkpoint")
    revision = source.get("revision") if source.get("kind") == "hub" else options.get("revision")
    from qconv.pipeline.options import from_data, to_argv
    from qconv.tasks import get_task

    # The stored export options, printed by the mapping the export command's flags are generated from (keys
    # the task's config does not declare, e.g. the revision, are not flags of its own).
    config = from_data(get_task(data.task).export_config, options)
    args = [f"qconv export {data.task} --model {_q(model)}", *(_q(a) for a in to_argv(config))]
    if revision:
        args.append(f"--revision {_q(revision)}")
    lines.append(" ".join(args + [f"--output {out}"]))
    return lines


def _build_command(art: Artifact, variant: str, out: str) -> str:
    """The command that made a (non-base) variant, from its manifest entry."""
    from qconv.pipeline.options import to_argv

    entry = art.variants[variant]
    if entry.get("stage") == "optimize" and entry.get("level"):
        # The entry records the optimize config's keys (level, target, from): the config back, printed by the
        # mapping the command's options are generated from.
        from qconv.pipeline.configs import OptimizeStage
        from qconv.pipeline.options import from_data

        config = from_data(OptimizeStage, entry)
        return " ".join([f"qconv optimize {out}"] + [_q(a) for a in to_argv(config)])
    if entry.get("stage") != "quantize":
        return f"# {variant}: made by the '{entry.get('stage')}' stage (see variants.{variant} in qconv.json)"
    from qconv.convert.quantize import config_of_record

    # The stored config, printed by the mapping the CLI's options are generated from.
    config = config_of_record(entry)
    if config is None:
        return f"# {variant}: made by quantize --mode {entry.get('mode')}, a mode this qconv does not have"
    return " ".join(
        [f"qconv quantize {out} --mode {_q(config.mode)}"] + [_q(a) for a in to_argv(config, skip=("mode",))]
    )


def _fallback_command(stage: dict, out: str) -> str:
    """The ``qconv fallback`` line of a fallback stage entry (it records the command's config: variants,
    providers, runtime); the providers are always printed (declared ``always``: the default could change)."""
    from qconv.pipeline.configs import FallbackCommand
    from qconv.pipeline.options import from_data, to_argv

    config = from_data(FallbackCommand, {k: v for k, v in stage.items() if v is not None})
    return " ".join([f"qconv fallback {out}"] + [_q(a) for a in to_argv(config)])


def _validate_command(data: _CardData, summary: dict, out: str) -> str:
    from qconv.pipeline.configs import validate_request_class
    from qconv.pipeline.options import from_data, to_argv

    report = data.report(summary)
    stored = summary.get("request") or report.get("request")
    if stored:
        # The stored request, printed by the mapping qconv validate's options are generated from.
        config = from_data(validate_request_class(), stored)
        return " ".join([f"qconv validate {out}"] + [_q(a) for a in to_argv(config)])
    return _legacy_validate_command(data, summary, report, out)


def _legacy_validate_command(data: _CardData, summary: dict, report: dict, out: str) -> str:
    """The line of a validation recorded before summaries stored their request: rebuilt from report fields."""
    from qconv.gates import GATES, gate_name, thresholds_for
    from qconv.validate.datasets import DATASETS

    spec = DATASETS.get(summary["dataset"])
    args = [f"qconv validate {out} --dataset {_q(summary['dataset'])}"]
    if summary["variant"] != BASE_VARIANT:
        args.append(f"--variant {_q(summary['variant'])}")
    if summary.get("source") == "bundled-sample":
        args.append("--offline")
    elif summary.get("source") == "data-files" and report.get("location"):
        args.append(f"--data-files {_q(report['location'])}")
    if spec and summary.get("split") and summary["split"] != spec.split:
        args.append(f"--split {_q(summary['split'])}")
    count = report.get("n_queries", report.get("n_pairs"))
    if count:
        args.append(f"--limit {count}")
    if report.get("max_candidates"):
        args.append(f"--max-candidates {report['max_candidates']}")
    if report.get("dim"):
        args.append(f"--dim {report['dim']}")
    rr = data.manifest.get("reranker") or {}
    if str(report.get("instruction_rule", "")).startswith("none"):
        args.append("--instruction ''")
    elif report.get("instruction") and report["instruction"] != (rr.get("instruction") or spec and spec.instruction):
        args.append(f"--instruction {_q(report['instruction'])}")
    boot = report.get("bootstrap") or {}
    if "n_resamples" in boot and boot["n_resamples"] != BOOTSTRAP_DEFAULT:
        args.append(f"--bootstrap {boot['n_resamples']}")
    providers = report.get("providers") or []
    if providers and providers != ["CPUExecutionProvider"]:
        args.append(f"--providers {_q(','.join(providers))}")
    thresholds = report.get("thresholds") or {}
    if thresholds:
        precision = data.art.variants.get(summary["variant"], {}).get("precision", "fp32")
        try:
            defaults = thresholds_for(data.task, precision)
        except QconvError:  # no defaults declared (any more): every recorded gate was chosen
            defaults = {}
        for key, value in thresholds.items():
            name = gate_name(key, strict=False)  # reports written before the gates had one name: legacy keys
            if name in GATES and defaults.get(name) != value:
                args.append(f"{GATES[name].flag} {value:g}")
    return " ".join(args)


def reproduce_commands(art: Artifact, data: _CardData | None = None) -> list[str]:
    """``qconv`` command lines (and comments) that rebuild this artifact, in the order it was made."""
    if data is None:
        from qconv.hub.card import _CardData

        data = _CardData(art, None, None)
    out = f"artifacts/{art.name}"
    version = (data.manifest.get("packages") or {}).get("qconv")
    lines = [f"# with qconv {version} installed" if version else "# with qconv installed"]
    recipe = data.manifest.get("recipe")
    if recipe:
        recipe = recipe if isinstance(recipe, dict) else {"name": str(recipe)}
        name = recipe.get("name")
        path = f"recipes/{recipe.get('file') or f'{name}.yaml'}"
        lines += [f"# built by recipe '{name}':", f"qconv run {_q(path)}", "# or step by step:"]
    lines += _export_command(data, out)
    order: list[str] = []
    for stage in data.manifest.get("stages", []):
        variant = stage.get("variant")
        if stage.get("stage") not in _NON_BUILD_STAGES and variant in art.variants and variant != BASE_VARIANT:
            order.append(variant)
    order += sorted(art.variants)
    for variant in dict.fromkeys(order):
        if variant != BASE_VARIANT:
            lines.append(_build_command(art, variant, out))
    lines += [_validate_command(data, s, out) for s in data.summaries()]
    stages = data.manifest.get("stages", [])
    lines += list(dict.fromkeys(_fallback_command(s, out) for s in stages if s.get("stage") == "fallback"))
    lines.append(f"qconv card {out}")
    return lines


def _reproduce_section(data: _CardData) -> list[str]:
    packages = data.manifest.get("packages") or {}
    shown = ", ".join(f"{name} {v}" for name, v in packages.items() if v)
    return [
        "## Reproduce",
        "",
        "Made with qconv; these commands rebuild the artifact from the manifest's record (`qconv.json` holds "
        "every option, the source's content hash and the sha256 of every file):",
        "",
        "```bash",
        *reproduce_commands(data.art, data),
        "```",
        "",
        f"Package versions: {shown}.",
    ]
