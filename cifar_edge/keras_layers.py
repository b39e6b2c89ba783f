"""Keras layers that cifar-edge's saved models may contain, registered for loading.

Both the trainer (which builds them) and the exporter's model loader import
this module, so a `model.keras` written by `train` loads anywhere the
`[train]` extra is installed.  Kept out of `cifar_edge.runtime`: it needs Keras.
"""

from __future__ import annotations

import keras
from keras import layers


@keras.saving.register_keras_serializable(package="cifar_edge")
class HorizontalFlip(layers.Layer):
    """Mirror NHWC images left to right (always: this is test-time augmentation, not training noise)."""

    def call(self, inputs):
        return keras.ops.flip(inputs, axis=2)

    def compute_output_shape(self, input_shape):
        return input_shape


def with_flip_tta(model: keras.Model) -> keras.Model:
    """`model` averaged over the image and its mirror image: one graph, twice the MACs.

    Test-time flipping buys the `edge` preset about a point of accuracy
    (see README); the wrapper is an ordinary functional model, so Keras,
    ONNX fp32 and ONNX int8 all run the same two-view average.
    """
    inputs = keras.Input(shape=model.input_shape[1:], name="images")
    views = [model(inputs), model(HorizontalFlip(name="mirror")(inputs))]
    outputs = layers.Average(name="flip_average", dtype="float32")(views)
    return keras.Model(inputs, outputs, name=f"{model.name}_flip_tta")


def flip_tta_inner(model: keras.Model) -> keras.Model | None:
    """The single-view network inside a `with_flip_tta` model, or None for any other model.

    The exporter uses it to run both views as one batch of 2N: one pass
    through the network instead of two branches, half the kernel calls.
    """
    flips = [layer for layer in model.layers if isinstance(layer, HorizontalFlip)]
    averages = [layer for layer in model.layers if isinstance(layer, layers.Average)]
    inner = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(flips) != 1 or len(averages) != 1 or len(inner) != 1 or len(model.layers) != 4:
        return None
    # The layers alone do not say how they are wired: check the model computes the flip average.
    import numpy as np

    x = np.random.default_rng(0).random((2, *model.input_shape[1:]), dtype=np.float32)
    expected = (np.asarray(inner[0](x, training=False)) + np.asarray(inner[0](x[:, :, ::-1], training=False))) / 2
    if not np.allclose(np.asarray(model(x, training=False)), expected, atol=1e-5):
        return None
    return inner[0]
