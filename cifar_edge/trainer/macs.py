"""Count multiply-accumulates per image from a Keras model's layers."""

from __future__ import annotations

import math

import keras


def count_macs(model: keras.Model) -> int:
    """MACs for one image through Conv2D, DepthwiseConv2D and Dense layers."""
    total = 0
    for layer in _flat_layers(model):
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            out = layer.output.shape
            kh, kw = layer.kernel_size
            total += out[1] * out[2] * kh * kw * out[3]
        elif isinstance(layer, keras.layers.Conv2D):
            out = layer.output.shape
            kh, kw = layer.kernel_size
            in_ch = layer.input.shape[-1]
            total += out[1] * out[2] * kh * kw * in_ch * out[3] // layer.groups
        elif isinstance(layer, keras.layers.Dense):
            in_features = layer.input.shape[-1]
            positions = math.prod(layer.input.shape[1:-1]) if len(layer.input.shape) > 2 else 1
            total += positions * in_features * layer.units
    return int(total)


def _flat_layers(model: keras.Model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            # a sub-model called on two views (test-time flip) costs twice
            for _ in range(_calls(layer)):
                yield from _flat_layers(layer)
        else:
            yield layer


def _calls(layer) -> int:
    """How many times the graph calls the sub-model `layer` (each call adds an inbound node).

    Counts every call of `layer` in any graph: a sub-model shared by two separate
    wrappers would be counted for both.  cifar-edge builds one wrapper per model.
    """
    return max(1, len(getattr(layer, "_inbound_nodes", [])))
