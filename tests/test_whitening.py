"""The edge preset's frozen patch-whitening layer (cifar_edge.trainer.whitening), on real images."""

from __future__ import annotations

import numpy as np
import pytest

from cifar_edge.trainer.models import build_edge
from cifar_edge.trainer.whitening import PATCH_STEP, WHITEN_LAYER, fit_whitening, patch_whitening


@pytest.fixture(scope="module")
def images(test_images_200):
    return test_images_200[0].astype(np.float32) / 255


def _conv2x2(x, kernel, bias, step=1):
    patches = np.lib.stride_tricks.sliding_window_view(x, (2, 2, 3), axis=(1, 2, 3))[:, ::step, ::step]
    patches = patches.reshape(-1, 12)
    return patches @ kernel.reshape(12, -1) + bias


def test_whitened_patches_are_centred_and_decorrelated(images):
    kernel, bias = patch_whitening(images, kernel_size=2, eps=1e-8)
    assert kernel.shape == (2, 2, 3, 24) and bias.shape == (24,)
    # on the patches it was estimated from (all 200 images are sampled), exactly white;
    # the second 12 filters are the negatives
    out = _conv2x2(images, kernel, bias, step=PATCH_STEP)[:, :12]
    assert np.abs(out.mean(axis=0)).max() < 0.05
    cov = np.cov(out, rowvar=False)
    np.testing.assert_allclose(cov, np.eye(12), atol=0.05)
    np.testing.assert_allclose(kernel[..., 12:], -kernel[..., :12])


def test_epsilon_damps_the_low_variance_directions(images):
    kernel, bias = patch_whitening(images, kernel_size=2)
    variances = np.var(_conv2x2(images, kernel, bias)[:, :12], axis=0)
    assert variances.max() == pytest.approx(1.0, abs=0.01)  # the strong directions: unit variance
    assert variances.min() < 0.5  # the weakest (fine colour detail) are not blown up to 1


def test_fit_whitening_sets_the_frozen_first_layer(images):
    model = build_edge()
    layer = model.get_layer(WHITEN_LAYER)
    assert model.layers.index(layer) == 1 and not layer.trainable
    assert fit_whitening(model, images)
    kernel, bias = patch_whitening(images, 2)
    np.testing.assert_array_equal(layer.get_weights()[0], kernel)
    np.testing.assert_array_equal(layer.get_weights()[1], bias)


def test_fit_whitening_leaves_models_without_the_layer_alone(images):
    from cifar_edge.trainer.models import build_seed

    model = build_seed()
    before = [w.copy() for w in model.get_weights()]
    assert fit_whitening(model, images) is False
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_the_keras_layer_whitens_real_images(images):
    import keras

    model = build_edge()
    fit_whitening(model, images)
    whiten = keras.Model(model.inputs, model.get_layer(WHITEN_LAYER).output)
    out = np.asarray(whiten(images)).reshape(-1, 24)[:, :12]
    assert np.abs(out.mean(axis=0)).max() < 0.05
    variances = out.var(axis=0)
    assert variances.max() == pytest.approx(1.0, abs=0.05)
    cov = np.cov(out, rowvar=False)
    assert np.abs(cov - np.diag(np.diag(cov))).max() < 0.05  # decorrelated


def test_preprocess_is_applied_to_the_sample(test_images_200, images):
    raw = test_images_200[0]
    direct = patch_whitening(images, 2, seed=3)
    via = patch_whitening(raw, 2, seed=3, preprocess=lambda x: x.astype(np.float32) / 255)
    for a, b in zip(direct, via):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
