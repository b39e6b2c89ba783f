"""Static int8 quantization with onnxruntime.quantization (QDQ, per-channel s8 weights).

Dynamic quantization leaves convolutions in float, so only static is offered.

Weights use 7 of their 8 bits by default (`reduce_range`).  x86 CPUs without
VNNI (AVX2, and AVX-512 before VNNI) multiply u8 activations by s8 weights
with VPMADDUBSW, whose 16-bit pair sums saturate on full-range weights: on
the 2-core AVX2 reference machine the notebook CNN fell from 73.56 % (Keras)
to 71.47 % on CIFAR-10 (JPEG) test with full-range weights, and kept
73.62 % with 7-bit ones, at the same speed.  A model is exported once and
run on CPUs nobody can list in advance, so the safe range is the default.
`first_conv_8bit` keeps the first convolution's weights at 8 bits as uint8
per channel (u8u8 kernels cannot saturate).  It rescued the first `edge`
design's int8 accuracy (77.01 % -> 77.85 %, Keras 77.88 %), but the u8u8
kernel is slower on AVX2, and on both current presets 7 bits everywhere is
as accurate and faster (CIFAR-10 (JPEG) test, same calibration, interleaved
b256 timing): seed 73.61 % vs 73.45 % (Keras 73.56 %), int8/fp32 1.51x vs
1.41x at 1 thread; edge 85.71 % vs 85.79 % (Keras 85.96 %), 1.71x vs 1.37x.
So it is an option, off by default.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from cifar_edge.runtime.files import atomic_path
from cifar_edge.runtime.manifest import INPUT_NAME

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


class ArrayReader(CalibrationDataReader):
    """Feeds preprocessed calibration images in small batches."""

    def __init__(self, inputs: np.ndarray, batch_size: int = 32) -> None:
        self.batches = iter([inputs[i : i + batch_size] for i in range(0, len(inputs), batch_size)])

    def get_next(self):
        batch = next(self.batches, None)
        return None if batch is None else {INPUT_NAME: batch}


STEM_CHANNEL_MULTIPLE = 4  # onnxruntime's x86 direct int8 conv ("ConvSym") takes input channels in fours


def pad_stem_channels(proto, multiple: int = STEM_CHANNEL_MULTIPLE) -> str | None:
    """Give the first conv a channel count divisible by `multiple`, exactly; returns the new
    node's name (to keep in float), or None if the graph has no such stem.

    tf2onnx's graph starts NHWC -> Transpose -> Conv.  A float MatMul by a
    (3, 4) identity before the Transpose appends a zero channel, and the
    conv gets a zero input slice in its weights: the same function.  Why:
    onnxruntime runs an int8 conv with a channel count divisible by 4
    through its direct kernel over the whole batch at once; a 3-channel
    stem goes through im2col + GEMM one image at a time, which barely
    gains from a second thread (13.4 -> 11.8 ms per 256 images for the
    notebook CNN's first conv, against 8.5 -> 5.4 ms padded).  The MatMul
    costs 1.4-1.8 ms per 256 images.
    """
    from onnx import helper, numpy_helper

    from cifar_edge.exporter.simplify import consumers, only_consumer

    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    users = consumers(graph)
    producers = {out: node for node in graph.node for out in node.output}
    conv = next((n for n in graph.node if n.op_type == "Conv"), None)
    if conv is None or conv.input[1] not in inits or len(users.get(conv.input[1], [])) != 1:
        return None
    transpose = producers.get(conv.input[0])
    perm = [list(a.ints) for a in transpose.attribute if a.name == "perm"] if transpose is not None else []
    if transpose is None or transpose.op_type != "Transpose" or perm != [[0, 3, 1, 2]]:
        return None
    if only_consumer(users, transpose.output[0], "Conv") is not conv:
        return None  # the transposed input feeds something else too
    weight = numpy_helper.to_array(inits[conv.input[1]])
    group = next((a.i for a in conv.attribute if a.name == "group"), 1)
    channels, pad = weight.shape[1], -weight.shape[1] % multiple
    if group != 1 or weight.ndim != 4 or pad == 0 or weight.shape[0] % 8 or weight.shape[0] < 16:
        return None  # nothing to gain: already aligned, or the direct kernel would not take it anyway
    padded = np.concatenate([weight, np.zeros((weight.shape[0], pad, *weight.shape[2:]), weight.dtype)], axis=1)
    inits[conv.input[1]].CopyFrom(numpy_helper.from_array(padded, conv.input[1]))
    eye = f"{conv.name}__stem_pad_eye"
    graph.initializer.append(numpy_helper.from_array(np.eye(channels, channels + pad, dtype=np.float32), eye))
    name = f"{conv.name}__stem_pad"
    widened = f"{transpose.input[0]}__stem_pad"
    graph.node.insert(list(graph.node).index(transpose),
                      helper.make_node("MatMul", [transpose.input[0], eye], [widened], name=name))
    transpose.input[0] = widened
    for value in list(graph.value_info):  # the transpose's output has a new channel count
        if value.name == transpose.output[0]:
            graph.value_info.remove(value)
    return name


def quantize_int8(fp32_path: Path, int8_path: Path, calibration_inputs: np.ndarray,
                  method: str = "minmax", reduce_range: bool = True, first_conv_8bit: bool = False,
                  pad_stem: bool = True) -> dict:
    """Write the static QDQ int8 model for `fp32_path`; returns its settings for the manifest."""
    import onnx

    settings = {
        "format": "QDQ",
        "activations": "uint8 (asymmetric, per-tensor)",
        "weights": "int8 (symmetric, per-channel" + (", 7-bit range)" if reduce_range else ")"),
        "reduce_range": reduce_range,
        "calibration": method,
        "calibration_images": int(len(calibration_inputs)),
    }
    with tempfile.TemporaryDirectory(prefix="cifar-edge-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        float_nodes = []
        if pad_stem and not first_conv_8bit:  # u8 weights never take the direct kernel
            proto = onnx.load(str(fp32_path))
            stem = pad_stem_channels(proto)
            if stem:
                float_nodes.append(stem)
                settings["stem"] = (f"input channels padded to a multiple of {STEM_CHANNEL_MULTIPLE} "
                                    "(a float identity MatMul; the function is unchanged)")
                fp32_path = Path(tmp) / "stem-padded.onnx"
                onnx.save(proto, str(fp32_path))
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
        overrides = {}
        first = first_conv_weight(prepared) if reduce_range and first_conv_8bit else None
        if first:
            overrides[first] = [{"quant_type": QuantType.QUInt8, "reduce_range": False, "axis": 0}]
            settings["weights"] += "; the first convolution's: uint8 (per-channel, 8-bit)"
        with atomic_path(int8_path) as out:
            quantize_static(
                str(prepared),
                str(out),
                ArrayReader(calibration_inputs),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CALIBRATION_METHODS[method],
                nodes_to_exclude=float_nodes or None,
                extra_options={"TensorQuantOverrides": overrides} if overrides else None,
            )
    return settings


def first_conv_weight(model_path: Path) -> str | None:
    """Name of the weight initializer of the first Conv in graph order, if it has one."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Conv" and len(node.input) > 1 and node.input[1] in initializers:
            return node.input[1]
    return None
