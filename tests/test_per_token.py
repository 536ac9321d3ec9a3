"""Per-token activation quantization (convert/per_token.py) on a two-MatMul graph quantized by quantize_dynamic."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from qconv.convert.per_token import per_token_activations  # noqa: E402

K, N = 64, 48
# What every supported onnxruntime loads (onnx 1.23 writes IR 14 by default, which onnxruntime 1.31 refuses).
IR_VERSION = 9


def _float_model(rng):
    w1 = numpy_helper.from_array(rng.standard_normal((K, N)).astype(np.float32) * 0.1, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((K, N)).astype(np.float32) * 0.1, "w2")
    graph = helper.make_graph(
        [
            # two MatMuls read one input: quantize_dynamic shares its DynamicQuantizeLinear (like q/k/v)
            helper.make_node("MatMul", ["x", "w1"], ["a"], name="mm1"),
            helper.make_node("MatMul", ["x", "w2"], ["b"], name="mm2"),
            helper.make_node("Add", ["a", "b"], ["y"], name="add"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", N])],
        [w1, w2],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=IR_VERSION), w1, w2


def _quantized(tmp_path, rng):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model, w1, w2 = _float_model(rng)
    onnx.save(model, tmp_path / "f.onnx")
    # reduce_range: 7-bit weights, as qconv's avx2 preset (u8 x s8 pairs saturate int16 without VNNI)
    quantize_dynamic(
        str(tmp_path / "f.onnx"),
        str(tmp_path / "q.onnx"),
        per_channel=True,
        reduce_range=True,
        weight_type=QuantType.QInt8,
    )
    return onnx.load(tmp_path / "q.onnx"), numpy_helper.to_array(w1), numpy_helper.to_array(w2)


def _dequantized_weight(model, name):
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return inits[f"{name}_quantized"].astype(np.float32) * inits[f"{name}_scale"]


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_rows_are_quantized_alone_and_match_a_per_row_reference(tmp_path):
    rng = np.random.default_rng(0)
    model, w1, w2 = _quantized(tmp_path, rng)
    assert per_token_activations(model) == 1  # one shared input, one rewrite
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert "DynamicQuantizeLinear" not in ops and "MatMulInteger" not in ops and "Cast" not in ops
    # the epilogue fused: each MatMul is one MatMulIntegerToFloat (weight scale inside) and one Mul by the row scale
    assert ops.count("MatMulIntegerToFloat") == 2 and ops.count("Mul") == 2

    x = rng.standard_normal((2, 5, K)).astype(np.float32)
    x[0, 0, :2] = 1e4  # one massive token: the per-tensor step would be ~80
    got = _run(model, x)

    # numpy reference: per-row symmetric activations times the quantizer's own int8 weights
    step = np.abs(x).max(axis=-1, keepdims=True) / 127
    xq = np.round(x / step) * step
    want = xq @ _dequantized_weight(model, "w1") + xq @ _dequantized_weight(model, "w2")
    exact = x @ w1 + x @ w2
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max(axis=-1, keepdims=True).max())
    # the ordinary tokens keep their accuracy next to the massive one
    ordinary = (slice(None), slice(1, None))
    err = np.abs(got[ordinary] - exact[ordinary]).max() / np.abs(exact[ordinary]).max()
    assert err < 0.05


def test_a_row_does_not_depend_on_its_batch(tmp_path):
    rng = np.random.default_rng(1)
    model, *_ = _quantized(tmp_path, rng)
    per_tensor = onnx.load(tmp_path / "q.onnx")
    per_token_activations(model)
    text = rng.standard_normal((1, 4, K)).astype(np.float32)
    loud = rng.standard_normal((1, 4, K)).astype(np.float32)
    loud[0, 0, 3] = 5e3
    batch = np.concatenate([text, loud])
    assert np.array_equal(_run(model, text)[0], _run(model, batch)[0])
    # the per-tensor graph is what this fixes: there the loud neighbour changes the text's output
    assert not np.allclose(_run(per_tensor, text)[0], _run(per_tensor, batch)[0], rtol=1e-2, atol=1e-2)


def test_zero_rows_stay_zero_and_a_foreign_graph_is_refused(tmp_path):
    rng = np.random.default_rng(2)
    model, *_ = _quantized(tmp_path, rng)
    per_token_activations(model)
    out = _run(model, np.zeros((1, 3, K), dtype=np.float32))
    assert np.isfinite(out).all() and not out.any()

    # a DynamicQuantizeLinear whose scale feeds something other than quantize_dynamic's Mul is not rewritten
    graph = helper.make_graph(
        [helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "s", "z"], name="dql")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, K])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [])],
    )
    foreign = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=IR_VERSION)
    before = foreign.SerializeToString()
    with pytest.raises(ValueError, match="not read by"):
        per_token_activations(foreign)
    assert foreign.SerializeToString() == before
