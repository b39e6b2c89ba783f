"""TensorFlow Lite fp32 and int8 models as a baseline for `bench` (benchmark side only).

Built from the same Keras model with TF's own converter; the int8 model is
full-integer and calibrated on the same images as our ONNX int8 export.
Run with TF's interpreter, which applies XNNPACK by default.  Never
imported by the runtime.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cifar_edge.runtime.files import write_bytes


def convert(model, calibration_inputs: np.ndarray | None, add_softmax: bool = False) -> bytes:
    """The Keras model as a .tflite flatbuffer; full-integer int8 when `calibration_inputs` are given.

    Goes through a SavedModel (Keras 3's `model.export`): converting a
    tf.function directly leaves resource-variable reads that the int8
    calibrator cannot run.
    """
    import keras
    import tensorflow as tf

    if add_softmax:
        model = keras.Sequential([model, keras.layers.Softmax()])
    with tempfile.TemporaryDirectory(prefix="cifar-edge-tflite-") as tmp:
        model.export(tmp, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        if calibration_inputs is not None:
            def representative():
                for x in calibration_inputs:
                    yield [x[None].astype(np.float32)]

            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        return converter.convert()


class TFLiteModel:
    """A TFLite interpreter with float32 in/out, resizable batch."""

    def __init__(self, content: bytes, threads: int) -> None:
        import tensorflow as tf

        self.interpreter = tf.lite.Interpreter(model_content=content, num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.batch = 1

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if len(x) != self.batch:
            self.interpreter.resize_tensor_input(self.input, [len(x), 32, 32, 3])
            self.interpreter.allocate_tensors()
            self.batch = len(x)
        self.interpreter.set_tensor(self.input, x)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output)


def build(model, calibration_inputs: np.ndarray, out_dir: Path, add_softmax: bool = False
          ) -> dict[str, Path]:
    """Write model.fp32.tflite and model.int8.tflite into `out_dir`."""
    paths = {"fp32": out_dir / "model.fp32.tflite", "int8": out_dir / "model.int8.tflite"}
    write_bytes(paths["fp32"], convert(model, None, add_softmax))
    write_bytes(paths["int8"], convert(model, calibration_inputs, add_softmax))
    return paths


def predictor(path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    return TFLiteModel(path.read_bytes(), threads)
