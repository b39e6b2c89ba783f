"""Test-time flip (cifar_edge.keras_layers): the wrapper, saving/loading, and its ONNX export."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from cifar_edge.keras_layers import HorizontalFlip, with_flip_tta
from cifar_edge.trainer.macs import count_macs
from cifar_edge.trainer.models import build_edge


@pytest.fixture(scope="module")
def edge_pair(test_images_200):
    from cifar_edge.trainer.whitening import fit_whitening

    images = test_images_200[0].astype(np.float32) / 255
    model = build_edge()
    fit_whitening(model, images)
    # Trained-looking BatchNorm statistics, so exporting's BN fold has real numbers to get right.
    rng = np.random.default_rng(3)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            beta, mean, var = (w.numpy() for w in layer.weights)
            layer.set_weights([rng.normal(0, 0.5, beta.shape), rng.normal(0, 0.5, mean.shape),
                               rng.uniform(0.2, 3.0, var.shape)])
    return model, with_flip_tta(model), images[:16]


def test_flip_mirrors_the_width_axis(test_images_200):
    x = test_images_200[0][:2].astype(np.float32)
    flipped = np.asarray(HorizontalFlip()(x))
    np.testing.assert_array_equal(flipped, x[:, :, ::-1, :])
    np.testing.assert_array_equal(np.asarray(HorizontalFlip()(flipped)), x)


def test_wrapper_averages_the_two_views(edge_pair):
    model, tta, x = edge_pair
    expected = (np.asarray(model(x)) + np.asarray(model(x[:, :, ::-1]))) / 2
    got = np.asarray(tta(x))
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
    assert tta.count_params() == model.count_params()  # shared weights
    assert count_macs(tta) == 2 * count_macs(model)


def test_saved_wrapper_loads_with_the_exporters_loader(edge_pair, tmp_path):
    from cifar_edge.exporter.keras_model import load_keras_classifier

    _, tta, x = edge_pair
    path = tmp_path / "tta.keras"
    tta.save(path)
    loaded = load_keras_classifier(path)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(tta(x)), atol=1e-6)


def test_wrapper_converts_to_onnx_with_parity(edge_pair):
    import onnxruntime as ort

    from cifar_edge.exporter.convert import keras_to_onnx

    _, tta, x = edge_pair
    proto = keras_to_onnx(tta)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    (probs,) = session.run(None, {session.get_inputs()[0].name: x})
    np.testing.assert_allclose(probs, np.asarray(tta(x)), atol=1e-5)


def test_export_runs_both_views_as_one_batch(edge_pair):
    # One pass over a 2N batch: the network's 7 convs once (not twice), its post-pool
    # BatchNorms folded into the convs (no float Mul/Add left), parity at odd batch sizes.
    import onnxruntime as ort

    from cifar_edge.exporter.convert import keras_to_onnx
    from cifar_edge.keras_layers import flip_tta_inner

    model, tta, x = edge_pair
    assert flip_tta_inner(tta) is model and flip_tta_inner(model) is None
    views = keras.Input((32, 32, 3))  # the same four layers wired otherwise is no flip average
    mirror = HorizontalFlip()(views)
    miswired = keras.Model(views, keras.layers.Average()([model(mirror), model(mirror)]))
    assert len(miswired.layers) == len(tta.layers) and flip_tta_inner(miswired) is None
    proto = keras_to_onnx(tta)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Conv") == 7 and ops.count("Softmax") == 1 and ops.count("Concat") == 1
    assert "Mul" not in ops and "Add" not in ops and "ReverseSequence" not in ops
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        (probs,) = session.run(None, {session.get_inputs()[0].name: x[:n]})
        assert probs.shape == (n, 10)
        np.testing.assert_allclose(probs, np.asarray(tta(x[:n])), atol=1e-5)


def test_saved_wrapper_loads_in_a_fresh_process(edge_pair, tmp_path):
    # The loader itself must register HorizontalFlip: nothing else is imported there.
    import subprocess
    import sys

    _, tta, x = edge_pair
    path = tmp_path / "tta.keras"
    tta.save(path)
    np.save(tmp_path / "x.npy", x)
    code = ("import sys, numpy as np; from cifar_edge.exporter.keras_model import load_keras_classifier; "
            "m = load_keras_classifier(sys.argv[1]); np.save(sys.argv[3], np.asarray(m(np.load(sys.argv[2]))))")
    proc = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "x.npy"), str(tmp_path / "p.npy")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), np.asarray(tta(x)), atol=1e-6)
