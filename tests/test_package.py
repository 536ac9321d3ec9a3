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
        "import sys, qconv, qconv.runtime, qconv.reranking, qconv.cli; print('torch' in sys.modules)", tmp_path
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
