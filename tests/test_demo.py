"""The README's first command: the offline demo, end to end."""

import json

from qconv.demo import DEMO_MODEL_NAME, DEMO_RERANKER_NAME


def test_demo_runs_offline_and_says_weights_are_random(run_cli, tmp_path):
    code, out, err = run_cli("demo", "--output-root", tmp_path / "artifacts", "--limit", "20")
    assert code == 0, err
    assert "random weights" in out
    for name, dataset in ((DEMO_MODEL_NAME, "sts12"), (f"{DEMO_RERANKER_NAME}-seq-cls", "msmarco")):
        reports = tmp_path / "artifacts" / name / "reports"
        report = json.loads((reports / f"validate-model-{dataset}.json").read_text())
        assert report["source"] == "bundled-sample" and report["passed"]
        assert "random weights" in report["note"]
        assert "random weights" in (reports / f"validate-model-{dataset}.md").read_text()


def test_demo_rejects_unknown_task(run_cli, tmp_path):
    code, _, err = run_cli("demo", "--task", "vision", "--output-root", tmp_path)
    assert code == 2 and "unknown demo task 'vision'" in err
