"""`cifar-edge export`: the ONNX contract, the manifest, parity, int8, and bad models."""

from __future__ import annotations

import hashlib
import json
import shutil

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import CIFAR10_CLASSES, EXPORT_ARGS, keras_probabilities, ort_probabilities
from keras import layers

from cifar_edge.exporter.parity import compare, failures

# int8 (static QDQ, 64 calibration images) vs Keras top-1 agreement on 200 real test
# images for the session's 3-epoch seed model.  Its probabilities are nearly flat
# (median top-1/top-2 margin ~0.005, int8 max |dp| ~0.03), so near-ties flip: measured
# 0.805-0.975 (mean ~0.9) over seven training runs (training is not bit-deterministic).
# A broken quantizer (wrong scales, collapsed output) lands near the majority-class
# share (~0.4) or chance (~0.1); 0.65 separates the two with margin.
INT8_MIN_AGREEMENT = 0.65


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the ONNX contract -------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_onnx_contract(seed_export, variant):
    path = seed_export.fp32 if variant == "fp32" else seed_export.int8
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    assert len(proto.graph.input) == 1 and len(proto.graph.output) == 1
    inp, out = proto.graph.input[0], proto.graph.output[0]
    assert inp.name == "images" and out.name == "probabilities"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    in_dims = inp.type.tensor_type.shape.dim
    out_dims = out.type.tensor_type.shape.dim
    assert in_dims[0].dim_param == "batch" and [d.dim_value for d in in_dims[1:]] == [32, 32, 3]
    assert out_dims[0].dim_param == "batch" and [d.dim_value for d in out_dims[1:]] == [10]

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (i,), (o,) = session.get_inputs(), session.get_outputs()
    assert (i.name, i.type, i.shape) == ("images", "tensor(float)", ["batch", 32, 32, 3])
    assert (o.name, o.shape) == ("probabilities", ["batch", 10])


def test_batch_dimension_is_dynamic(seed_export, test_images_200):
    pixels, _ = test_images_200
    for n in (1, 7):
        p = ort_probabilities(seed_export.fp32, pixels[:n])
        assert p.shape == (n, 10)
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    # a row's result does not depend on the batch it is in
    np.testing.assert_allclose(ort_probabilities(seed_export.fp32, pixels[:7])[3],
                               ort_probabilities(seed_export.fp32, pixels[3:4])[0], atol=1e-6)


def test_opset(seed_export):
    proto = onnx.load(str(seed_export.fp32))
    default = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    assert default == [17]
    assert seed_export.manifest["opset"] == 17


# --- the manifest --------------------------------------------------------------------------

def test_manifest(seed_export, seed_run):
    m = seed_export.manifest
    assert m["format"] == "cifar-edge-manifest"
    assert m["class_names"] == CIFAR10_CLASSES == seed_run.json("training.json")["class_names"]
    assert set(m["models"]) == {"fp32", "int8"}
    for variant, path in (("fp32", seed_export.fp32), ("int8", seed_export.int8)):
        entry = m["models"][variant]
        assert entry["file"] == path.name
        assert entry["sha256"] == _sha256(path)
        assert entry["bytes"] == path.stat().st_size
    assert m["source"]["sha256"] == _sha256(seed_run.model)
    assert m["source"]["parameters"] == 356_810
    assert m["preprocessing"]["scale"] == pytest.approx([1 / 255] * 3, rel=1e-12)
    assert m["preprocessing"]["offset"] == [0.0, 0.0, 0.0]
    assert m["preprocessing"]["source"] == "training.json"
    assert m["input"]["name"] == "images" and m["input"]["dtype"] == "float32"
    assert m["input"]["shape"] == ["batch", 32, 32, 3]
    assert m["output"]["name"] == "probabilities" and m["output"]["shape"] == ["batch", 10]
    assert m["softmax_added"] is False  # the seed CNN ends in softmax
    assert m["quantization"]["calibration_images"] == 64


def test_manifest_parity_numbers(seed_export):
    parity = seed_export.manifest["parity"]
    assert parity["passed"] is True
    assert parity["fp32_max_abs_diff_limit"] == 1e-4
    fp32, int8 = parity["fp32"], parity["int8"]
    assert fp32["images"] == int8["images"] == 64
    assert fp32["finite"] is True and int8["finite"] is True
    assert 0 <= fp32["max_abs_diff"] <= 1e-4
    assert fp32["mean_abs_diff"] <= fp32["max_abs_diff"]
    assert fp32["top1_agreement"] == 1.0
    assert int8["max_abs_diff"] > fp32["max_abs_diff"]  # int8 really is quantized
    assert 0 <= int8["top1_agreement"] <= 1
    assert "test" in parity["data"]  # parity on the test split by default


def test_export_stdout_reports_parity(seed_export):
    out = seed_export.result.out
    assert "parity fp32 vs Keras on 64 images" in out
    assert "parity int8 vs Keras on 64 images" in out


# --- parity, recomputed independently ------------------------------------------------------------

@pytest.fixture(scope="module")
def keras_200(keras_seed, test_images_200):
    return keras_probabilities(keras_seed, test_images_200[0])


def test_fp32_parity_on_real_test_images(seed_export, test_images_200, keras_200):
    onnx_probs = ort_probabilities(seed_export.fp32, test_images_200[0])
    assert onnx_probs.shape == keras_200.shape == (200, 10)
    assert np.abs(onnx_probs - keras_200).max() <= 1e-4
    assert np.mean(onnx_probs.argmax(1) == keras_200.argmax(1)) == 1.0
    # and the model is not trivially constant on these images
    assert len(np.unique(keras_200.argmax(1))) >= 3


def test_int8_model(seed_export, test_images_200, keras_200):
    assert seed_export.int8.stat().st_size < 0.5 * seed_export.fp32.stat().st_size
    ops = {node.op_type for node in onnx.load(str(seed_export.int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    fp32_ops = {node.op_type for node in onnx.load(str(seed_export.fp32)).graph.node}
    assert "QuantizeLinear" not in fp32_ops

    int8_probs = ort_probabilities(seed_export.int8, test_images_200[0])
    # the output itself is quantized (steps of 1/255), so rows sum to 1 within 10 half-steps
    np.testing.assert_allclose(int8_probs.sum(axis=1), 1.0, atol=10 * 0.5 / 255 + 1e-6)
    agreement = np.mean(int8_probs.argmax(1) == keras_200.argmax(1))
    print(f"int8 top-1 agreement with Keras on 200 test images: {agreement:.3f}")
    assert agreement >= INT8_MIN_AGREEMENT, agreement
    # quantized, so not bit-identical to fp32
    assert np.abs(int8_probs - keras_200).max() > 1e-6


def _conv_weight_range(path) -> tuple[int, int]:
    """Smallest and largest quantized value of the int8 Conv/Gemm weights in a QDQ model."""
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    values = [inits[n.input[0]] for n in proto.graph.node
              if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dtype == np.int8]
    assert values, "no int8 weights found"
    return min(int(v.min()) for v in values), max(int(v.max()) for v in values)


def test_int8_weights_use_7_bits_by_default(seed_export):
    """Full-range s8 weights saturate VPMADDUBSW on x86 CPUs without VNNI (AVX2): 7 bits by default."""
    low, high = _conv_weight_range(seed_export.int8)
    assert -64 <= low and high <= 64 and high - low > 100, (low, high)
    quantization = seed_export.manifest["quantization"]
    assert quantization["reduce_range"] is True and "7-bit" in quantization["weights"]
    assert "first convolution" not in quantization["weights"]
    assert _uint8_conv_weights(seed_export.int8) == []  # 7 bits everywhere, the first conv included


def _uint8_conv_weights(path) -> list[np.ndarray]:
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    return [inits[n.input[0]] for n in proto.graph.node if n.op_type == "DequantizeLinear"
            and n.input[0] in inits and inits[n.input[0]].dtype == np.uint8 and inits[n.input[0]].ndim == 4]


def test_first_conv_8bit_option(cli, seed_run, tmp_path):
    """--first-conv-8bit: the stem's weights 8-bit as uint8 (u8u8 kernels cannot saturate), the rest 7-bit."""
    out = tmp_path / "first8"
    result = cli("export", seed_run.model, *EXPORT_ARGS, "--first-conv-8bit", "--out", out)
    assert result.code == 0, result.err
    u8_weights = _uint8_conv_weights(out / "model.int8.onnx")
    assert len(u8_weights) == 1 and u8_weights[0].shape[1] == 3  # the stem conv: 3 input channels (OIHW)
    assert int(u8_weights[0].max()) - int(u8_weights[0].min()) > 128
    low, high = _conv_weight_range(out / "model.int8.onnx")
    assert -64 <= low and high <= 64
    manifest = json.loads((out / "manifest.json").read_text())
    assert "the first convolution's: uint8" in manifest["quantization"]["weights"]


def test_full_range_option(cli, seed_run, seed_export, tmp_path):
    out = tmp_path / "full"
    result = cli("export", seed_run.model, *EXPORT_ARGS, "--full-range", "--out", out)
    assert result.code == 0, result.err
    low, high = _conv_weight_range(out / "model.int8.onnx")
    assert low < -64 or high > 64, (low, high)
    assert json.loads((out / "manifest.json").read_text())["quantization"]["reduce_range"] is False
    # ...and the runtime then asks onnxruntime for its non-saturating kernels (a no-op on VNNI CPUs).
    from cifar_edge.runtime.classifier import Classifier

    def precise(path):
        options = Classifier(path).session.get_session_options()
        try:
            return options.get_session_config_entry("session.x64quantprecision") == "1"
        except RuntimeError:  # onnxruntime raises for a key that was never set
            return False

    assert precise(out / "model.int8.onnx") and not precise(out / "model.onnx")
    assert not precise(seed_export.int8)


def test_exports_older_than_reduce_range_count_as_full_range(seed_export):
    from cifar_edge.runtime.manifest import Manifest

    manifest = Manifest.load(seed_export.manifest_path)
    assert not manifest.full_range_int8(seed_export.int8)
    del manifest.raw["quantization"]["reduce_range"]
    assert manifest.full_range_int8(seed_export.int8) and not manifest.full_range_int8(seed_export.fp32)


# --- parity helpers ----------------------------------------------------------------------------

def test_compare_finite():
    ref = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    cand = np.array([[0.6, 0.3, 0.1], [0.1, 0.3, 0.6]])
    p = compare(ref, cand)
    assert p.images == 2 and p.finite is True
    assert p.max_abs_diff == pytest.approx(0.1)
    assert p.mean_abs_diff == pytest.approx(0.2 / 6)
    assert p.top1_agreement == 1.0
    assert failures("fp32", p, 1e-4, None) == ["fp32 max abs difference 0.1 exceeds 0.0001"]
    assert failures("fp32", p, 0.2, None) == []
    half = np.array([[0.1, 0.2, 0.7], [0.1, 0.3, 0.6]])  # first row's top-1 flips
    assert compare(ref, half).top1_agreement == 0.5
    assert failures("int8", compare(ref, half), None, 0.9) == ["int8 top-1 agreement 0.5000 is below 0.9"]
    assert failures("int8", compare(ref, half), None, 0.5) == []
    with pytest.raises(ValueError, match="shape mismatch"):
        compare(ref, cand[:1])


@pytest.mark.parametrize("side", ["reference", "candidate"])
def test_compare_and_failures_with_nan(side):
    good = np.full((4, 10), 0.1, dtype=np.float32)
    bad = good.copy()
    bad[2, 5] = np.nan
    ref, cand = (bad, good) if side == "reference" else (good, bad)
    p = compare(ref, cand)
    assert p.finite is False
    assert not np.isfinite(p.max_abs_diff)  # never a NaN-hiding finite number
    d = p.to_dict()
    assert d["max_abs_diff"] is None and d["mean_abs_diff"] is None and d["finite"] is False
    json.dumps(d, allow_nan=False)  # JSON-safe
    problems = failures("fp32", p, 1e-4, 0.5)
    assert len(problems) == 1 and "NaN" in problems[0]


def test_compare_with_inf():
    ref = np.full((2, 3), 1 / 3)
    cand = ref.copy()
    cand[0, 0] = np.inf
    p = compare(ref, cand)
    assert p.finite is False
    assert "NaN or Inf" in failures("int8", p, None, 0.9)[0]


# --- a model with NaN weights ------------------------------------------------------------------

@pytest.fixture(scope="module")
def nan_model(seed_run, tmp_path_factory):
    """The seed model with one conv kernel set to NaN, saved as .keras (no training.json)."""
    model = keras.models.load_model(seed_run.model, compile=False)
    weights = model.get_weights()
    assert weights[0].shape == (3, 3, 3, 32)  # first conv kernel
    weights[0] = np.full_like(weights[0], np.nan)
    model.set_weights(weights)
    path = tmp_path_factory.mktemp("nan") / "nan_model.keras"
    model.save(path)
    return path


def test_nan_model_fails_parity_with_exit_4(cli, nan_model, jpeg_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    # A previous good export in the same folder must survive a failed one.
    (out / "manifest.json").write_text('{"previous": true}')
    (out / f"{nan_model.stem}.onnx").write_bytes(b"previous model")
    result = cli("export", nan_model, "--calib-data", jpeg_dir, "--parity-size", 32, "--out", out)
    line = result.assert_one_line_error(4, "parity check failed")
    assert "NaN" in line
    assert "nothing was written" in line
    assert json.loads((out / "manifest.json").read_text()) == {"previous": True}
    assert (out / f"{nan_model.stem}.onnx").read_bytes() == b"previous model"
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json", f"{nan_model.stem}.onnx"])
    assert "max |dp| inf" in result.out  # the numbers are still shown


@pytest.mark.filterwarnings("ignore:All-NaN:RuntimeWarning")
def test_nan_model_with_quantize_fails_parity_with_exit_4(cli, nan_model, jpeg_dir, tmp_path):
    result = cli("export", nan_model, "--quantize", "--calib-data", jpeg_dir, "--calib-size", 32,
                 "--parity-size", 32, "--out", tmp_path / "out")
    result.assert_one_line_error(4, "NaN")


# --- a functional BatchNorm + residual model saved as legacy .h5, with logits --------------------------

@pytest.fixture(scope="module")
def residual_h5(tmp_path_factory):
    keras.utils.set_random_seed(7)
    inputs = keras.Input((32, 32, 3))
    x = layers.Conv2D(8, 3, padding="same")(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.Activation("relu")(x)
    y = layers.Conv2D(8, 3, padding="same")(x)
    y = layers.BatchNormalization()(y)
    x = layers.Activation("relu")(layers.Add()([x, y]))
    x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    logits = layers.Dense(10)(x)  # no softmax
    model = keras.Model(inputs, logits)
    # Non-trivial BatchNorm statistics, so folding them into the convs is exercised.
    rng = np.random.default_rng(3)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.2, beta.shape),
                               rng.normal(0, 0.2, mean.shape), rng.uniform(0.5, 2.0, var.shape)])
    model.layers[-1].set_weights([rng.normal(0, 2.0, (8, 10)), rng.normal(0, 0.5, 10)])
    path = tmp_path_factory.mktemp("h5") / "residual.h5"
    model.save(path)
    return path, model


def test_export_functional_bn_residual_h5_with_logits(cli, residual_h5, exact_subset_dir, batches_dir, tmp_path):
    path, model = residual_h5
    out = tmp_path / "out"
    result = cli("export", path, "--calib-data", exact_subset_dir, "--quantize", "--calib-size", 64,
                 "--parity-size", 64, "--int8-min-agreement", 0, "--out", out)
    assert result.code == 0, result.out + result.err
    assert "outputs logits" in result.out
    m = json.loads((out / "manifest.json").read_text())
    assert m["softmax_added"] is True
    assert m["parity"]["passed"] is True
    assert m["parity"]["fp32"]["max_abs_diff"] <= 1e-4 and m["parity"]["fp32"]["top1_agreement"] == 1.0
    assert m["class_names"] == CIFAR10_CLASSES  # no training.json: CIFAR-10's
    assert m["preprocessing"]["source"].startswith("default")
    assert "cifar10-exact-subset" in m["parity"]["data"] and "test" in m["parity"]["data"]
    assert (out / "residual.onnx").is_file() and (out / "residual.int8.onnx").is_file()

    # Independently: the ONNX model is softmax(Keras logits) on real images.
    from cifar_edge.datasets import load_dataset

    pixels = load_dataset(batches_dir, splits=("test",)).split("test").images[:32]
    logits = model.predict(pixels.astype(np.float32) / 255.0, verbose=0)
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    got = ort_probabilities(out / "residual.onnx", pixels)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    assert np.abs(got - expected).max() <= 1e-4
    assert not np.allclose(logits.sum(axis=1), 1.0)  # the Keras model really outputs logits


# --- bad inputs ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mnist_shaped_model(tmp_path_factory):
    model = keras.Sequential([keras.Input((28, 28, 1)), layers.Flatten(), layers.Dense(10, activation="softmax")])
    path = tmp_path_factory.mktemp("mnist") / "mnist.keras"
    model.save(path)
    return path


def test_missing_model(cli, tmp_path, jpeg_dir):
    missing = tmp_path / "missing.keras"
    result = cli("export", missing, "--calib-data", jpeg_dir)
    result.assert_one_line_error(3, "model not found", str(missing))


def test_non_keras_file_renamed_keras(cli, tmp_path, jpeg_dir):
    fake = tmp_path / "fake.keras"
    fake.write_bytes(b"this is not a zip archive\n" * 20)
    result = cli("export", fake, "--calib-data", jpeg_dir)
    result.assert_one_line_error(3, "cannot load Keras model", str(fake))
    assert not (tmp_path / "fake.onnx").exists()


def test_wrong_suffix(cli, tmp_path, jpeg_dir):
    other = tmp_path / "model.onnx.txt"
    other.write_text("hello")
    result = cli("export", other, "--calib-data", jpeg_dir)
    result.assert_one_line_error(3, "not a Keras model file")


def test_model_with_28x28x1_input(cli, mnist_shaped_model, jpeg_dir):
    result = cli("export", mnist_shaped_model, "--calib-data", jpeg_dir)
    result.assert_one_line_error(3, "(28, 28, 1)", "(32, 32, 3)")
    assert not mnist_shaped_model.with_suffix(".onnx").exists()


def test_no_training_json_and_no_calib_data(cli, seed_run, tmp_path):
    lonely = tmp_path / "model.keras"
    shutil.copy(seed_run.model, lonely)
    result = cli("export", lonely)
    result.assert_one_line_error(3, "--calib-data")


def test_missing_calib_data(cli, seed_run, tmp_path):
    lonely = tmp_path / "model.keras"
    shutil.copy(seed_run.model, lonely)
    result = cli("export", lonely, "--calib-data", tmp_path / "nowhere")
    result.assert_one_line_error(3, "nowhere")


def test_class_names_count_must_match(cli, seed_run, jpeg_dir, tmp_path):
    result = cli("export", seed_run.model, "--class-names", "a,b,c", "--calib-data", jpeg_dir,
                 "--out", tmp_path / "out")
    result.assert_one_line_error(3, "3 class names", "10 outputs")
