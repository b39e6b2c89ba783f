"""The model variants of one export — Keras source, ONNX fp32, ONNX int8 — behind one call.

`evaluate` and `bench` both take an export folder (or its manifest.json)
and work on every variant it lists, each as `predict(uint8 pixels) -> probs`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifar_edge.errors import BadInputError
from cifar_edge.runtime.classifier import Classifier
from cifar_edge.runtime.manifest import MANIFEST_NAME, Manifest

KERAS = "keras"


@dataclass
class Variant:
    """One runnable model: its name, file, and a batch predictor on uint8 pixels."""

    name: str
    path: Path
    predict: Callable[[np.ndarray], np.ndarray]
    raw: Callable[[np.ndarray], np.ndarray]  # the bare model call on preprocessed input
    preprocess: Callable[[np.ndarray], np.ndarray]
    model: object = None  # the Keras model, for the Keras variant

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size


def resolve_manifest(path: str | Path) -> Manifest:
    """An export folder, its manifest.json, or an ONNX model beside one."""
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"not found: {path}")
    if path.is_dir():
        return Manifest.load(path / MANIFEST_NAME)
    if path.suffix == ".onnx":
        return Manifest.for_model(path)
    return Manifest.load(path)


def onnx_variants(manifest: Manifest, threads: int | None = None) -> list[Variant]:
    """One Variant per ONNX model listed in the manifest."""
    variants = []
    for name in manifest.models:
        clf = Classifier(manifest.model_path(name), manifest, threads=threads)
        variants.append(Variant(name=f"onnx-{name}", path=clf.path, predict=clf.predict, raw=clf.run,
                                preprocess=clf.preprocess))
    return variants


def keras_variant(manifest: Manifest) -> Variant | None:
    """The source Keras model named in the manifest, or None if it is gone."""
    source = Path(manifest.raw.get("source", {}).get("file", ""))
    if not source.is_file():
        return None
    import keras
    import tensorflow as tf

    from cifar_edge.exporter.keras_model import load_keras_classifier

    model = load_keras_classifier(source)
    softmax = bool(manifest.raw.get("softmax_added"))
    call = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def raw(x: np.ndarray) -> np.ndarray:
        out = call(tf.convert_to_tensor(x)).numpy()
        return keras.ops.convert_to_numpy(keras.ops.softmax(out)) if softmax else out

    prep = manifest.preprocessing.apply

    def predict(pixels: np.ndarray) -> np.ndarray:
        return np.concatenate([raw(prep(pixels[i : i + 256])) for i in range(0, len(pixels), 256)])

    return Variant(name=KERAS, path=source, predict=predict, raw=raw, preprocess=prep, model=model)
