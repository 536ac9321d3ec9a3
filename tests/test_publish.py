"""qconv card and qconv publish: card metadata and snippets, clean copies, dry runs, refusals, Hub upload."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from qconv.artifact import Artifact
from qconv.hub.card import parse_card_metadata, recommended_variant, render_model_card, write_model_card
from qconv.hub.publish import QUANTIZED_ALIAS, publishable_files
from qconv.validate.datasets import dataset_spec

TOKEN = "hf_qconvTestTokenDoNotLeak1234567890"
# Files that must never be published, planted in the artifact before publishing.
JUNK = [
    ".cache/reference/junk.npy",
    "onnx/.quantize-abc123/staged.onnx",
    "reports/draft.md.tmp",
    "__pycache__/x.cpython-310.pyc",
    "tokenizer.json.lock",
    ".DS_Store",
]


def cosine_min(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float((np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_of(src: Path, tmp_path: Path) -> Path:
    target = tmp_path / src.name
    shutil.copytree(src, target, ignore=shutil.ignore_patterns(".cache"))
    return target


@pytest.fixture(scope="module")
def validated_embedding(qwen3_artifact, tmp_path_factory):
    """The tiny Qwen3 artifact with an int8 variant, both validated on a slice of the bundled STS12 (random
    weights move int8's Spearman on 40 pairs by about 0.015: the int8 gate is loosened, as a user may)."""
    from qconv.convert.quantize import quantize
    from qconv.validate.embedding import validate_embedding

    path = copy_of(qwen3_artifact, tmp_path_factory.mktemp("published"))
    variant, _ = quantize(path, "int8")
    assert validate_embedding(path, "sts12", limit=40, offline=True)["passed"]
    assert validate_embedding(path, "sts12", variant=variant, limit=40, offline=True, max_delta=0.05)["passed"]
    return path


@pytest.fixture(scope="module")
def validated_reranker(seqcls_artifact, tmp_path_factory):
    from qconv.validate.rerank import validate_reranker

    path = copy_of(seqcls_artifact, tmp_path_factory.mktemp("published"))
    assert validate_reranker(path, "msmarco", limit=4, max_candidates=5, offline=True)["passed"]
    return path


@pytest.fixture
def embedding(validated_embedding, tmp_path):
    return copy_of(validated_embedding, tmp_path)


@pytest.fixture
def fake_hub(monkeypatch):
    """A stand-in for huggingface_hub.HfApi that records every call and what the upload folder held."""
    import huggingface_hub

    calls: dict = {"init": [], "create_repo": [], "create_branch": [], "upload_folder": []}

    class FakeApi:
        def __init__(self, token=None, **kwargs):
            calls["init"].append(token)

        def create_repo(self, **kwargs):
            calls["create_repo"].append(kwargs)

        def create_branch(self, **kwargs):
            calls["create_branch"].append(kwargs)

        def upload_folder(self, **kwargs):
            folder = Path(kwargs["folder_path"])
            uploaded = {p.relative_to(folder).as_posix(): sha256(p) for p in folder.rglob("*") if p.is_file()}
            calls["upload_folder"].append({**kwargs, "files": uploaded, "folder": folder})
            if calls.get("fail"):
                raise RuntimeError(f"401 Unauthorized for token {TOKEN}")

            class Info:
                oid = "0123abcd"
                commit_url = "https://huggingface.co/org/tiny/commit/0123abcd"

            return Info()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    return calls


def plant_junk(path: Path) -> None:
    for rel in JUNK:
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text("junk")


def expected_files(path: Path) -> set[str]:
    """Every file of the artifact except the junk (and the cache the fixtures copy without), the card, and
    the validated INT8 graph's transformers.js name."""
    found = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    return {f for f in found if f not in JUNK and not f.startswith(".cache/")} | {"README.md", QUANTIZED_ALIAS}


def listed(output: str) -> dict[str, str]:
    """The file list a dry run prints: 'SIZE UNIT  path' lines."""
    rows = re.findall(r"^\s*([\d.]+ (?:B|kB|MB|GB))  (\S+)$", output, flags=re.M)
    return {rel: size for size, rel in rows}


def as_if_measured_on_the_hub(path: Path) -> Artifact:
    """Rewrite an artifact's record as if its validations ran on the full Hub split with real weights: the two
    facts the card reads (the numbers, the source and the reproduce commands stay those of the run)."""
    art = Artifact(path)
    art.manifest["source"].pop("weights", None)
    art.manifest["source"]["path"] = str(path / "no-such-source")  # no random-weight marker to find
    for by_dataset in art.manifest["validation"].values():
        for summary in by_dataset.values():
            summary.update(full_split=True, real_weights=True)
    art.save()
    return Artifact(path)


def test_card_model_index_only_for_full_hub_split_real_weight_runs(embedding):
    art = Artifact(embedding)
    text = write_model_card(art).read_text(encoding="utf-8")
    meta = parse_card_metadata(text)
    assert "model-index" not in meta  # a bundled sample on random weights is no STS12 result
    assert "lists 0 of these 2 results" in text and "Random weights" in text.split("## Variants")[0]
    for summary in art.manifest["validation"]["model"].values():
        assert summary["source"] == "bundled-sample" and not summary["full_split"] and not summary["real_weights"]
    validation_table = text.split("## Validation")[1]
    assert "bundled-sample" in validation_table and "40 pairs" in validation_table and "Δ [95% CI]" in validation_table
    # Only real weights on the full split qualify: either fact alone is not enough.
    art = as_if_measured_on_the_hub(embedding)
    art.manifest["validation"]["model"]["sts12"]["real_weights"] = False
    art.save()
    (result,) = parse_card_metadata(render_model_card(Artifact(embedding)))["model-index"][0]["results"]
    assert result["metrics"][0]["args"]["variant"] != "model"


def test_card_metadata_variants_and_model_index(embedding):
    art = as_if_measured_on_the_hub(embedding)
    stages = len(art.manifest["stages"])
    path = write_model_card(art)
    text = path.read_text(encoding="utf-8")
    meta = parse_card_metadata(text)
    assert yaml.safe_load(text.split("---\n")[1]) == meta
    assert meta["library_name"] == "sentence-transformers" and meta["pipeline_tag"] == "sentence-similarity"
    assert {"onnx", "qwen3", "int8", "sentence-transformers"} <= set(meta["tags"])
    assert "base_model" not in meta  # a local source is not a Hub id
    validation = art.manifest["validation"]
    results = meta["model-index"][0]["results"]
    assert len(results) == sum(len(v) for v in validation.values()) == 2
    spec = dataset_spec("sts12")
    for result in results:
        metric = result["metrics"][0]
        summary = validation[metric["args"]["variant"]]["sts12"]
        assert metric["type"] == "cos_sim_spearman" and metric["value"] == summary["candidate"]
        assert metric["args"]["delta"] == summary["delta"]
        assert metric["args"]["delta_ci95"] == summary["delta_ci"] and len(summary["delta_ci"]) == 2
        assert metric["args"]["pytorch_reference"] == summary["reference"]
        assert result["dataset"]["type"] == spec.hub_path and result["dataset"]["revision"] == spec.revision
        assert result["task"]["type"] == "sentence-similarity"
    # The card's own table shows each delta with its interval, and says when the interval contains 0.
    from qconv.validate.report import format_interval

    for summary in validation["model"].values():
        cell = format_interval(summary["delta"], summary["delta_ci"])
        low, high = summary["delta_ci"]
        assert cell + (" (contains 0)" if low <= 0 <= high else "") + " |" in text
    for variant, entry in art.variants.items():
        assert re.search(rf"^\| `{variant}` \| `{re.escape(entry['file'])}` \| [\d.]+ [kMG]?B \|", text, re.M)
    # Reproduce: the export, the quantization and both validations, as qconv command lines.
    int8 = next(v for v in art.variants if v != "model")
    preset = art.variants[int8]["options"]["preset"]
    out = f"artifacts/{embedding.name}"
    assert f"qconv export embedding --model {art.manifest['source']['model']} --output {out}" in text
    assert f"qconv quantize {out} --mode int8 --preset {preset}\n" in text
    assert f"qconv validate {out} --dataset sts12 --offline --limit 40\n" in text
    assert f"qconv validate {out} --dataset sts12 --variant {int8} --offline --limit 40 --max-delta 0.05\n" in text
    # Recorded, hashed, and idempotent.
    art = Artifact(embedding)
    assert art.manifest["stages"][-1]["stage"] == "card" and len(art.manifest["stages"]) == stages + 1
    assert art.manifest["files"]["README.md"] == sha256(path)
    write_model_card(art)
    assert len(Artifact(embedding).manifest["stages"]) == stages + 1


def test_reproduce_validate_line_from_the_stored_request_is_the_report_fields_line(
    validated_embedding, validated_reranker
):
    """A validation stores its request (summary and report); the Reproduce line prints it through the CLI's
    declaration, the same text as the line rebuilt from report fields for records written before."""
    from qconv.hub.card import _CardData
    from qconv.hub.reproduce import _validate_command

    lines = []
    for path in (validated_embedding, validated_reranker):
        art = Artifact(path)
        out = f"artifacts/{art.name}"
        stored, legacy = _CardData(art, None, None), _CardData(art, None, None)
        summaries = stored.summaries()
        assert summaries and all(s["request"] == stored.report(s)["request"] for s in summaries)
        for summary in summaries:
            old = {k: v for k, v in summary.items() if k != "request"}
            legacy._reports[summary["report"]] = {k: v for k, v in stored.report(summary).items() if k != "request"}
            line = _validate_command(stored, summary, out)
            assert line == _validate_command(legacy, old, out)
            lines.append(line)
    assert any(line.endswith("--dataset sts12 --offline --limit 40") for line in lines)
    assert any(line.endswith("--offline --limit 40 --max-delta 0.05") for line in lines)
    assert any(line.endswith("--dataset msmarco --offline --limit 4 --max-candidates 5") for line in lines)


def test_card_cli_base_model_and_repo_id(embedding, tmp_path, run_cli):
    code, out, err = run_cli("card", embedding, "--repo-id", "org/tiny", "--base-model", "Qwen/Qwen3-Embedding-0.6B")
    assert code == 0, err
    text = (embedding / "README.md").read_text()
    assert parse_card_metadata(text)["base_model"] == "Qwen/Qwen3-Embedding-0.6B"
    assert 'SentenceTransformer("org/tiny", backend="onnx"' in text
    assert 'snapshot_download("org/tiny"' in text
    settings = Artifact(embedding).manifest["card"]
    assert settings == {"model_id": "org/tiny", "base_model": "Qwen/Qwen3-Embedding-0.6B"}
    # Both are remembered: a later card (here, the one publish regenerates) keeps them.
    assert run_cli("publish", embedding, "--to", tmp_path / "copy")[0] == 0
    assert (tmp_path / "copy" / "README.md").read_text() == text


def _python_blocks(text: str) -> dict[str, str]:
    usage = text.split("## Usage")[1].split("\n## ")[0]
    blocks = {}
    for part in usage.split("### ")[1:]:
        title = part.splitlines()[0]
        match = re.search(r"```python\n(.*?)```", part, re.S)
        if match:
            blocks[title] = match.group(1)
    return blocks


def test_card_snippets_run_and_agree(validated_embedding, validated_reranker, capsys, optimum_ort):
    """The usage snippets, run as written against the local artifact, give qconv's own results."""
    from qconv import Embedder, Reranker

    art = Artifact(validated_embedding)
    text = render_model_card(art).replace(f"path/to/{art.name}", str(art.path))
    blocks = _python_blocks(text)
    assert set(blocks) == {"sentence-transformers", "optimum", "fastembed", "onnxruntime with qconv (no torch)"}
    variant = re.search(r'variant="([^"]+)"', blocks["onnxruntime with qconv (no torch)"]).group(1)
    assert art.variants[variant]["precision"] == "int8"  # the CPU variant that passed validation
    spaces = {}
    for title, code in blocks.items():
        spaces[title] = {}
        exec(compile(code, title, "exec"), spaces[title])
    embedder = Embedder(art, variant=variant)
    query = embedder.encode(["What is the capital of China?"], prompt_name="query")
    # int8 activations are quantized per batch: compare the optimum snippet's batch with the same batch.
    together = embedder.encode(spaces["optimum"]["texts"])
    assert cosine_min(spaces["sentence-transformers"]["queries"], query) >= 0.9999
    assert cosine_min(spaces["onnxruntime with qconv (no torch)"]["queries"], query) >= 0.9999
    assert cosine_min(spaces["optimum"]["embeddings"].detach().numpy(), together) >= 0.9999
    assert cosine_min(spaces["fastembed"]["embeddings"], together) >= 0.9999

    rr = Artifact(validated_reranker)
    text = render_model_card(rr).replace(f"path/to/{rr.name}", str(rr.path))
    blocks = _python_blocks(text)
    assert set(blocks) == {
        "sentence-transformers (CrossEncoder)",
        "optimum",
        "fastembed",
        "onnxruntime",
        "onnxruntime with qconv (no torch)",
    }
    spaces = {}
    for title, code in blocks.items():
        spaces[title] = {}
        exec(compile(code, title, "exec"), spaces[title])
    ns = spaces["optimum"]
    ours = Reranker(rr).score(ns["query"], ns["documents"])
    sigmoid = lambda x: 1 / (1 + np.exp(-np.asarray(x, dtype=np.float64)))  # noqa: E731
    cross = spaces["sentence-transformers (CrossEncoder)"]
    assert np.abs(np.asarray(cross["model"].predict(cross["pairs"]), dtype=np.float64) - ours).max() <= 1e-5
    custom = cross["model"].predict(cross["pairs"], processing_kwargs={"chat_template": {"instruction": "Find it"}})
    assert (
        np.abs(
            np.asarray(custom, dtype=np.float64)
            - Reranker(rr).score(ns["query"], ns["documents"], instruction="Find it")
        ).max()
        <= 1e-5
    )
    assert np.abs(sigmoid(ns["logits"].detach().numpy()) - ours).max() <= 1e-5
    assert np.abs(sigmoid(spaces["fastembed"]["logits"]) - ours).max() <= 1e-5
    assert np.abs(sigmoid(spaces["onnxruntime"]["logits"][:, 0]) - ours).max() <= 1e-5


JS_DIR = Path(__file__).parent / "js"


def _run_js_snippet(artifact: Path, tmp_path: Path) -> tuple[str, np.ndarray]:
    """The card's transformers.js snippet, run by Node on a published copy of ``artifact``."""
    import subprocess

    from qconv.hub.publish import publish_to_dir

    if not shutil.which("node") or not (JS_DIR / "node_modules" / "@huggingface" / "transformers").is_dir():
        pytest.skip("node or @huggingface/transformers is missing (npm ci --ignore-scripts --prefix tests/js)")
    # Publish a private copy: publishing records a stage, and the module's validated artifacts are shared.
    source = copy_of(artifact, tmp_path / "source")
    copy = Path(publish_to_dir(source, tmp_path / "published").destination)
    text = render_model_card(Artifact(copy)).replace(f"path/to/{copy.name}", str(copy))
    code = re.search(r"### transformers.js\n\n```js\n(.*?)```", text, re.S).group(1)
    prelude = (
        'import { env } from "@huggingface/transformers";\nenv.allowRemoteModels = false;\nenv.localModelPath = "/";\n'
    )
    script = JS_DIR / f"snippet-{tmp_path.name}.mjs"  # beside node_modules, so the import resolves
    script.write_text(prelude + re.sub(r"console\.log\((.*)\);", r"console.log(JSON.stringify(\1));", code))
    try:
        run = subprocess.run(["node", str(script)], capture_output=True, text=True, timeout=300)
    finally:
        script.unlink()
    assert run.returncode == 0, run.stderr[-2000:]
    return code, np.array(json.loads(run.stdout.strip().splitlines()[-1]), dtype=np.float64)


def test_card_transformers_js_snippets(validated_embedding, validated_reranker, tmp_path):
    """transformers.js (dtype q8 = the published onnx/model_quantized.onnx where there is one) gives qconv's
    embeddings, and P(yes) from the exact reranker text."""
    from qconv import Embedder, Reranker

    code, got = _run_js_snippet(validated_embedding, tmp_path / "embedding")
    assert 'dtype: "q8"' in code
    texts = json.loads("[" + re.search(r"const texts = \[(.*)\];", code).group(1) + "]")
    art = Artifact(validated_embedding)
    assert cosine_min(got, Embedder(art, variant=recommended_variant(art)).encode(texts)) >= 0.9999

    code, got = _run_js_snippet(validated_reranker, tmp_path / "reranker")
    query = json.loads(re.search(r"const query = (.*);", code).group(1))
    documents = json.loads(re.search(r"const documents = (.*);", code).group(1))
    rr = Artifact(validated_reranker)
    assert np.abs(got[:, 0] - Reranker(rr, variant=recommended_variant(rr)).score(query, documents)).max() <= 1e-5


def test_reranker_card(validated_reranker, tmp_path):
    art = Artifact(copy_of(validated_reranker, tmp_path))
    text = write_model_card(art).read_text()
    meta = parse_card_metadata(text)
    assert meta["pipeline_tag"] == "text-ranking" and meta["library_name"] == "sentence-transformers"
    assert {"onnx", "qwen3", "cross-encoder", "reranker"} <= set(meta["tags"])
    assert "model-index" not in meta  # the bundled TREC-DL sample on random weights
    art = as_if_measured_on_the_hub(art.path)
    meta = parse_card_metadata(write_model_card(art).read_text())
    (result,) = meta["model-index"][0]["results"]
    summary = art.manifest["validation"]["model"]["msmarco"]
    assert result["metrics"][0] == {
        "type": "mrr_at_10",
        "value": summary["candidate"],
        "name": "mrr@10 (onnx/model.onnx)",
        "args": {
            "variant": "model",
            "pytorch_reference": summary["reference"],
            "delta": summary["delta"],
            "delta_ci95": summary["delta_ci"],
            "passed": True,
        },
        "verified": False,
    }
    assert result["dataset"]["type"] == "zyznull/msmarco-passage-ranking" and "revision" not in result["dataset"]
    text = (art.path / "README.md").read_text()
    template = art.manifest["reranker"]["template"]
    assert template["prefix"] + template["body"] + template["suffix"] in text
    assert "qconv export reranker --model" in text and "--seq-cls" in text
    assert "--dataset msmarco --offline --limit 4 --max-candidates 5" in text


def test_publish_to_dir_writes_exactly_the_publishable_files(embedding, tmp_path, run_cli):
    plant_junk(embedding)
    out = tmp_path / "out" / "tiny-qwen3"
    code, stdout, err = run_cli("publish", embedding, "--to", out)
    assert code == 0, err
    copied = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert copied == expected_files(embedding)
    assert copied == set(publishable_files(Artifact(embedding))) | {QUANTIZED_ALIAS}
    manifest = json.loads((out / "qconv.json").read_text())
    assert set(manifest["files"]) == copied - {"qconv.json"}
    for rel, digest in manifest["files"].items():
        assert sha256(out / rel) == digest
    # transformers.js's q8 name: the recommended INT8 graph, one copy of the bytes (a hard link).
    int8 = manifest["aliases"][QUANTIZED_ALIAS]
    assert int8 == recommended_variant(Artifact(embedding)) and manifest["variants"][int8]["precision"] == "int8"
    assert (out / QUANTIZED_ALIAS).samefile(out / manifest["variants"][int8]["file"])
    config = json.loads((out / "config.json").read_text())
    assert config["transformers.js_config"] == {"dtype": "q8"}
    assert {k: v for k, v in config.items() if k != "transformers.js_config"} == json.loads(
        (embedding / "config.json").read_text()
    )
    assert parse_card_metadata((out / "README.md").read_text())["library_name"] == "sentence-transformers"
    stage = Artifact(embedding).manifest["stages"][-1]
    assert stage["stage"] == "publish" and stage["target"] == "dir" and stage["files"] == len(copied)
    assert not [p for p in out.parent.iterdir() if p.name != "tiny-qwen3"]  # no staging left behind
    # An existing copy is not replaced silently.
    code, _, err = run_cli("publish", embedding, "--to", out)
    assert code == 2 and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert run_cli("publish", embedding, "--to", out, "--overwrite")[0] == 0


def test_publish_archive(embedding, tmp_path, run_cli):
    plant_junk(embedding)
    code, _, err = run_cli("publish", embedding, "--to", tmp_path / "tiny", "--archive")
    assert code == 0, err
    with tarfile.open(tmp_path / "tiny.tar.gz") as tar:
        names = {m.name for m in tar.getmembers() if m.isfile()}
        manifest = json.load(tar.extractfile("tiny/qconv.json"))
    assert names == {f"tiny/{rel}" for rel in expected_files(embedding)}
    assert set(manifest["files"]) == {n.removeprefix("tiny/") for n in names} - {"qconv.json"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_dry_runs_list_the_same_files_and_write_nothing(embedding, tmp_path, run_cli, fake_hub, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    plant_junk(embedding)
    out = tmp_path / "out"
    code, stdout, err = run_cli("publish", embedding, "--to", out, "--dry-run")
    assert code == 0, err
    assert not out.exists()
    files = listed(stdout)
    assert set(files) == expected_files(embedding)
    assert f"{len(files)} files" in stdout
    code, hub_out, err = run_cli("publish", embedding, "--repo-id", "org/tiny", "--dry-run")
    assert code == 0, err
    assert set(listed(hub_out)) == set(files) and "https://huggingface.co/org/tiny" in hub_out
    assert not any(fake_hub[k] for k in ("init", "create_repo", "upload_folder"))
    assert Artifact(embedding).manifest["stages"][-1]["stage"] != "publish"


def test_refuses_missing_validation_unless_forced(artifact_copy, tmp_path, run_cli):
    code, _, err = run_cli("publish", artifact_copy, "--to", tmp_path / "a")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "refusing to publish" in err and "model is not validated" in err and "--force" in err
    assert not (tmp_path / "a").exists()
    code, _, err = run_cli("publish", artifact_copy, "--to", tmp_path / "a", "--force")
    assert code == 0, err
    assert (tmp_path / "a" / "onnx" / "model.onnx").is_file()


def test_refuses_failed_validation(embedding, tmp_path, run_cli):
    art = Artifact(embedding)
    int8 = next(v for v in art.variants if v != "model")
    art.manifest["validation"][int8]["sts12"]["passed"] = False
    art.save()
    code, _, err = run_cli("publish", embedding, "--repo-id", "org/tiny", "--dry-run")
    assert code == 2 and f"{int8} failed validation on sts12" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("publish", embedding, "--to", tmp_path / "b")
    assert code == 2 and "failed validation" in err


def test_refuses_files_changed_since_the_manifest(embedding, tmp_path, run_cli):
    with open(embedding / "tokenizer_config.json", "a") as fh:
        fh.write(" ")
    code, _, err = run_cli("publish", embedding, "--to", tmp_path / "out")
    assert code == 2 and "tokenizer_config.json changed" in err


def test_publish_to_hub_with_token_from_env(embedding, run_cli, fake_hub, monkeypatch, capsys):
    from qconv import __version__

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    plant_junk(embedding)
    code, out, err = run_cli("publish", embedding, "--repo-id", "org/tiny", "--revision", "dev", "--private")
    assert code == 0, err
    assert fake_hub["init"] == [TOKEN]
    assert fake_hub["create_repo"] == [{"repo_id": "org/tiny", "repo_type": "model", "private": True, "exist_ok": True}]
    assert fake_hub["create_branch"][0]["branch"] == "dev"
    (upload,) = fake_hub["upload_folder"]
    assert upload["repo_id"] == "org/tiny" and upload["revision"] == "dev"
    assert __version__ in upload["commit_message"]
    assert set(upload["files"]) == expected_files(embedding)
    assert not upload["folder"].exists()  # the staged copy is gone
    art = Artifact(embedding)
    for rel, digest in upload["files"].items():
        if rel == QUANTIZED_ALIAS:
            assert digest == art.manifest["files"][art.variants[recommended_variant(art)]["file"]]
        elif rel not in ("qconv.json", "config.json"):  # config.json gains transformers.js_config
            assert art.manifest["files"][rel] == digest
    stage = art.manifest["stages"][-1]
    assert stage["stage"] == "publish" and stage["repo_id"] == "org/tiny" and stage["commit"] == "0123abcd"
    assert 'SentenceTransformer("org/tiny"' in (embedding / "README.md").read_text()
    # The token is nowhere: not in the output, the artifact, or beside it.
    assert TOKEN not in out + err
    for path in embedding.parent.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert sorted(p.name for p in embedding.parent.iterdir()) == [embedding.name]


def test_hub_errors_are_one_line_without_the_token(embedding, run_cli, fake_hub, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    code, out, err = run_cli("publish", embedding, "--repo-id", "org/tiny")
    assert code == 2 and "HF_TOKEN is not set" in err and len(err.strip().splitlines()) == 1
    assert fake_hub["init"] == []
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    fake_hub["fail"] = True
    code, out, err = run_cli("publish", embedding, "--repo-id", "org/tiny")
    assert code == 2 and "401 Unauthorized" in err and TOKEN not in out + err and "***" in err
    assert len(err.strip().splitlines()) == 1
    assert Artifact(embedding).manifest["stages"][-1]["stage"] != "publish"


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "pass --repo-id ORG/NAME"),
        (["--repo-id", "org/x", "--to", "out"], "not both"),
        (["--repo-id", "not a repo"], "ORG/NAME"),
        (["--to", "out", "--private"], "--private applies only with --repo-id"),
        (["--repo-id", "org/x", "--archive"], "--archive applies only with --to"),
    ],
)
def test_publish_argument_errors(embedding, run_cli, args, message):
    code, _, err = run_cli("publish", embedding, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_publish_to_inside_the_artifact_is_refused(embedding, run_cli):
    code, _, err = run_cli("publish", embedding, "--to", embedding / "copy")
    assert code == 2 and "inside the artifact" in err


def test_reproduce_commands_cover_optimize_quantize_and_recipes(artifact_copy):
    from qconv.hub.reproduce import reproduce_commands

    art = Artifact(artifact_copy)
    art.variants["O2"] = {
        "file": "onnx/model_O2.onnx",
        "precision": "fp32",
        "stage": "optimize",
        "level": "O2",
        "target": "cpu",
        "from": "model",
    }
    art.variants["O4"] = {
        "file": "onnx/model_O4.onnx",
        "precision": "fp16",
        "stage": "optimize",
        "level": "O4",
        "target": "cuda",
        "from": "model",
    }
    art.variants["O2_q4"] = {
        "file": "onnx/model_O2_q4.onnx",
        "precision": "q4",
        "stage": "quantize",
        "mode": "q4",
        "from": "O2",
        "options": {
            "per_channel": True,
            "block_size": 64,
            "accuracy_level": 4,
            "quantize_embeddings": True,
            "exclude": ["model.layers.0.*"],
        },
    }
    for name in ("O2", "O4", "O2_q4"):
        art.add_stage({"stage": art.variants[name]["stage"], "variant": name})
    art.manifest["recipe"] = {"name": "qwen3-embedding-tiny-random", "file": "demo.yaml"}
    out = f"artifacts/{art.name}"
    lines = reproduce_commands(art)
    assert "qconv run recipes/demo.yaml" in lines
    assert f"qconv optimize {out} --level O2" in lines and f"qconv optimize {out} --level O4 --target cuda" in lines
    assert (
        f"qconv quantize {out} --mode q4 --from O2 --block-size 64 --accuracy-level 4 --quantize-embeddings "
        "--exclude 'model.layers.0.*'"
    ) in lines
    assert lines.index(f"qconv optimize {out} --level O2") < lines.index(next(x for x in lines if "--mode q4" in x))
    assert lines[-1] == f"qconv card {out}"
    text = render_model_card(art)
    assert re.search(r"^\| `O4` \| `onnx/model_O4.onnx` \| 0 B \| fp16 \| CUDA \| \*\*not validated\*\* \|", text, re.M)
