"""Packaging: the import package is qconv (convert/ and validate/ mapped inside it), the CLI exists."""

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_subpackages_map_and_no_generic_top_level_modules(tmp_path):
    proc = run_python(
        "import importlib.util as u, qconv.convert.export, qconv.validate.datasets;"
        "print(u.find_spec('convert') is None, u.find_spec('validate') is None)",
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True"]


def test_import_qconv_and_runtime_do_not_import_torch(tmp_path):
    proc = run_python(
        "import sys, qconv, qconv.runtime.embedder, qconv.runtime.reranker, qconv.cli; print('torch' in sys.modules)",
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_console_script_help():
    script = Path(sys.executable).parent / "qconv"  # the environment's console script, PATH or not
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for command in ("export", "validate", "demo"):
        assert command in proc.stdout


def test_wheel_contents(tmp_path):
    """A non-editable build (what `pip install .` installs) ships qconv/convert, qconv/validate and data."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("qconv-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "qconv/convert/export.py" in names
    assert "qconv/validate/runner.py" in names
    assert "qconv/validate/data/sts12_test_sample.jsonl" in names
    assert "qconv/validate/data/bq_test_sample.jsonl" in names
    assert not any(n.startswith(("convert/", "validate/", "tests/")) for n in names)


def _base_closure() -> list:
    """The installed distributions the base requirements need, transitively (extras left out)."""
    import importlib.metadata as md

    import tomllib
    from packaging.requirements import Requirement

    pending = list(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    seen: dict = {}
    while pending:
        req = Requirement(pending.pop())
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        key = req.name.lower().replace("_", "-")
        if key in seen:
            continue
        seen[key] = dist = md.distribution(req.name)
        pending += dist.requires or []
    return list(seen.values())


def test_base_install_runs_without_torch(qwen3_artifact, seqcls_artifact, tiny_qwen3, tmp_path):
    """The wheel with only its base requirements (no torch, transformers, onnx, optimum): Embedder and
    Reranker score as in the full install, pip check is clean, and a torch command names its extra.

    Fast: the requirements are linked from this environment rather than downloaded again."""
    import numpy as np

    from qconv import Embedder, Reranker

    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True, timeout=300)
    python = tmp_path / "venv" / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    for dist in _base_closure():
        root = Path(dist.locate_file(""))
        for top in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            if not (site / top).exists() and (root / top).exists() and top != "__pycache__":
                (site / top).symlink_to(root / top)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("qconv-*.whl")
    install = subprocess.run(
        [python, "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr

    texts = ["What is the capital of China?", "Bananas are yellow."]
    docs = ["The capital of China is Beijing.", "Bananas are yellow."]
    code = (
        "import json, sys, importlib.util as u\n"
        "assert all(u.find_spec(m) is None for m in ('torch', 'transformers', 'onnx', 'optimum')), 'not torch-free'\n"
        "from qconv import Embedder, Reranker\n"
        f"e = Embedder({str(qwen3_artifact)!r}).encode({texts!r})\n"
        f"r = Reranker({str(seqcls_artifact)!r}).score('what is the capital of china?', {docs!r})\n"
        "print(json.dumps([e.tolist(), r.tolist()]))\n"
    )
    run = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    import json

    embeddings, scores = json.loads(run.stdout)
    assert np.abs(np.array(embeddings) - Embedder(qwen3_artifact).encode(texts)).max() <= 1e-5
    assert (
        np.abs(np.array(scores) - Reranker(seqcls_artifact).score("what is the capital of china?", docs)).max() <= 1e-5
    )

    cli = tmp_path / "venv" / "bin" / "qconv"
    info = subprocess.run([cli, "--help"], capture_output=True, text=True, timeout=120)
    assert info.returncode == 0, info.stderr
    export = subprocess.run(
        [cli, "export", "embedding", "--model", str(tiny_qwen3), "--output", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert export.returncode == 2, export.stderr
    assert export.stderr.count("\n") == 1 and "qconv[convert]" in export.stderr, export.stderr
    assert not (tmp_path / "out").exists()
