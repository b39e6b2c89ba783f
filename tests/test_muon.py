"""The Muon + SGD optimizer: the orthogonalization, one step by hand, and SGD's part unchanged."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from cifar_edge.trainer.muon import ConvMuon, orthogonalize  # noqa: E402


@pytest.mark.parametrize("shape", [(20, 50), (50, 20)])
def test_orthogonalize_is_close_to_u_vt(shape):
    g = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    got = keras.ops.convert_to_numpy(orthogonalize(keras.ops.convert_to_tensor(g)))
    u, _, vt = np.linalg.svd(g, full_matrices=False)
    singular = np.linalg.svd(got, compute_uv=False)
    # Five quintic steps leave the singular values near 1 (Muon's iteration: about 0.7..1.2), not exact.
    assert got.shape == shape
    assert singular.min() > 0.6 and singular.max() < 1.25, singular
    cosine = (got * (u @ vt)).sum() / np.linalg.norm(got) / np.linalg.norm(u @ vt)
    assert cosine > 0.95


def _model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
    x = keras.layers.BatchNormalization(scale=False)(x)
    x = keras.layers.GlobalMaxPooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(2, use_bias=False)(x))


def test_one_step_by_hand():
    """Conv kernel: renormalized to sqrt(out), then minus lr * ratio * orth(nesterov momentum).
    Everything else: exactly keras.optimizers.SGD(nesterov=True)."""
    keras.utils.set_random_seed(0)
    model = _model()
    kernel, beta, dense = model.trainable_variables
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal(v.shape).astype(np.float32) for v in model.trainable_variables]
    before = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]

    lr, ratio, mu_muon, mu_sgd = 0.4, 0.25, 0.7, 0.9
    opt = ConvMuon(learning_rate=lr, momentum=mu_sgd, muon_lr_ratio=ratio, muon_momentum=mu_muon)
    opt.apply_gradients(zip([keras.ops.convert_to_tensor(g) for g in grads], model.trainable_variables))

    g = grads[0]
    m = g  # first step: momentum buffer = gradient
    update = keras.ops.convert_to_numpy(orthogonalize(keras.ops.convert_to_tensor((g + mu_muon * m).reshape(-1, 4))))
    w = before[0] * (2.0 / np.linalg.norm(before[0]))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(kernel), w - lr * ratio * update.reshape(g.shape),
                               rtol=1e-5, atol=1e-6)

    sgd_model = _model()
    for v, value in zip(sgd_model.trainable_variables, before):
        v.assign(value)
    sgd = keras.optimizers.SGD(learning_rate=lr, momentum=mu_sgd, nesterov=True)
    sgd.apply_gradients(zip([keras.ops.convert_to_tensor(g) for g in grads], sgd_model.trainable_variables))
    for ours, theirs in ((beta, sgd_model.trainable_variables[1]), (dense, sgd_model.trainable_variables[2])):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(ours), keras.ops.convert_to_numpy(theirs), rtol=1e-6)


def test_config_round_trip():
    opt = ConvMuon(learning_rate=0.3, momentum=0.8, muon_lr_ratio=0.5, muon_momentum=0.6, ns_steps=4)
    again = ConvMuon.from_config(opt.get_config())
    assert (again.momentum, again.muon_lr_ratio, again.muon_momentum, again.ns_steps) == (0.8, 0.5, 0.6, 4)
    assert float(keras.ops.convert_to_numpy(again.learning_rate)) == pytest.approx(0.3)
