"""The Keras side: model presets, their training recipes, and the fit loop.

Needs the [train] extra (TensorFlow). Imported lazily by the CLI.
"""
