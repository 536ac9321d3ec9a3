"""True-shape Qwen3-0.6B (random weights): the >2 GB path uses external data on its own."""

import numpy as np
import pytest
from qconv.convert.export import export_embedding

from qconv.artifact import Artifact
from qconv.runtime import Embedder
from qconv.testmodels import Qwen3Shape, create_qwen3_embedding

QWEN3_0_6B = Qwen3Shape(
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    max_position_embeddings=40960,
)


@pytest.mark.slow
def test_qwen3_0_6b_export_uses_external_data_automatically(tmp_path):
    source = create_qwen3_embedding(tmp_path / "qwen3-0.6b-random", shape=QWEN3_0_6B)
    result = export_embedding(str(source), tmp_path / "artifact")
    art = Artifact(result.path)
    assert art.manifest["variants"]["model"]["external_data"] is True
    assert (result.path / "onnx" / "model.onnx_data").stat().st_size > 2_000_000_000
    assert result.parity["passed"] and result.parity["cosine_min"] >= 0.99999
    vectors = Embedder(art).encode(["hello", "a longer sentence with more tokens in it"])
    assert np.isfinite(vectors).all() and vectors.shape == (2, 1024)
