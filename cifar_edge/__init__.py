"""cifar-edge: train a small Keras image classifier, ship it as ONNX, run it on CPUs."""

__version__ = "0.1.0"
