"""ModelProto copies and saves that cost memory once, not per use.

Python protobuf (upb) allocates a message tree in one arena: bytes replaced inside it stay allocated until the
whole tree is freed. ``onnx.save_model(..., save_as_external_data=True)`` moves the weights out of the
in-memory model, and reloading them allocates them again, so a model saved N times holds N copies of its
weights (the recovery ladder saves the same 0.6B model a dozen times: 2.4 GB each, and the 24 GB host ran
out). Here a save streams each tensor's bytes to the data file and writes a weightless copy of the graph;
the caller's model is never touched. A copy with new weights is built tensor by tensor instead of copying
the old weights and overwriting them.
"""

from __future__ import annotations

from pathlib import Path

# onnx's own default: smaller tensors stay inside the .onnx file.
EXTERNAL_SIZE_THRESHOLD = 1024


def copy_fields(src, dst, skip: frozenset[str] = frozenset()) -> None:
    """Copy every set field of protobuf message ``src`` into ``dst`` except those named in ``skip``."""
    for field, value in src.ListFields():
        if field.name in skip:
            continue
        if _repeated(field):
            getattr(dst, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(dst, field.name).CopyFrom(value)
        else:
            setattr(dst, field.name, value)


def _repeated(field) -> bool:
    # protobuf >= 6 has is_repeated; 7 dropped the older label
    return field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED


def model_without_initializers(model):
    """A copy of ``model`` whose graph has every field but its initializers (nodes, inputs, outputs, metadata)."""
    import onnx

    copy = onnx.ModelProto()
    copy_fields(model, copy, skip=frozenset({"graph"}))
    copy_fields(model.graph, copy.graph, skip=frozenset({"initializer"}))
    return copy


def with_initializers(model, replaced: dict):
    """A copy of ``model`` where the initializers named in ``replaced`` (name -> TensorProto) are swapped in,
    in their original order; each tensor is copied once and the replaced ones not at all."""
    copy = model_without_initializers(model)
    for tensor in model.graph.initializer:
        copy.graph.initializer.append(replaced.get(tensor.name, tensor))
    return copy


def save_with_external_data(model, path: Path, data_name: str, extra_outputs: tuple[str, ...] = ()) -> None:
    """Write ``model`` to ``path`` with every raw tensor of at least 1 KiB in ``path.parent / data_name``,
    the way ``onnx.save_model(save_as_external_data=True, all_tensors_to_one_file=True)`` lays it out,
    without modifying ``model``. ``extra_outputs``: intermediate values to expose as graph outputs (fp32)."""
    import onnx

    path = Path(path)
    light = model_without_initializers(model)
    known = {o.name for o in light.graph.output}
    for name in extra_outputs:
        if name not in known:
            light.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
            known.add(name)
    offset = 0
    with open(path.parent / data_name, "wb") as data:
        for tensor in model.graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                raise ValueError(f"initializer '{tensor.name}' is not loaded (external data); load it before saving")
            out = light.graph.initializer.add()
            if not tensor.HasField("raw_data") or len(tensor.raw_data) < EXTERNAL_SIZE_THRESHOLD:
                out.CopyFrom(tensor)
                continue
            copy_fields(tensor, out, skip=frozenset({"raw_data", "data_location", "external_data"}))
            raw = tensor.raw_data
            data.write(raw)
            out.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(len(raw)))):
                entry = out.external_data.add()
                entry.key, entry.value = key, value
            offset += len(raw)
            del raw
    if not offset:  # no tensor went external: leave no empty data file for the artifact to carry
        (path.parent / data_name).unlink()
    onnx.save_model(light, str(path))
