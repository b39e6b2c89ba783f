"""The edge runtime: onnxruntime + Pillow + numpy, nothing heavier.

Never import TensorFlow, Keras, tf2onnx, cifar_edge.trainer or
cifar_edge.exporter from here: `pip install cifar-edge` on an edge box
installs only this package's dependencies, and `infer` must start fast.
"""

from cifar_edge.runtime.classifier import Classifier
from cifar_edge.runtime.images import ImageReadError, find_images, load_image
from cifar_edge.runtime.manifest import Manifest, Preprocessing

__all__ = [
    "Classifier",
    "ImageReadError",
    "Manifest",
    "Preprocessing",
    "find_images",
    "load_image",
]
