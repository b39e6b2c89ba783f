"""`cifar-edge export`: Keras model -> ONNX fp32 (+ int8), parity-checked, with a manifest."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from cifar_edge import __version__
from cifar_edge.datasets import CIFAR10_CLASSES, Split, load_dataset
from cifar_edge.errors import BadInputError, CheckFailedError, WriteError
from cifar_edge.presets import DEFAULT_CALIB_SIZE
from cifar_edge.runtime.classifier import make_session
from cifar_edge.runtime.files import sha256_of, write_json
from cifar_edge.runtime.manifest import (
    INPUT_NAME,
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    OUTPUT_NAME,
    Preprocessing,
)

FP32_PARITY_LIMIT = 1e-4
PARITY_SPLITS = ("test", "train")  # parity on unseen images where the data has them
CALIBRATION_SPLITS = ("train", "test")


@dataclass
class ExportConfig:
    """Options of one export; defaults live in the CLI (shown by --help)."""

    model: Path
    out: Path | None = None
    quantize: bool = False
    calib_data: str | None = None
    calib_size: int = DEFAULT_CALIB_SIZE
    calib_method: str = "minmax"
    reduce_range: bool = True
    first_conv_8bit: bool = False
    pad_stem: bool = True
    parity_data: str | None = None
    parity_size: int = 500
    preprocessing: Preprocessing | None = None
    class_names: list[str] | None = None
    opset: int = 17
    int8_min_agreement: float | None = None
    uint8_input: bool = False
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _sample(split: Split, size: int, seed: int) -> np.ndarray:
    """A seeded random sample of `size` images, in file order."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(split))[: min(size, len(split))]
    return split.images[np.sort(idx)]


def sample_images(path: str, split_order: tuple[str, ...], size: int, seed: int) -> tuple[np.ndarray, str, str]:
    """`size` real images from the first split of `split_order` that `path` has.

    Returns (images, description, split).  Deterministic for a given
    (path, size, seed), so `bench` can rebuild the exact calibration set.
    """
    last_error = None
    for split_name in split_order:
        # Read only a class-balanced slice (2x headroom for 10 classes), then sample.
        per_class = max(1, math.ceil(size / 10)) * 2
        try:
            dataset = load_dataset(path, splits=(split_name,), limit_per_class=per_class)
            split = dataset.split(split_name)
        except BadInputError as exc:
            last_error = exc
            continue
        desc = f"{dataset.source} ({split_name}, {min(size, len(split))} images)"
        return _sample(split, size, seed), desc, split_name
    raise last_error or BadInputError(f"no images in {path}")


def _file_entry(path: Path) -> dict[str, Any]:
    return {"file": path.name, "sha256": sha256_of(path), "bytes": path.stat().st_size}


def _io_spec(proto: onnx.ModelProto) -> tuple[dict, dict]:
    def spec(value):
        t = value.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        return {"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
                "shape": dims}

    inp, out = spec(proto.graph.input[0]), spec(proto.graph.output[0])
    inp["layout"] = "NHWC"
    return inp, out


def _is_probability_output(outputs: np.ndarray) -> bool:
    return bool(np.all(outputs >= -1e-6) and np.allclose(outputs.sum(axis=1), 1.0, atol=1e-3))


def export(config: ExportConfig, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run one export end to end; returns the manifest it wrote."""
    from cifar_edge.exporter.keras_model import load_keras_classifier, training_info

    started = time.perf_counter()
    model = load_keras_classifier(config.model)
    info = training_info(config.model) or {}
    num_classes = int(model.outputs[0].shape[-1])
    class_names = config.class_names or info.get("class_names") or (
        CIFAR10_CLASSES if num_classes == 10 else [f"class_{i}" for i in range(num_classes)])
    if len(class_names) != num_classes:
        raise BadInputError(f"{len(class_names)} class names given for a model with {num_classes} outputs")
    if config.preprocessing is not None:
        preprocessing, prep_source = config.preprocessing, "command line"
    elif "preprocessing" in info:
        preprocessing, prep_source = Preprocessing.from_dict(info["preprocessing"]), "training.json"
    else:
        preprocessing, prep_source = Preprocessing(), "default (pixels / 255)"
        echo("note: no training.json beside the model; assuming pixels / 255 (use --scale/--offset to change)")
    data_source = info.get("data", {}).get("source")
    calib_data = config.calib_data or data_source
    parity_data = config.parity_data or calib_data
    if parity_data is None or (config.quantize and calib_data is None):
        raise BadInputError("no data for calibration/parity: pass --calib-data PATH (the training data)")

    out = config.out or config.model.parent
    try:
        out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out))
    except OSError as exc:
        raise WriteError(f"cannot write to {out}: {exc.strerror or exc}") from None
    try:
        return _export_into(config, model, preprocessing, prep_source, class_names, calib_data, parity_data,
                            out, staging, started, echo)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _export_into(config: ExportConfig, model, preprocessing: Preprocessing, prep_source: str,
                 class_names: list[str], calib_data, parity_data, out: Path, staging: Path, started: float,
                 echo: Callable[[str], None]) -> dict[str, Any]:
    """Build and check the models in `staging`; move them into `out` only if every check passes,
    so a failed export never replaces a good one."""
    from cifar_edge.exporter.convert import keras_to_onnx
    from cifar_edge.exporter.parity import compare, failures
    from cifar_edge.exporter.uint8_input import to_uint8_input

    stem = config.model.stem
    fp32_path, int8_path = staging / f"{stem}.onnx", staging / f"{stem}.int8.onnx"

    echo(f"loading {config.parity_size} parity images from {parity_data}")
    parity_images, parity_desc, _ = sample_images(parity_data, PARITY_SPLITS, config.parity_size, config.seed)
    keras_probs = model.predict(preprocessing.apply(parity_images), batch_size=256, verbose=0)
    add_softmax = bool(np.isfinite(keras_probs).all()) and not _is_probability_output(keras_probs)
    if add_softmax:
        echo("note: the model outputs logits; the ONNX model adds a softmax")
        keras_probs = _softmax(keras_probs)

    echo(f"converting {config.model} to ONNX (opset {config.opset})")
    proto = keras_to_onnx(model, add_softmax=add_softmax, opset=config.opset)
    float_path = staging / "float-input.onnx"  # calibration runs on the float-input graph
    onnx.save(proto, str(float_path))
    uint8_how = {}
    if config.uint8_input:
        uint8_how["fp32"] = to_uint8_input(proto, preprocessing)
    onnx.save(proto, str(fp32_path))
    input_spec, output_spec = _io_spec(proto)

    def onnx_inputs(images: np.ndarray) -> np.ndarray:
        return images if config.uint8_input else preprocessing.apply(images)

    def run(path: Path) -> np.ndarray:
        # As the runtime will run it: a full-range int8 model on the non-saturating kernels.
        session = make_session(path, precise_int8=path == int8_path and not config.reduce_range)
        return session.run([OUTPUT_NAME], {INPUT_NAME: onnx_inputs(parity_images)})[0]

    def report(name: str, parity) -> None:
        echo(f"parity {name} vs Keras on {parity.images} images: max |dp| {parity.max_abs_diff:.3g}, "
             f"top-1 agreement {parity.top1_agreement:.2%}")

    results = {"fp32": compare(keras_probs, run(fp32_path))}
    report("fp32", results["fp32"])
    problems = failures("fp32", results["fp32"], FP32_PARITY_LIMIT, None)
    if problems:  # no point calibrating a model that is already wrong (NaN breaks the calibrator)
        raise CheckFailedError("parity check failed: " + "; ".join(problems) + "; nothing was written")

    quantization = None
    if config.quantize:
        from cifar_edge.exporter.quantize import quantize_int8

        echo(f"calibrating int8 on {config.calib_size} images from {calib_data}")
        calib_seed = config.seed + 1
        calib_images, calib_desc, _ = sample_images(calib_data, CALIBRATION_SPLITS, config.calib_size, calib_seed)
        # Calibrated on the float-input graph; a uint8-input model then folds the scaling into the
        # stem padding's MatMul (or, unpadded, into the input quantization): the same quantization.
        quantization = quantize_int8(float_path, int8_path, preprocessing.apply(calib_images), config.calib_method,
                                    config.reduce_range, config.first_conv_8bit, pad_stem=config.pad_stem)
        if config.uint8_input:
            int8_proto = onnx.load(str(int8_path))
            uint8_how["int8"] = to_uint8_input(int8_proto, preprocessing)
            onnx.save(int8_proto, str(int8_path))
        quantization["calibration_data"] = calib_desc
        quantization["calibration_source"] = {"path": str(Path(calib_data).resolve()) if Path(calib_data).exists()
                                              else str(calib_data), "size": config.calib_size, "seed": calib_seed}
        results["int8"] = compare(keras_probs, run(int8_path))
        report("int8", results["int8"])
        problems = failures("int8", results["int8"], None, config.int8_min_agreement)
        if problems:
            raise CheckFailedError("parity check failed: " + "; ".join(problems) + "; nothing was written")

    staged = {"fp32": fp32_path, "int8": int8_path} if config.quantize else {"fp32": fp32_path}
    models = {name: _file_entry(path) for name, path in staged.items()}
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": 1,
        "cifar_edge": __version__,
        "class_names": list(class_names),
        "preprocessing": preprocessing.to_dict() | {"source": prep_source,
                                                     "in_graph": config.uint8_input,
                                                     "in_graph_how": uint8_how or None},
        "input": input_spec,
        "output": output_spec,
        "opset": config.opset,
        "softmax_added": add_softmax,
        "models": models,
        "source": {"file": str(config.model.resolve()), "sha256": sha256_of(config.model),
                   "parameters": int(model.count_params())},
        "quantization": quantization,
        "parity": {
            "data": parity_desc,
            "fp32_max_abs_diff_limit": FP32_PARITY_LIMIT,
            "int8_min_top1_agreement": config.int8_min_agreement if config.quantize else None,
            "passed": True,
            **{name: p.to_dict() for name, p in results.items()},
        },
        "export_time_s": round(time.perf_counter() - started, 1),
    }
    try:
        for path in staged.values():
            os.replace(path, out / path.name)
    except OSError as exc:
        raise WriteError(f"cannot write to {out}: {exc.strerror or exc}") from None
    write_json(out / MANIFEST_NAME, manifest)
    for name, entry in models.items():
        echo(f"wrote {out / entry['file']} ({entry['bytes'] / 1024:.0f} KiB)")
    echo(f"wrote {out / MANIFEST_NAME}")
    return manifest


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
