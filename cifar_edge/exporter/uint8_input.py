"""Give a float-input ONNX classifier a uint8 pixel input, preprocessing inside the graph.

For the int8 (QDQ) model the preprocessing can vanish altogether: when
x = pixel * scale + offset with one scale for all channels and
-offset/scale a whole number in 0..255, the first QuantizeLinear re-set to
(scale, -offset/scale) maps every pixel to itself.  The uint8 pixels then
*are* the quantized input tensor and the Cast/Mul/Add/QuantizeLinear chain
is deleted.  Otherwise a Cast -> Mul -> Add prefix does the scaling.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from cifar_edge.runtime.manifest import INPUT_NAME, Preprocessing


_LAYOUT_OPS = {"Transpose", "Reshape", "Identity"}


def _initializers(proto: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    return {init.name: init for init in proto.graph.initializer}


def _set_input_uint8(proto: onnx.ModelProto) -> None:
    proto.graph.input[0].type.tensor_type.elem_type = TensorProto.UINT8


def fuse_into_quantize(proto: onnx.ModelProto, preprocessing: Preprocessing) -> bool:
    """Delete the input QuantizeLinear of a QDQ model (see module doc); False if not applicable."""
    scale = preprocessing.scale[0]
    if any(s != scale for s in preprocessing.scale) or len(set(preprocessing.offset)) != 1 or scale <= 0:
        return False
    zero_point = -preprocessing.offset[0] / scale
    if abs(zero_point - round(zero_point)) > 1e-6 or not 0 <= round(zero_point) <= 255:
        return False
    graph = proto.graph
    # The quantizer may put layout-only ops (tf2onnx's NHWC->NCHW Transpose) before the
    # first QuantizeLinear; they work on uint8 just as well.
    layout = [n for n in graph.node if INPUT_NAME in n.input]
    if len(layout) == 1 and layout[0].op_type in _LAYOUT_OPS:
        source = layout[0].output[0]
    else:
        layout, source = [], INPUT_NAME
    consumers = [n for n in graph.node if source in n.input]
    if not consumers or any(n.op_type != "QuantizeLinear" for n in consumers):
        return False
    inits = _initializers(proto)
    for q in consumers:
        if len(q.input) < 3 or q.input[1] not in inits or q.input[2] not in inits:
            return False
        if inits[q.input[2]].data_type != TensorProto.UINT8:
            return False
    for q in consumers:
        quantized = q.output[0]
        dequantizers = [n for n in graph.node if quantized in n.input]
        for name in {q.input[1], q.input[2]} | {i for d in dequantizers for i in d.input[1:3]}:
            init = inits[name]
            if init.data_type == TensorProto.UINT8:
                value = np.full(numpy_helper.to_array(init).shape, round(zero_point), dtype=np.uint8)
            else:
                value = np.full(numpy_helper.to_array(init).shape, scale, dtype=np.float32)
            init.CopyFrom(numpy_helper.from_array(value, name))
        for node in graph.node:
            for i, name in enumerate(node.input):
                if name == quantized:
                    node.input[i] = source
        graph.node.remove(q)
    for value in graph.value_info:  # the layout op's output is uint8 now
        if value.name == source and source != INPUT_NAME:
            value.type.tensor_type.elem_type = TensorProto.UINT8
    _set_input_uint8(proto)
    onnx.checker.check_model(proto)
    return True


def prepend_scaling(proto: onnx.ModelProto, preprocessing: Preprocessing) -> None:
    """Feed uint8 pixels through Cast -> Mul(scale) -> Add(offset) into the float graph."""
    graph = proto.graph
    scaled = f"{INPUT_NAME}__float"
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == INPUT_NAME:
                node.input[i] = scaled
    graph.initializer.extend([
        numpy_helper.from_array(np.asarray(preprocessing.scale, dtype=np.float32), f"{INPUT_NAME}__scale"),
        numpy_helper.from_array(np.asarray(preprocessing.offset, dtype=np.float32), f"{INPUT_NAME}__offset"),
    ])
    prefix = [
        helper.make_node("Cast", [INPUT_NAME], [f"{INPUT_NAME}__cast"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [f"{INPUT_NAME}__cast", f"{INPUT_NAME}__scale"], [f"{INPUT_NAME}__mul"]),
        helper.make_node("Add", [f"{INPUT_NAME}__mul", f"{INPUT_NAME}__offset"], [scaled]),
    ]
    for node in reversed(prefix):
        graph.node.insert(0, node)
    _set_input_uint8(proto)
    onnx.checker.check_model(proto)


def to_uint8_input(proto: onnx.ModelProto, preprocessing: Preprocessing) -> str:
    """Convert in place; returns how: 'fused into the input quantization' or 'Cast/Mul/Add prefix'."""
    if fuse_into_quantize(proto, preprocessing):
        return "fused into the input quantization"
    prepend_scaling(proto, preprocessing)
    return "Cast/Mul/Add prefix"
