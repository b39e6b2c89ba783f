"""Model builders for the `--model` presets.

`seed` is the original notebook's CNN, layer for layer (356,810 parameters).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

INPUT_SHAPE = (32, 32, 3)
BN_MOMENTUM = 0.9  # moving statistics settle within short (time-budgeted) runs


def build_seed(num_classes: int = 10) -> keras.Model:
    """The notebook CNN: Conv 32/64/128 + MaxPool, Dense 128, Dropout 0.5, softmax."""
    return keras.Sequential(
        [
            keras.Input(shape=INPUT_SHAPE, name="images"),
            layers.Conv2D(32, (3, 3), activation="relu", padding="same"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(64, (3, 3), activation="relu", padding="same"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(128, (3, 3), activation="relu", padding="same"),
            layers.MaxPooling2D((2, 2)),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dropout(0.5),
            layers.Dense(num_classes, activation="softmax"),
        ],
        name="seed",
    )


def _resnet_block(x, filters: int, stride: int, weight_decay: float):
    reg = keras.regularizers.L2(weight_decay) if weight_decay else None
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", kernel_initializer="he_normal",
                      kernel_regularizer=reg)(x)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM)(y)
    y = layers.Activation("relu")(y)
    y = layers.Conv2D(filters, 3, padding="same", kernel_initializer="he_normal", kernel_regularizer=reg)(y)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM)(y)
    if stride != 1 or x.shape[-1] != filters:
        x = layers.Conv2D(filters, 1, strides=stride, padding="same", kernel_initializer="he_normal",
                          kernel_regularizer=reg)(x)
    y = layers.Add()([x, y])
    return layers.Activation("relu")(y)


def build_resnet8(num_classes: int = 10, weight_decay: float = 0.0) -> keras.Model:
    """MLPerf Tiny image-classification reference ResNet-8 (v1).

    16-filter 3x3 stem, three residual stages of 16/32/64 filters (strides
    1/2/2, 1x1 projection shortcuts where the shape changes), global
    average pooling, softmax: 78,666 parameters, about 12.5M MACs.
    The reference trains with an L2 penalty of 1e-4 (`weight_decay`); the
    preset's recipe uses decoupled AdamW decay instead, so it defaults to 0.
    """
    reg = keras.regularizers.L2(weight_decay) if weight_decay else None
    inputs = keras.Input(shape=INPUT_SHAPE, name="images")
    x = layers.Conv2D(16, 3, padding="same", kernel_initializer="he_normal", kernel_regularizer=reg)(inputs)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
    x = layers.Activation("relu")(x)
    for filters, stride in ((16, 1), (32, 2), (64, 2)):
        x = _resnet_block(x, filters, stride, weight_decay)
    x = layers.GlobalAveragePooling2D()(x)
    # float32 head: keeps probabilities and the loss exact under bf16 mixed precision.
    outputs = layers.Dense(num_classes, activation="softmax", kernel_regularizer=reg, dtype="float32")(x)
    return keras.Model(inputs, outputs, name="resnet8")


# Widths of the three conv blocks.  Measured on the 2-core AVX2 reference CPU (TF float32 training,
# batch 512): 24.1M MACs at ~680 img/s per training step; (48, 128, 128) is 1.8x the MACs at half
# the speed, the airbench widths (64, 256, 256) 5x the MACs at a fifth.
EDGE_WIDTHS = (32, 96, 96)
EDGE_BN_MOMENTUM = 0.9


def _pool_block(x, width: int):
    """conv -> max pool -> BN -> ReLU -> conv -> BN -> ReLU: the second conv, BN and ReLU run at half size."""
    x = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
    x = layers.MaxPooling2D()(x)
    x = layers.BatchNormalization(momentum=EDGE_BN_MOMENTUM, scale=False)(x)
    x = layers.Activation("relu")(x)
    x = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
    x = layers.BatchNormalization(momentum=EDGE_BN_MOMENTUM, scale=False)(x)
    return layers.Activation("relu")(x)


def build_edge(num_classes: int = 10, widths: tuple[int, ...] = EDGE_WIDTHS) -> keras.Model:
    """cifar-edge's own network for a 2-core CPU, after Keller Jordan's airbench, narrowed for a CPU.

    A frozen 2x2 patch-whitening conv (24 filters, set from the training data by
    `trainer.whitening.fit_whitening`), ReLU, then three blocks of
    conv -> max pool -> BN -> ReLU -> conv -> BN -> ReLU (32/96/96 filters, no conv biases,
    BN without scale), global max pooling and a bias-free softmax layer.
    295,224 parameters (312 of them frozen), 24.1M MACs per image.
    """
    from cifar_edge.trainer.whitening import WHITEN_LAYER

    inputs = keras.Input(shape=INPUT_SHAPE, name="images")
    x = layers.Conv2D(24, 2, padding="valid", trainable=False, name=WHITEN_LAYER)(inputs)
    x = layers.Activation("relu")(x)
    for width in widths:
        x = _pool_block(x, width)
    x = layers.GlobalMaxPooling2D()(x)
    outputs = layers.Dense(num_classes, use_bias=False, activation="softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="edge")


BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "seed": build_seed,
    "resnet8": build_resnet8,
    "edge": build_edge,
}


def build_model(name: str, num_classes: int = 10) -> keras.Model:
    """Build the preset `name` for `num_classes` classes."""
    return BUILDERS[name](num_classes=num_classes)
