"""The README's first command: the bundled demo recipes, offline, end to end."""

import json

from qconv.pipeline.recipe import load_recipe
from qconv.testing.demo import demo_recipe, demo_recipes


def test_demo_runs_both_recipes_offline_and_says_weights_are_random(run_cli, tmp_path):
    code, out, err = run_cli("demo", "--output-root", tmp_path / "artifacts")
    assert code == 0, err
    assert "random weights" in out
    for task, dataset in (("embedding", "sts12"), ("reranker", "msmarco")):
        recipe = load_recipe(demo_recipe(task))
        art = tmp_path / "artifacts" / recipe.name
        manifest = json.loads((art / "qconv.json").read_text())
        assert manifest["recipe"]["name"] == recipe.name
        assert manifest["source"]["weights"].startswith("random weights")
        report = json.loads((art / "reports" / f"validate-model-{dataset}.json").read_text())
        assert report["source"] == "bundled-sample" and report["passed"]
        assert "random weights" in report["note"]
        assert "random weights" in (art / "reports" / f"validate-model-{dataset}.md").read_text()
        # Every variant the recipe makes is validated and has a placement report; the card is written.
        assert set(manifest["validation"]) == set(manifest["variants"])
        for variant in manifest["variants"]:
            assert (art / "reports" / f"fallback-{variant}.json").is_file()
        assert (art / "README.md").is_file()
        assert (art / "reports" / "recipe-summary.md").is_file()


def test_demo_recipes_are_bundled_with_the_package():
    for task in demo_recipes():
        assert demo_recipe(task).is_file()


def test_demo_rejects_unknown_task(run_cli, tmp_path):
    code, _, err = run_cli("demo", "--task", "vision", "--output-root", tmp_path)
    assert code == 2 and "unknown demo task 'vision'" in err
