"""Model presets and the MAC counter (cifar_edge.trainer.models / macs)."""

from __future__ import annotations

import keras
import pytest
from keras import layers

from cifar_edge.trainer.macs import count_macs
from cifar_edge.trainer.models import build_model, build_resnet8, build_seed


def _conv_params(k, cin, cout, bias=True):
    return k * k * cin * cout + (cout if bias else 0)


def _dense_params(nin, nout):
    return nin * nout + nout


@pytest.fixture(scope="module")
def seed():
    return build_seed()


@pytest.fixture(scope="module")
def resnet8():
    return build_resnet8()


def test_seed_parameter_count(seed):
    expected = (_conv_params(3, 3, 32) + _conv_params(3, 32, 64) + _conv_params(3, 64, 128)
                + _dense_params(4 * 4 * 128, 128) + _dense_params(128, 10))
    assert expected == 356_810
    assert seed.count_params() == 356_810


def test_seed_is_the_notebook_cnn_layer_for_layer(seed):
    kinds = [type(layer).__name__ for layer in seed.layers]
    assert kinds == [
        "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D", "Conv2D", "MaxPooling2D",
        "Flatten", "Dense", "Dropout", "Dense",
    ]
    convs = [layer for layer in seed.layers if isinstance(layer, layers.Conv2D)]
    assert [c.filters for c in convs] == [32, 64, 128]
    for conv in convs:
        cfg = conv.get_config()
        assert tuple(cfg["kernel_size"]) == (3, 3)
        assert tuple(cfg["strides"]) == (1, 1)
        assert cfg["padding"] == "same"
        assert cfg["activation"] == "relu"
        assert cfg["use_bias"] is True
    for pool in (layer for layer in seed.layers if isinstance(layer, layers.MaxPooling2D)):
        assert tuple(pool.get_config()["pool_size"]) == (2, 2)
    dense1, dropout, dense2 = seed.layers[7], seed.layers[8], seed.layers[9]
    assert (dense1.units, dense1.get_config()["activation"]) == (128, "relu")
    assert dropout.rate == 0.5
    assert (dense2.units, dense2.get_config()["activation"]) == (10, "softmax")
    assert tuple(seed.inputs[0].shape) == (None, 32, 32, 3)
    assert tuple(seed.outputs[0].shape) == (None, 10)
    # per-layer parameters, in order
    assert [layer.count_params() for layer in seed.layers] == [
        896, 0, 18_496, 0, 73_856, 0, 0, 262_272, 0, 1_290,
    ]


def test_seed_output_is_a_probability_vector(seed):
    import numpy as np

    x = np.random.default_rng(0).random((3, 32, 32, 3), dtype=np.float32)
    p = np.asarray(seed(x, training=False))
    assert p.shape == (3, 10)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    assert (p >= 0).all()


def test_resnet8_parameters_and_structure(resnet8):
    assert resnet8.count_params() == 78_666
    kinds = [type(layer).__name__ for layer in resnet8.layers]
    assert kinds.count("Conv2D") == 9  # stem + 3 blocks x 2 + 2 projection shortcuts
    assert kinds.count("BatchNormalization") == 7
    assert kinds.count("Add") == 3
    assert kinds.count("GlobalAveragePooling2D") == 1
    assert [c.filters for c in resnet8.layers if isinstance(c, layers.Conv2D)
            and c.kernel_size == (1, 1)] == [32, 64]
    assert tuple(resnet8.outputs[0].shape) == (None, 10)
    assert resnet8.layers[-1].get_config()["activation"] == "softmax"


def test_seed_macs(seed):
    expected = (32 * 32 * 9 * 3 * 32 + 16 * 16 * 9 * 32 * 64 + 8 * 8 * 9 * 64 * 128
                + 2048 * 128 + 128 * 10)
    assert expected == 10_585_344
    assert count_macs(seed) == 10_585_344


def test_resnet8_macs(resnet8):
    stem = 32 * 32 * 9 * 3 * 16
    stage1 = 2 * 32 * 32 * 9 * 16 * 16
    stage2 = 16 * 16 * 9 * 16 * 32 + 16 * 16 * 9 * 32 * 32 + 16 * 16 * 16 * 32
    stage3 = 8 * 8 * 9 * 32 * 64 + 8 * 8 * 9 * 64 * 64 + 8 * 8 * 32 * 64
    expected = stem + stage1 + stage2 + stage3 + 64 * 10
    assert expected == 12_501_632
    assert count_macs(resnet8) == 12_501_632


def test_macs_for_depthwise_grouped_and_per_position_dense():
    inputs = keras.Input((8, 8, 4))
    x = layers.DepthwiseConv2D(3, padding="same")(inputs)  # 8*8*9*4
    x = layers.Conv2D(6, 3, padding="same", groups=2)(x)  # 8*8*9*4*6/2
    outputs = layers.Dense(5)(x)  # applied at each of 8*8 positions: 64*6*5
    model = keras.Model(inputs, outputs)
    assert count_macs(model) == 8 * 8 * 9 * 4 + 8 * 8 * 9 * 4 * 6 // 2 + 64 * 6 * 5


def test_macs_count_nested_models(seed):
    wrapper = keras.Sequential([keras.Input((32, 32, 3)), seed])
    assert count_macs(wrapper) == count_macs(seed)


@pytest.mark.parametrize("name", ["seed", "resnet8", "edge"])
def test_build_model_number_of_classes(name):
    model = build_model(name, num_classes=7)
    assert tuple(model.inputs[0].shape) == (None, 32, 32, 3)
    assert tuple(model.outputs[0].shape) == (None, 7)


def test_edge_structure_parameters_and_macs():
    from cifar_edge.trainer.models import build_edge

    edge = build_edge()
    whiten = edge.layers[1]
    assert (whiten.name, whiten.trainable, whiten.kernel_size, whiten.filters) == ("whiten", False, (2, 2), 24)
    convs = [layer for layer in edge.layers if isinstance(layer, layers.Conv2D)][1:]
    assert [c.filters for c in convs] == [32, 32, 96, 96, 96, 96]
    assert not any(c.use_bias for c in convs)
    # spatial sizes: 31 after the valid 2x2 whitening conv, then each block's pool halves it
    sizes = [(31, 24, 32), (15, 32, 32), (15, 32, 96), (7, 96, 96), (7, 96, 96), (3, 96, 96)]
    conv_macs = sum(s * s * 9 * cin * cout for s, cin, cout in sizes)
    assert count_macs(edge) == 31 * 31 * 4 * 3 * 24 + conv_macs + 96 * 10 == 24_089_568
    bn = 3 * (32 + 32 + 96 + 96 + 96 + 96)  # beta, moving mean, moving variance (no scale)
    assert edge.count_params() == (12 * 24 + 24) + sum(9 * cin * cout for _, cin, cout in sizes) + bn + 960
    assert edge.count_params() == 295_224
    assert edge.layers[-1].get_config()["activation"] == "softmax"
