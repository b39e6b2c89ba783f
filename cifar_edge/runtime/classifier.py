"""An onnxruntime CPU session wrapped with the manifest's preprocessing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from cifar_edge.errors import BadInputError
from cifar_edge.runtime.manifest import IMAGE_SIZE, Manifest



def make_session(model_path: str | os.PathLike[str], threads: int | None = None,
                 precise_int8: bool = False) -> ort.InferenceSession:
    """Open an ONNX model on the CPU, with a one-line error for a bad file.

    `precise_int8` sets onnxruntime's `session.x64quantprecision`: on x86
    CPUs without VNNI it runs int8 weights through the slower u8u8 kernels
    instead of the u8s8 ones that saturate on full-range weights (a no-op
    elsewhere).  Models exported with 7-bit weights (the default) need it not.
    """
    path = Path(model_path)
    if not path.is_file():
        raise BadInputError(f"model not found: {path}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if precise_int8:
        options.add_session_config_entry("session.x64quantprecision", "1")
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's pybind errors (InvalidProtobuf, Fail, ...) share no base
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInputError(f"{path} is not a loadable ONNX model: {first_line[:200]}") from None


class Classifier:
    """Runs an exported CIFAR-style classifier on uint8 RGB pixels.

    >>> clf = Classifier("runs/seed/model.int8.onnx")
    >>> probs = clf.predict(pixels)          # (N, 32, 32, 3) uint8 -> (N, classes)
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        manifest: Manifest | None = None,
        threads: int | None = None,
    ) -> None:
        self.path = Path(model_path)
        if not self.path.is_file():  # before looking for its manifest: the missing model is the news
            raise BadInputError(f"model not found: {self.path}")
        self.manifest = manifest or Manifest.for_model(self.path)
        self.session = make_session(self.path, threads, precise_int8=self.manifest.full_range_int8(self.path))
        self.class_names = self.manifest.class_names
        self.preprocessing = self.manifest.preprocessing
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise BadInputError(f"{self.path}: expected one image input, got {len(inputs)} inputs")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        self.input_type = inputs[0].type
        shape = list(inputs[0].shape)
        if len(shape) != 4 or shape[1:] != [IMAGE_SIZE, IMAGE_SIZE, 3]:
            raise BadInputError(
                f"{self.path}: input shape {shape} is not [batch, {IMAGE_SIZE}, {IMAGE_SIZE}, 3]"
            )
        out_shape = list(outputs[0].shape)
        if len(out_shape) != 2 or (isinstance(out_shape[1], int) and out_shape[1] != len(self.class_names)):
            raise BadInputError(
                f"{self.path}: output shape {out_shape} does not match "
                f"{len(self.class_names)} classes in the manifest"
            )

    def preprocess(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels -> the model's input tensor."""
        if self.input_type == "tensor(uint8)":
            return np.ascontiguousarray(pixels, dtype=np.uint8)
        return self.preprocessing.apply(pixels)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities for a batch of (N, 32, 32, 3) uint8 images."""
        pixels = np.asarray(pixels)
        if pixels.ndim == 3:
            pixels = pixels[None]
        if pixels.ndim != 4 or pixels.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise BadInputError(f"expected images of shape (N, 32, 32, 3), got {pixels.shape}")
        return self.run(self.preprocess(pixels))

    def run(self, inputs: np.ndarray) -> np.ndarray:
        """Run the model on an already-preprocessed batch."""
        return self.session.run([self.output_name], {self.input_name: inputs})[0]
