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


def quantize_int8(fp32_path: Path, int8_path: Path, calibration_inputs: np.ndarray,
                  method: str = "minmax", reduce_range: bool = True, first_conv_8bit: bool = False) -> dict:
    """Write the static QDQ int8 model for `fp32_path`; returns its settings for the manifest."""
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
