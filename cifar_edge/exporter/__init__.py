"""Keras -> ONNX (tf2onnx), static int8 quantization (onnxruntime), parity checks.

Needs the [train] extra. Imported lazily by the CLI.
"""
