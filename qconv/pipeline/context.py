"""What every stage of a recipe run sees: the recipe, the run's options, the artifact and its recorded hashes.

``qconv.pipeline.stages`` asks this context whether a stage's inputs and outputs are intact; the helpers below
are the parts of a run several stages share (the source model, the dataset files, the fingerprint digest).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from qconv.artifact import Artifact, sha256_file
from qconv.errors import QconvError
from qconv.pipeline.recipe import Recipe, recipe_to_dict

DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")


@dataclass
class RunOptions:
    offline: bool = False
    data_dir: Path | None = None
    output: Path = Path("artifacts")
    only: str | None = None
    dry_run: bool = False
    model: str | None = None  # a local copy of the recipe's model (offline machines)
    publish: bool = False


@dataclass
class Context:
    recipe: Recipe
    options: RunOptions
    target: Path
    art: Artifact | None = None
    ran: list[str] = field(default_factory=list)

    def where(self, key: str) -> str:
        line = self.recipe.lines.get(key)
        return f"{self.recipe.path}:{line}" if line else str(self.recipe.path)

    def fingerprints(self) -> dict[str, str]:
        return self.art.manifest.get("recipe", {}).get("steps", {}) if self.art else {}

    def record(self, step_id: str, fingerprint: str) -> None:
        entry = self.art.manifest.setdefault("recipe", {})
        entry.update(recipe_identity(self.recipe))
        entry.setdefault("steps", {})[step_id] = fingerprint
        self.art.save()

    def variant_hashes(self, variant: str) -> dict[str, str] | None:
        """The recorded hashes of a variant's graph and external data (None: the variant is not there yet)."""
        if not self.art or variant not in self.art.variants:
            return None
        hashes = {rel: self.art.files.get(rel) for rel in self.art.variant_files(variant)}
        return hashes if all(hashes.values()) else None

    def variant_build(self, variant: str) -> dict | None:
        """What identifies one build of a variant: its files' hashes and the build's id (a rebuild, even a
        byte-identical one, re-runs what was measured on the variant)."""
        hashes = self.variant_hashes(variant)
        return {"files": hashes, "build_id": self.art.variants[variant].get("build_id")} if hashes else None

    def intact(self, hashes: dict[str, str] | None) -> bool:
        """The files exist and still have the hashes their stages recorded."""
        if not hashes or not self.art:
            return False
        return all(self.art.files.get(rel) == digest for rel, digest in hashes.items()) and not self.art.changed_files(
            list(hashes)
        )

    def reports_intact(self, *rels: str) -> bool:
        """Reports exist with their recorded hashes (a report replaced with junk is made again)."""
        return bool(self.art) and all(rel in self.art.files for rel in rels) and not self.art.changed_files(list(rels))


def recipe_identity(recipe: Recipe) -> dict:
    return {
        "name": recipe.name,
        "file": recipe.path.name if recipe.path else None,
        "sha256": sha256_file(recipe.path) if recipe.path else None,
        "definition": recipe_to_dict(recipe),
    }


def digest(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def model_label(recipe: Recipe, options: RunOptions) -> str:
    if options.model:
        return options.model
    if recipe.model.testmodel:
        tm = recipe.model.testmodel
        return f"built-in random Qwen3 ({tm.shape}" + (f", {tm.layers} layers)" if tm.layers else ")")
    return recipe.model.id + (f"@{recipe.model.revision}" if recipe.model.revision else "")


def source_identity(recipe: Recipe, options: RunOptions) -> dict:
    """What identifies the source model: content hash (local), id + revision (Hub), or the test-model spec."""
    from qconv.convert.source import content_hash

    if recipe.model.testmodel and not options.model:
        return {"testmodel": dataclasses.asdict(recipe.model.testmodel), "task": recipe.task}
    local = Path(options.model or recipe.model.id).expanduser()
    if local.is_dir():
        return {"local": content_hash(local.resolve())}
    # An unpinned Hub id is taken as unchanged: pin 'revision' to re-export when the Hub moves.
    return {"hub": recipe.model.id, "revision": recipe.model.revision}


def source_path(recipe: Recipe, options: RunOptions) -> str | Path:
    if options.model:
        return options.model
    if recipe.model.testmodel:
        from qconv.testing.testmodels import cached_test_model

        tm = recipe.model.testmodel
        return cached_test_model(recipe.task, tm.shape, layers=tm.layers, seed=tm.seed)
    return recipe.model.id


def data_file(ctx: Context, dataset: str) -> Path | None:
    """``--data-dir``: the file named after the dataset (``sts12.jsonl``, ``bq.parquet``, ``msmarco_*.jsonl``)."""
    data_dir = ctx.options.data_dir
    if data_dir is None:
        return None
    for pattern in (dataset, f"{dataset}_*", f"{dataset}-*"):
        for suffix in DATA_SUFFIXES:
            found = sorted(Path(data_dir).glob(pattern + suffix))
            if found:
                return found[0]
    suffixes = "/".join(DATA_SUFFIXES)
    raise QconvError(f"--data-dir {data_dir} has no file for dataset '{dataset}' (expected {dataset}{suffixes})")
