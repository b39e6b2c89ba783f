"""Keras -> ONNX with a stable contract: input `images` [batch,32,32,3] (float32
preprocessed, or uint8 pixels with --uint8-input), output `probabilities` [batch, C].

Uses `tf2onnx.convert.from_function` on a tf.function with a named
TensorSpec: `from_keras` fails on Keras 3 (onnx/tensorflow-onnx#2448).
"""

from __future__ import annotations

import onnx

from cifar_edge.exporter.simplify import simplify
from cifar_edge.runtime.manifest import INPUT_NAME, OUTPUT_NAME, Preprocessing

DEFAULT_OPSET = 17
BATCH_DIM = "batch"


def keras_to_onnx(model, add_softmax: bool = False, opset: int = DEFAULT_OPSET,
                  uint8_input: Preprocessing | None = None) -> onnx.ModelProto:
    """Convert a loaded Keras model.

    `add_softmax` wraps a logits model.  `uint8_input` (the preprocessing)
    makes the input uint8 pixels and does the scaling inside the graph.
    """
    import tensorflow as tf
    import tf2onnx

    def forward(images):
        if uint8_input is not None:
            scale = tf.constant(uint8_input.scale, tf.float32)
            offset = tf.constant(uint8_input.offset, tf.float32)
            images = tf.cast(images, tf.float32) * scale + offset
        outputs = model(images, training=False)
        if add_softmax:
            outputs = tf.nn.softmax(outputs, axis=-1)
        return {OUTPUT_NAME: outputs}

    dtype = tf.uint8 if uint8_input is not None else tf.float32
    spec = [tf.TensorSpec([None, 32, 32, 3], dtype, name=INPUT_NAME)]
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
