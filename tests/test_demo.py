"""The README's first command: the offline demo, end to end."""

import json

from qconv.demo import DEMO_MODEL_NAME


def test_demo_runs_offline_and_says_weights_are_random(run_cli, tmp_path):
    code, out, err = run_cli("demo", "--output-root", tmp_path / "artifacts", "--limit", "100")
    assert code == 0, err
    assert "random weights" in out
    artifact = tmp_path / "artifacts" / DEMO_MODEL_NAME
    report = json.loads((artifact / "reports" / "validate-model-sts12.json").read_text())
    assert report["source"] == "bundled-sample" and report["passed"]
    assert "random weights" in report["note"]
    assert "random weights" in (artifact / "reports" / "validate-model-sts12.md").read_text()
