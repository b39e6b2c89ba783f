"""Keras -> ONNX with a stable contract: input `images` [batch,32,32,3] float32,
output `probabilities` [batch, C].

Uses `tf2onnx.convert.from_function` on a tf.function with a named
TensorSpec: `from_keras` fails on Keras 3 (onnx/tensorflow-onnx#2448).
A test-time-flip model is exported as one pass over the 2N batch of images
and mirror images (Keras' own graph has two branches of the same network):
half the kernel calls at batch 1, and each conv sees twice the batch.
"""

from __future__ import annotations

import onnx

from cifar_edge.exporter.simplify import simplify
from cifar_edge.runtime.manifest import INPUT_NAME, OUTPUT_NAME

DEFAULT_OPSET = 17
BATCH_DIM = "batch"


def keras_to_onnx(model, add_softmax: bool = False, opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """Convert a loaded Keras model; `add_softmax` wraps a logits model.

    The input is the float32 preprocessed image; `uint8_input.to_uint8_input`
    turns it into a pixel input afterwards.
    """
    import tensorflow as tf
    import tf2onnx

    from cifar_edge.keras_layers import flip_tta_inner

    inner = flip_tta_inner(model)

    def forward(images):
        if inner is None:
            outputs = model(images, training=False)
        else:  # both views as one batch of 2N, then the mean of each image's two rows
            views = inner(tf.concat([images, images[:, :, ::-1, :]], axis=0), training=False)
            outputs = tf.reduce_mean(tf.reshape(views, [2, -1, views.shape[-1]]), axis=0)
        if add_softmax:
            outputs = tf.nn.softmax(outputs, axis=-1)
        return {OUTPUT_NAME: outputs}

    spec = [tf.TensorSpec([None, 32, 32, 3], tf.float32, name=INPUT_NAME)]
    proto, _ = tf2onnx.convert.from_function(tf.function(forward), input_signature=spec, opset=opset)
    _name_batch_dim(proto)
    simplify(proto)
    proto.producer_name = "cifar-edge"
    return proto


def _name_batch_dim(proto: onnx.ModelProto) -> None:
    """Give the symbolic batch dimension one readable name everywhere."""
    first = proto.graph.input[0].type.tensor_type.shape.dim[0]
    old = first.dim_param
    for value in [*proto.graph.input, *proto.graph.output, *proto.graph.value_info]:
        dims = value.type.tensor_type.shape.dim
        if dims and (dims[0].dim_param == old or value in proto.graph.output):
            dims[0].dim_param = BATCH_DIM
