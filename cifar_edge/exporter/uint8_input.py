"""Give a float-input ONNX classifier a uint8 pixel input, preprocessing inside the graph.

For the int8 (QDQ) model the preprocessing can vanish altogether: when
x = pixel * scale + offset with one scale for all channels and
-offset/scale a whole number in 0..255, the first QuantizeLinear re-set to
(scale, -offset/scale) maps every pixel to itself.  The uint8 pixels then
*are* the quantized input tensor and the Cast/Mul/Add/QuantizeLinear chain
is deleted.  When the pixels first meet a float MatMul instead (the int8
model's stem padding, `quantize.pad_stem_channels`), the scaling folds into
its weights: Cast -> MatMul(diag(scale) W) [-> Add(offset W)].  Otherwise a
Cast -> Mul -> Add prefix does the scaling.
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


def fold_into_matmul(proto: onnx.ModelProto, preprocessing: Preprocessing) -> bool:
    """Cast the pixels to float and fold the scaling into the MatMul they feed (see module doc).

    (x * s + o) W = x (diag(s) W) + o W.  For the stem padding's identity W
    each output is the same float product x * s (+ o) as the host-side
    preprocessing, so the model computes exactly what it did with float input.
    False if the input feeds anything but one MatMul by a constant matrix.
    """
    graph = proto.graph
    users = [n for n in graph.node if INPUT_NAME in n.input]
    inits = _initializers(proto)
    if len(users) != 1 or users[0].op_type != "MatMul" or users[0].input[0] != INPUT_NAME:
        return False
    matmul = users[0]
    if matmul.input[1] not in inits:
        return False
    weight = numpy_helper.to_array(inits[matmul.input[1]])
    if weight.ndim != 2 or weight.shape[0] != 3 or weight.dtype != np.float32:
        return False
    scale = np.asarray(preprocessing.scale, dtype=np.float32)
    offset = np.asarray(preprocessing.offset, dtype=np.float32)
    original = matmul.input[1]
    cast, scaled_weight = f"{INPUT_NAME}__float", f"{original}__scaled"
    graph.initializer.append(numpy_helper.from_array((scale[:, None] * weight).astype(np.float32), scaled_weight))
    graph.node.insert(0, helper.make_node("Cast", [INPUT_NAME], [cast], to=TensorProto.FLOAT,
                                          name=f"{INPUT_NAME}__cast"))
    matmul.input[0], matmul.input[1] = cast, scaled_weight
    if not any(original in n.input for n in graph.node):
        graph.initializer.remove(inits[original])
    if offset.any():  # the Add takes over the MatMul's output name, so its consumers stay as they are
        product = matmul.output[0]
        matmul.output[0] = f"{product}__unshifted"
        graph.initializer.append(numpy_helper.from_array((offset @ weight).astype(np.float32), f"{product}__offset"))
        graph.node.insert(list(graph.node).index(matmul) + 1,
                          helper.make_node("Add", [matmul.output[0], f"{product}__offset"], [product]))
    _set_input_uint8(proto)
    onnx.checker.check_model(proto)
    return True


def _per_channel_or_scalar(values, name: str) -> onnx.TensorProto:
    """A (3,) constant, or a scalar when all three are equal: onnxruntime broadcasts a scalar
    quickly, a 3-vector along the innermost axis slowly (3.6 ms per op per 256 images)."""
    array = np.asarray(values, dtype=np.float32)
    return numpy_helper.from_array(array[0] if (array == array[0]).all() else array, name)


def prepend_scaling(proto: onnx.ModelProto, preprocessing: Preprocessing) -> str:
    """Feed uint8 pixels through Cast -> Mul(scale) -> Add(offset) into the float graph
    (the Mul left out for a scale of 1, the Add for an offset of 0); returns the ops, 'Cast/Mul'."""
    graph = proto.graph
    scaled = f"{INPUT_NAME}__float"
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == INPUT_NAME:
                node.input[i] = scaled
    prefix = [helper.make_node("Cast", [INPUT_NAME], [f"{INPUT_NAME}__cast"], to=TensorProto.FLOAT)]
    for op, values, identity in (("Mul", preprocessing.scale, 1), ("Add", preprocessing.offset, 0)):
        if any(v != identity for v in values):
            constant = _per_channel_or_scalar(values, f"{INPUT_NAME}__{op.lower()}_by")
            graph.initializer.append(constant)
            prefix.append(helper.make_node(op, [prefix[-1].output[0], constant.name], [f"{INPUT_NAME}__{op.lower()}"]))
    prefix[-1].output[0] = scaled
    for node in reversed(prefix):
        graph.node.insert(0, node)
    _set_input_uint8(proto)
    onnx.checker.check_model(proto)
    return "/".join(node.op_type for node in prefix)


def to_uint8_input(proto: onnx.ModelProto, preprocessing: Preprocessing) -> str:
    """Convert in place; returns how: 'fused into the input quantization', 'folded into the stem
    padding MatMul' or the prefix ops, e.g. 'Cast/Mul prefix' (no step that would do nothing)."""
    if fuse_into_quantize(proto, preprocessing):
        return "fused into the input quantization"
    if fold_into_matmul(proto, preprocessing):
        return "folded into the stem padding MatMul"
    return f"{prepend_scaling(proto, preprocessing)} prefix"
