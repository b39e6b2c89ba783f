"""Load a user's Keras classifier and check it is one this tool can export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cifar_edge.errors import BadInputError

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


def load_keras_classifier(path: str | Path):
    """Load a .keras or legacy .h5 model with one (N, 32, 32, 3) input and one (N, C) output."""
    import keras

    import cifar_edge.keras_layers  # noqa: F401  registers the layers cifar-edge models may contain

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"model not found: {path}")
    if path.suffix.lower() not in KERAS_SUFFIXES:
        raise BadInputError(f"{path} is not a Keras model file (expected .keras or .h5)")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for a bad archive
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise BadInputError(f"cannot load Keras model {path}: {reason}") from None
    inputs, outputs = model.inputs, model.outputs
    if len(inputs) != 1 or len(outputs) != 1:
        raise BadInputError(f"{path}: expected one input and one output, got {len(inputs)} and {len(outputs)}")
    in_shape = tuple(inputs[0].shape[1:])
    if in_shape != (32, 32, 3):
        raise BadInputError(f"{path}: input shape {in_shape} is not (32, 32, 3)")
    out_shape = tuple(outputs[0].shape[1:])
    if len(out_shape) != 1 or not out_shape[0] or out_shape[0] < 2:
        raise BadInputError(f"{path}: output shape {out_shape} is not a class vector")
    return model


def training_info(model_path: str | Path) -> dict[str, Any] | None:
    """training.json written by `cifar-edge train` beside the model, if any."""
    info = Path(model_path).parent / "training.json"
    if not info.is_file():
        return None
    try:
        data = json.loads(info.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInputError(f"cannot read {info}: {exc}") from None
    return data if data.get("format") == "cifar-edge-training" else None
