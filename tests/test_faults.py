"""Data safety and integrity under faults, each case as a user would meet it: a real ``qconv`` process, its
exit status, one line on stderr, every pre-existing file byte-identical, no staging left behind, and the
manifest's hashes equal to the files on disk. (Bad-input cases are in ``test_faults_input.py``.)"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_recipes import SMALL  # pytest puts tests/ on sys.path (rootdir-relative, no package)

from qconv.artifact import MANIFEST, Artifact, tree_files

RUN_TIMEOUT = 600


def qconv(*args, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qconv.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, hidden ones included."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(root).rglob("*"))
        if p.is_file()
    }


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *needles: str) -> None:
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def staging_left(root: Path) -> list[Path]:
    return [p for p in Path(root).rglob("*") if ".qstage-" in p.name or ".tmp-" in p.name or ".old-" in p.name]


def assert_manifest_true(art: Path) -> None:
    """Every file of the artifact is recorded with its true hash, and nothing else is recorded."""
    manifest = json.loads((art / MANIFEST).read_text(encoding="utf-8"))
    on_disk = {rel: hashlib.sha256((art / rel).read_bytes()).hexdigest() for rel in tree_files(art)}
    assert manifest["files"] == on_disk


def copy_artifact(src: Path, parent: Path) -> Path:
    target = parent / src.name
    shutil.copytree(src, target, ignore=shutil.ignore_patterns(".cache"))
    return target


@pytest.fixture(scope="module")
def published_ready(qwen3_artifact, tmp_path_factory):
    """The tiny artifact with its fp32 graph validated on a slice of the bundled STS12 (publishable)."""
    from qconv.validate.embedding import validate_embedding

    path = copy_artifact(qwen3_artifact, tmp_path_factory.mktemp("faults"))
    assert validate_embedding(path, "sts12", limit=16, offline=True)["passed"]
    return path


# ----------------------------------------------------------------------------------------- data loss


def test_publish_overwrite_never_deletes_the_artifacts_parent_or_a_users_folder(published_ready, tmp_path):
    x = tmp_path / "x"
    art = copy_artifact(published_ready, x)
    (x / "precious.txt").write_text("notes", encoding="utf-8")
    before = snapshot(tmp_path)
    proc = qconv("publish", art, "--to", x, "--overwrite")
    assert_one_line_error(proc, 2, str(x))
    assert snapshot(tmp_path) == before

    users = tmp_path / "mine"
    users.mkdir()
    (users / "thesis.tex").write_text("years of work", encoding="utf-8")
    before = snapshot(tmp_path)
    proc = qconv("publish", art, "--to", users, "--overwrite")
    assert_one_line_error(proc, 2, "not made by qconv")
    assert snapshot(tmp_path) == before


def test_publish_overwrite_replaces_only_a_copy_qconv_published(published_ready, tmp_path):
    copy = tmp_path / "copy"
    assert qconv("publish", published_ready, "--to", copy).returncode == 0
    proc = qconv("publish", published_ready, "--to", copy, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert (copy / "onnx" / "model.onnx").is_file() and not staging_left(tmp_path)

    (copy / "my-notes.md").write_text("added by the user", encoding="utf-8")
    before = snapshot(tmp_path)
    proc = qconv("publish", published_ready, "--to", copy, "--overwrite")
    assert_one_line_error(proc, 2, "my-notes.md")
    assert snapshot(tmp_path) == before

    # An archive replaces only an archive qconv wrote.
    tarball = tmp_path / "user.tar.gz"
    tarball.write_bytes(b"the user's own archive")
    proc = qconv("publish", published_ready, "--to", tarball, "--overwrite")
    assert_one_line_error(proc, 2, "not an archive qconv published")
    assert tarball.read_bytes() == b"the user's own archive"


@pytest.mark.parametrize("where", ["source", "parent"])
def test_export_overwrite_never_deletes_the_source_model_or_its_parent(tiny_qwen3, tmp_path, where):
    models = tmp_path / "models"
    model = models / "tiny"
    shutil.copytree(tiny_qwen3, model)
    (models / "sibling.txt").write_text("another model's notes", encoding="utf-8")
    before = snapshot(tmp_path)
    output = model if where == "source" else models
    proc = qconv("export", "embedding", "--model", model, "--output", output, "--overwrite")
    assert_one_line_error(proc, 2, "which this command reads")
    assert snapshot(tmp_path) == before


def test_export_overwrite_refuses_a_folder_qconv_did_not_make(tiny_qwen3, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine", encoding="utf-8")
    before = snapshot(tmp_path)
    proc = qconv("export", "embedding", "--model", tiny_qwen3, "--output", folder, "--overwrite")
    assert_one_line_error(proc, 2, "not made by qconv")
    assert snapshot(tmp_path) == before


def test_export_overwrite_refuses_an_artifact_holding_a_users_file(tiny_qwen3, qwen3_artifact, tmp_path):
    art = copy_artifact(qwen3_artifact, tmp_path)
    (art / "onnx" / "my_finetune.onnx").write_bytes(b"not qconv's")
    before = snapshot(tmp_path)
    proc = qconv("export", "embedding", "--model", tiny_qwen3, "--output", art, "--overwrite")
    assert_one_line_error(proc, 2, "onnx/my_finetune.onnx")
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------------------- integrity


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_card_never_records_a_damaged_graph_and_publish_refuses_it(published_ready, tmp_path, damage):
    art = copy_artifact(published_ready, tmp_path)
    graph = art / "onnx" / "model.onnx"
    if damage == "truncate":
        graph.write_bytes(graph.read_bytes()[:1000])
    else:
        graph.unlink()
    recorded = json.loads((art / MANIFEST).read_text())["files"]
    proc = qconv("card", art)
    assert_one_line_error(proc, 2, "onnx/model.onnx")
    assert json.loads((art / MANIFEST).read_text())["files"] == recorded
    pub = tmp_path / "pub"
    for args in (["--to", pub], ["--to", pub, "--dry-run"], ["--repo-id", "o/n", "--dry-run"]):
        proc = qconv("publish", art, *args)
        assert_one_line_error(proc, 2, "onnx/model.onnx")
    assert not (tmp_path / "pub").exists()
    assert json.loads((art / MANIFEST).read_text())["files"] == recorded


def test_publish_dry_run_writes_nothing(published_ready, tmp_path):
    art = copy_artifact(published_ready, tmp_path)
    (art / "README.md").unlink(missing_ok=True)  # a dry run must not even write the card
    before = snapshot(tmp_path)
    for args in (["--to", tmp_path / "pub", "--dry-run"], ["--repo-id", "org/name", "--dry-run"]):
        proc = qconv("publish", art, *args)
        assert proc.returncode == 0, proc.stderr
        assert "README.md" in proc.stdout
        assert snapshot(tmp_path) == before


SMALL_RECIPE = SMALL.replace("limit: 24", "limit: 12")  # the recipe tests' small recipe, fewer pairs


@pytest.fixture
def recipe_run(tmp_path):
    from qconv.pipeline.run import RunOptions, run_recipe

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(SMALL_RECIPE, encoding="utf-8")
    options = RunOptions(offline=True, output=tmp_path / "out")
    return lambda: run_recipe(recipe, options), tmp_path / "out" / "small"


def _statuses(result: dict) -> dict[str, str]:
    return {s["step"]: s["status"] for s in result["steps"]}


def test_a_rebuilt_variant_is_revalidated_and_publishable(recipe_run, tmp_path):
    from qconv.hub.publish import check_publishable

    run, art = recipe_run
    run()
    variant = art / "onnx" / "model_fp16.onnx"
    variant.write_bytes(variant.read_bytes()[:100])
    statuses = _statuses(run())
    assert statuses["quantize:fp16"] == "ran" and statuses["validate:fp16:sts12"] == "ran"
    assert statuses["validate:model:sts12"] == "skipped"
    assert check_publishable(Artifact(art)) == []
    assert_manifest_true(art)
    proc = qconv("publish", art, "--to", tmp_path / "pub")
    assert proc.returncode == 0, proc.stderr


def test_a_junk_report_is_detected_and_made_again(recipe_run):
    run, art = recipe_run
    run()
    report = art / "reports" / "validate-fp16-sts12.json"
    report.write_text("junk", encoding="utf-8")
    statuses = _statuses(run())
    assert statuses["validate:fp16:sts12"] == "ran" and statuses["validate:model:sts12"] == "skipped"
    assert json.loads(report.read_text())["variant"] == "fp16"
    assert_manifest_true(art)


def test_stale_staging_is_cleaned_and_never_recorded(qwen3_artifact, tmp_path):
    art = copy_artifact(qwen3_artifact, tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        leftovers = [
            art / "onnx" / ".quantize-abc12345",  # an earlier qconv's name
            art / "onnx" / f".optimize.qstage-{dead.pid}-x1",
            tmp_path / f".{art.name}.tmp-zz9abc12",  # an earlier qconv's export staging
            tmp_path / f".{art.name}.qstage-{dead.pid}-old",
        ]
        for path in leftovers:
            path.mkdir()
            (path / "staged.onnx").write_bytes(b"x" * 1000)
        in_progress = art / "onnx" / f".quantize.qstage-{alive.pid}-y2"  # a concurrent writer's
        in_progress.mkdir()
        users = [tmp_path / ".notes.tmp-1", tmp_path / f".{art.name}.tmp-mine", tmp_path / ".bashrc.old-2"]
        for path in users:  # hidden names of the user's that merely look like staging: never touched
            path.write_text("mine", encoding="utf-8")
        proc = qconv("quantize", art, "--mode", "fp16")
        assert proc.returncode == 0, proc.stderr
        assert not any(p.exists() for p in leftovers)
        assert in_progress.is_dir() and all(p.read_text() == "mine" for p in users)
        recorded = json.loads((art / MANIFEST).read_text())["files"]
        assert not [rel for rel in recorded if "qstage" in rel or "/." in rel or rel.startswith(".")]
        shutil.rmtree(in_progress)
        assert_manifest_true(art)
    finally:
        alive.kill()
        alive.wait()


def test_validate_failing_while_writing_keeps_old_reports_and_manifest(published_ready, tmp_path, monkeypatch):
    """The manifest write fails (as on a full disk) after the new reports were written: all is rolled back."""
    import errno

    from qconv import artifact as artifact_module
    from qconv.validate.embedding import validate_embedding

    art = copy_artifact(published_ready, tmp_path)
    before = snapshot(art)
    real = artifact_module.write_json_atomic

    def full_disk(path, data):
        if Path(path).name == MANIFEST:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, data)

    monkeypatch.setattr(artifact_module, "write_json_atomic", full_disk)
    with pytest.raises(OSError):
        validate_embedding(art, "sts12", limit=8, offline=True)
    after = {k: v for k, v in snapshot(art).items() if not k.startswith(".cache/")}
    assert after == {k: v for k, v in before.items() if not k.startswith(".cache/")}
    assert not staging_left(art)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="needs root to mount a small tmpfs")
def test_validate_on_a_really_full_disk(published_ready, tmp_path):
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    size_kb = sum(p.stat().st_size for p in published_ready.rglob("*") if p.is_file()) // 1024 + 4096
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("tmpfs cannot be mounted here")
    try:
        art = copy_artifact(published_ready, mnt)
        filler = mnt / "filler"
        with open(filler, "wb", buffering=0) as fh:  # fill the disk to the last block
            try:
                while True:
                    fh.write(b"\0" * 4096)
                    fh.flush()
            except OSError:
                pass
        before = snapshot(art)
        proc = qconv("validate", art, "--dataset", "sts12", "--limit", "8", "--offline")
        assert_one_line_error(proc, 2, "No space left")
        after = {k: v for k, v in snapshot(art).items() if not k.startswith(".cache/")}
        assert after == {k: v for k, v in before.items() if not k.startswith(".cache/")}
        assert not staging_left(art)
        assert_manifest_true(art)
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--validate", "nosuch"], "nosuch"),
        (["--validate", "sts12", "--limit", "-5"], "--limit"),
        (["--validate", "msmarco", "--overwrite"], "msmarco"),
    ],
    ids=["dataset", "limit", "task"],
)
def test_quantize_checks_every_argument_before_writing(qwen3_artifact, tmp_path, args, needle):
    art = copy_artifact(qwen3_artifact, tmp_path)
    assert qconv("quantize", art, "--mode", "fp16").returncode == 0  # an existing variant --overwrite would replace
    before = snapshot(art)
    proc = qconv("quantize", art, "--mode", "fp16", *args)
    assert_one_line_error(proc, 2, needle)
    assert snapshot(art) == before


# ------------------------------------------------------------------------------------ kill -9, then rerun


def _kill_when(cmd: list[str], ready, timeout: float = 400) -> None:
    """Start ``cmd``, SIGKILL it as soon as ``ready()`` holds (or when it ends by itself)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if ready():
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _staging_in(directory: Path):
    return lambda: any(".qstage-" in p.name for p in directory.glob(".*"))


@pytest.mark.parametrize("command", ["quantize", "optimize"])
def test_kill_9_mid_write_then_rerun(qwen3_artifact, tmp_path, command):
    art = copy_artifact(qwen3_artifact, tmp_path)
    before = snapshot(art)
    args = ["--mode", "fp16"] if command == "quantize" else ["--level", "O2"]
    cmd = [sys.executable, "-m", "qconv.cli", command, str(art), *args]
    _kill_when(cmd, _staging_in(art / "onnx"))
    manifest = json.loads((art / MANIFEST).read_text())
    assert manifest["files"] == {k: v for k, v in before.items() if k in manifest["files"]}
    assert_manifest_true_except_staging(art)
    proc = qconv(command, art, *args)
    assert proc.returncode == 0, proc.stderr
    assert not staging_left(art)
    assert_manifest_true(art)


def assert_manifest_true_except_staging(art: Path) -> None:
    """After a kill: what the manifest records is still true (staging is never recorded)."""
    manifest = json.loads((art / MANIFEST).read_text(encoding="utf-8"))
    for rel, digest in manifest["files"].items():
        assert hashlib.sha256((art / rel).read_bytes()).hexdigest() == digest, rel


def test_kill_9_during_qconv_run_then_rerun(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(SMALL_RECIPE, encoding="utf-8")
    out = tmp_path / "out"
    art = out / "small"
    cmd = [sys.executable, "-m", "qconv.cli", "run", str(recipe), "--offline", "--output", str(out)]

    def export_done_and_quantizing() -> bool:
        return (art / MANIFEST).is_file() and _staging_in(art / "onnx")()

    def validating() -> bool:
        return (art / "reports").is_dir() and any(".qstage-" in p.name for p in (art / "reports").glob(".*"))

    for ready in (_staging_in(out), export_done_and_quantizing, validating):
        _kill_when(cmd, ready)
        if (art / MANIFEST).is_file():
            assert_manifest_true_except_staging(art)
    proc = qconv("run", recipe, "--offline", "--output", out)
    assert proc.returncode == 0, proc.stderr
    assert not staging_left(out)
    assert_manifest_true(art)
    from qconv.pipeline.run import RunOptions, run_recipe

    again = run_recipe(recipe, RunOptions(offline=True, output=out))
    assert set(_statuses(again).values()) == {"skipped"}
