"""Saving a model with external data leaves the in-memory model as it was, and reads back the same."""

import numpy as np
import onnx
from onnx import helper, numpy_helper

from qconv.convert.onnx_proto import model_without_initializers, save_with_external_data, with_initializers
from qconv.convert.variants import save_model, save_probe


def _model():
    rng = np.random.default_rng(0)
    big = numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "w")
    small = numpy_helper.from_array(np.ones(4, np.float32), "b")  # under 1 KiB: stays inside the .onnx
    ints = helper.make_tensor("shape", onnx.TensorProto.INT64, [2], [2, 16])  # int64_data, not raw_data
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Reshape", ["h", "shape"], ["y"], name="reshape"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 16])],
        [big, small, ints],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    model.metadata_props.add(key="k", value="v")
    return model


def test_save_leaves_the_model_untouched_and_reads_back_the_same(tmp_path):
    model = _model()
    before = model.SerializeToString()
    save_model(model, tmp_path / "m.onnx", external=True)
    assert model.SerializeToString() == before
    graph_only = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    external = [t.name for t in graph_only.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external == ["w"]
    assert (tmp_path / "m.onnx_data").stat().st_size == 64 * 32 * 4
    loaded = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(loaded)
    for want, got in zip(model.graph.initializer, loaded.graph.initializer):
        assert want.name == got.name
        np.testing.assert_array_equal(numpy_helper.to_array(want), numpy_helper.to_array(got))
    assert [(p.key, p.value) for p in loaded.metadata_props] == [("k", "v")]
    assert [n.name for n in loaded.graph.node] == ["mm", "reshape"]


def test_probe_exposes_intermediate_values_without_changing_the_model(tmp_path):
    import onnxruntime as ort

    model = _model()
    outputs = len(model.graph.output)
    save_probe(model, ["h"], tmp_path / "probe.onnx")
    assert len(model.graph.output) == outputs
    session = ort.InferenceSession(str(tmp_path / "probe.onnx"), providers=["CPUExecutionProvider"])
    x = np.ones((1, 64), np.float32)
    h, y = session.run(["h", "y"], {"x": x})
    w = numpy_helper.to_array(model.graph.initializer[0])
    np.testing.assert_allclose(h, x @ w, rtol=1e-5)
    np.testing.assert_allclose(y, (x @ w).reshape(2, 16), rtol=1e-5)


def test_with_initializers_swaps_only_the_named_tensors_in_order():
    model = _model()
    new = numpy_helper.from_array(np.zeros((64, 32), np.float32), "w")
    copy = with_initializers(model, {"w": new})
    assert [t.name for t in copy.graph.initializer] == ["w", "b", "shape"]
    assert not numpy_helper.to_array(copy.graph.initializer[0]).any()
    assert numpy_helper.to_array(model.graph.initializer[0]).any()
    empty = model_without_initializers(model)
    assert not empty.graph.initializer and len(empty.graph.node) == 2 and empty.opset_import[0].version == 18


def test_unloaded_external_tensor_is_refused(tmp_path):
    import pytest

    model = _model()
    save_with_external_data(model, tmp_path / "m.onnx", "m.onnx_data")
    lazy = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    with pytest.raises(ValueError, match="not loaded"):
        save_with_external_data(lazy, tmp_path / "again.onnx", "again.onnx_data")


def test_no_data_file_when_no_tensor_goes_external(tmp_path):
    rng = np.random.default_rng(0)
    small = numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w")  # 64 bytes
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
        [small],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    save_with_external_data(model, tmp_path / "m.onnx", "m.onnx_data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")))
