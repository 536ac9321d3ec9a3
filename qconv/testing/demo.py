"""``qconv demo``: the bundled demo recipes, offline, on built-in random Qwen3 models.

``recipes/demo.yaml`` (embedding: export, O2, INT8 from O2, fp16, validation on the STS12 and BQ samples,
fallback report, model card) and ``recipes/demo-reranker.yaml`` (causal LM -> seq-cls head, fp16, MS MARCO
sample). Random weights: task metrics are meaningless, the parity with PyTorch is real.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from qconv.console import console
from qconv.errors import GateFailed, QconvError
from qconv.tasks import TASKS
from qconv.testing.testmodels import RANDOM_WEIGHTS_NOTE


def demo_recipes() -> dict[str, str]:
    """Task name -> its bundled demo recipe file name: every registered task that declares one."""
    return {name: task.demo_recipe for name, task in TASKS.items() if task.demo_recipe}


def demo_recipe(task: str) -> Path:
    """The bundled recipe file (``recipes/`` in a checkout, ``qconv/recipes`` in an installed wheel)."""
    return Path(str(resources.files("qconv.recipes") / demo_recipes()[task]))


def run_demo(output_root: str | Path = "artifacts", task: str = "all") -> list[dict]:
    from qconv.pipeline.run import RunOptions, run_recipe

    recipes = demo_recipes()
    choices = (*recipes, "all")
    if task not in choices:
        raise QconvError(f"unknown demo task '{task}' (choose {', '.join(choices)})")
    console.print(f"[bold yellow]demo models: {RANDOM_WEIGHTS_NOTE}[/]")
    results, failures = [], []
    for name in recipes if task == "all" else (task,):
        try:
            results.append(run_recipe(demo_recipe(name), RunOptions(offline=True, output=Path(output_root))))
        except GateFailed as exc:  # run the other demo too, then report
            failures.append(str(exc))
    console.print(
        f"[bold yellow]reminder: {RANDOM_WEIGHTS_NOTE}. Real models: 'qconv run recipes/qwen3-embedding-0.6b-cpu.yaml' "
        f"(Hub), or 'qconv export embedding --model DIR'.[/]"
    )
    if failures:
        raise GateFailed(" | ".join(failures))
    return results
