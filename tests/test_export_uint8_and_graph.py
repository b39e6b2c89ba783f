"""`export --uint8-input` (scaling inside the graph) and the graph clean-ups."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import EXPORT_ARGS, keras_probabilities

from cifar_edge.exporter.simplify import fold_batch_reshapes
from cifar_edge.runtime.classifier import Classifier


@pytest.fixture(scope="module")
def uint8_export(cli, seed_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("uint8-export")
    result = cli("export", seed_run.model, *EXPORT_ARGS, "--uint8-input", "--out", out)
    assert result.code == 0, result.err
    return out


def test_uint8_model_takes_pixels(uint8_export):
    for name in ("model.onnx", "model.int8.onnx"):
        session = ort.InferenceSession(str(uint8_export / name), providers=["CPUExecutionProvider"])
        (inp,) = session.get_inputs()
        assert (inp.name, inp.type, inp.shape) == ("images", "tensor(uint8)", ["batch", 32, 32, 3])
    manifest = json.loads((uint8_export / "manifest.json").read_text())
    assert manifest["input"]["dtype"] == "uint8"
    assert manifest["preprocessing"]["in_graph"] is True
    assert manifest["parity"]["fp32"]["max_abs_diff"] <= 1e-4


def test_uint8_fp32_matches_keras_on_real_pixels(uint8_export, keras_seed, test_images_200):
    pixels, _ = test_images_200
    session = ort.InferenceSession(str(uint8_export / "model.onnx"), providers=["CPUExecutionProvider"])
    onnx_probs = session.run(["probabilities"], {"images": pixels})[0]
    keras_probs = keras_probabilities(keras_seed, pixels)
    assert np.abs(onnx_probs - keras_probs).max() <= 1e-4
    assert (onnx_probs.argmax(1) == keras_probs.argmax(1)).all()


def test_runtime_feeds_uint8_models_raw_pixels(uint8_export, seed_export, test_images_200):
    pixels, _ = test_images_200
    raw = Classifier(uint8_export / "model.onnx")
    scaled = Classifier(seed_export.fp32)
    assert raw.preprocess(pixels[:2]).dtype == np.uint8
    assert scaled.preprocess(pixels[:2]).dtype == np.float32
    np.testing.assert_allclose(raw.predict(pixels), scaled.predict(pixels), atol=1e-5)


def test_flatten_shape_computation_is_folded(seed_export):
    proto = onnx.load(str(seed_export.fp32))
    ops = [n.op_type for n in proto.graph.node]
    assert "Shape" not in ops and "Concat" not in ops
    reshapes = [n for n in proto.graph.node if n.op_type == "Reshape"]
    assert len(reshapes) == 1
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    assert inits[reshapes[0].input[1]].tolist() == [-1, 4 * 4 * 128]


def test_fold_batch_reshapes_keeps_outputs():
    from onnx import TensorProto, helper

    # x [batch, 2, 3] -> Reshape(x, concat(shape(x)[0:1], [6])) -> [batch, 6]
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Slice", ["s", "zero", "one"], ["b"]),
        helper.make_node("Concat", ["b", "six"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 6])],
        [helper.make_tensor("zero", TensorProto.INT64, [1], [0]), helper.make_tensor("one", TensorProto.INT64, [1], [1]),
         helper.make_tensor("six", TensorProto.INT64, [1], [6])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.arange(4 * 6, dtype=np.float32).reshape(4, 2, 3)
    before = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert fold_batch_reshapes(proto) == 1
    assert [n.op_type for n in proto.graph.node] == ["Reshape"]
    after = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(before, after)


def test_fold_leaves_non_batch_reshapes_alone():
    from onnx import TensorProto, helper

    # target = shape(x) reversed: not of the form [batch, constants...]
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Slice", ["s", "m1", "big", "zero", "m1"], ["rev"]),
        helper.make_node("Reshape", ["x", "rev"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [5, "batch"])],
        [helper.make_tensor("m1", TensorProto.INT64, [1], [-1]),
         helper.make_tensor("big", TensorProto.INT64, [1], [-(2**62)]),
         helper.make_tensor("zero", TensorProto.INT64, [1], [0])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert fold_batch_reshapes(proto) == 0
    assert len(proto.graph.node) == 3


def _conv_pool_bn_relu(scale: np.ndarray, scale_shape: tuple[int, ...]) -> onnx.ModelProto:
    """x [N,3,8,8] -> Conv(4 filters) -> MaxPool 2x2 -> Mul(scale) -> Add(shift) -> Relu."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w", "c"], ["conv"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["conv"], ["pool"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Mul", ["pool", "s"], ["mul"]),
        helper.make_node("Add", ["mul", "b"], ["add"]),
        helper.make_node("Relu", ["add"], ["y"]),
    ]
    inits = [onnx.numpy_helper.from_array(a.astype(np.float32), name) for name, a in (
        ("w", rng.normal(size=(4, 3, 3, 3))), ("c", rng.normal(size=4)),
        ("s", scale.reshape(scale_shape)), ("b", rng.normal(size=scale_shape)))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_bn_after_pool_folds_into_the_conv_exactly():
    from cifar_edge.exporter.simplify import fold_bn_through_maxpool

    proto = _conv_pool_bn_relu(np.array([0.5, 2.0, 1e-3, 3.0]), (1, 4, 1, 1))
    x = np.random.default_rng(1).normal(size=(2, 3, 8, 8)).astype(np.float32)
    before = _run(proto, x)
    assert fold_bn_through_maxpool(proto) == 1
    assert [n.op_type for n in proto.graph.node] == ["Conv", "Relu", "MaxPool"]
    np.testing.assert_allclose(_run(proto, x), before, rtol=1e-5, atol=1e-5)
    assert proto.graph.output[0].name == "y"


def test_bn_fold_without_relu_keeps_the_pool_output():
    from onnx import helper

    from cifar_edge.exporter.simplify import fold_bn_through_maxpool

    proto = _conv_pool_bn_relu(np.array([0.5, 2.0, 1e-3, 3.0]), (1, 4, 1, 1))
    relu = proto.graph.node[-1]
    proto.graph.node.remove(relu)
    proto.graph.node.append(helper.make_node("Sigmoid", ["add"], ["y"]))  # not a ReLU: the pool stays first
    x = np.random.default_rng(2).normal(size=(3, 3, 8, 8)).astype(np.float32)
    before = _run(proto, x)
    assert fold_bn_through_maxpool(proto) == 1
    assert [n.op_type for n in proto.graph.node] == ["Conv", "MaxPool", "Sigmoid"]
    np.testing.assert_allclose(_run(proto, x), before, rtol=1e-5, atol=1e-6)


def test_bn_fold_keeps_pools_with_indices():
    from cifar_edge.exporter.simplify import fold_bn_through_maxpool

    proto = _conv_pool_bn_relu(np.array([0.5, 2.0, 1.0, 3.0]), (1, 4, 1, 1))
    proto.graph.node[1].output.append("indices")  # argmax positions would move under the ReLU
    assert fold_bn_through_maxpool(proto) == 0


@pytest.mark.parametrize(("scale", "shape"), [
    (np.array([0.5, -2.0, 1.0, 3.0]), (1, 4, 1, 1)),  # a negative scale turns max into min
    (np.array([0.5, 2.0, 1.0, 3.0]), (4,)),  # broadcasts along the width, not the channels
])
def test_bn_fold_leaves_other_graphs_alone(scale, shape):
    from cifar_edge.exporter.simplify import fold_bn_through_maxpool

    proto = _conv_pool_bn_relu(scale, shape)
    assert fold_bn_through_maxpool(proto) == 0
    assert [n.op_type for n in proto.graph.node] == ["Conv", "MaxPool", "Mul", "Add", "Relu"]


def test_uint8_int8_model_scales_in_its_stem_padding(uint8_export, seed_export, test_images_200):
    proto = onnx.load(str(uint8_export / "model.int8.onnx"))
    assert [n.op_type for n in proto.graph.node if "images" in n.input] == ["Cast"]
    assert [n.op_type for n in proto.graph.node[:2]] == ["Cast", "MatMul"]  # no Mul/Add: folded in
    assert not any(n.op_type in ("Mul", "Add") for n in proto.graph.node)
    manifest = json.loads((uint8_export / "manifest.json").read_text())
    assert manifest["preprocessing"]["in_graph_how"]["int8"] == "folded into the stem padding MatMul"
    assert "padded" in manifest["quantization"]["stem"]
    # The same quantization as the float-input export, and the same floats into it: the same numbers.
    pixels, _ = test_images_200
    u8 = ort.InferenceSession(str(uint8_export / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    f32 = ort.InferenceSession(str(seed_export.int8), providers=["CPUExecutionProvider"])
    a = u8.run(["probabilities"], {"images": pixels})[0]
    b = f32.run(["probabilities"], {"images": Classifier(seed_export.int8).preprocess(pixels)})[0]
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("scale, offset", [((2 / 255,) * 3, (-1.0,) * 3), ((0.01, 0.02, 0.03), (0.1, -0.2, 0.3))])
def test_uint8_scaling_folds_into_the_stem_matmul_exactly(seed_export, test_images_200, scale, offset):
    from cifar_edge.exporter.uint8_input import to_uint8_input
    from cifar_edge.runtime.manifest import Preprocessing

    prep = Preprocessing(scale=scale, offset=offset)  # no whole-number zero point: cannot fuse into the quantize
    proto = onnx.load(str(seed_export.int8))
    eye = proto.graph.node[0].input[1]
    assert to_uint8_input(proto, prep) == "folded into the stem padding MatMul"
    assert [n.op_type for n in proto.graph.node[:3]] == ["Cast", "MatMul", "Add"]
    assert eye not in {i.name for i in proto.graph.initializer}  # the unscaled matrix is gone
    pixels, _ = test_images_200
    out = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["probabilities"], {"images": pixels[:16]})[0]
    ref = ort.InferenceSession(str(seed_export.int8), providers=["CPUExecutionProvider"]).run(
        ["probabilities"], {"images": prep.apply(pixels[:16])})[0]
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("scale, offset, prefix, constant_shapes", [
    ((1 / 255,) * 3, (0.0,) * 3, ["Cast", "Mul"], [()]),  # the default: no Add, a scalar Mul
    ((2 / 255,) * 3, (-1.0,) * 3, ["Cast", "Mul", "Add"], [(), ()]),
    ((0.01, 0.02, 0.03), (0.1, -0.2, 0.3), ["Cast", "Mul", "Add"], [(3,), (3,)]),
])
def test_uint8_fallback_prefix_when_nothing_can_absorb_the_scaling(seed_export, test_images_200, scale, offset,
                                                                    prefix, constant_shapes):
    from cifar_edge.exporter.uint8_input import to_uint8_input
    from cifar_edge.runtime.manifest import Preprocessing

    prep = Preprocessing(scale=scale, offset=offset)
    proto = onnx.load(str(seed_export.fp32))  # float graph: pixels meet a Transpose and a float Conv
    assert to_uint8_input(proto, prep) == "/".join(prefix) + " prefix"
    assert [n.op_type for n in proto.graph.node[:len(prefix) + 1]] == prefix + ["Transpose"]
    # A scalar where all three channels agree: onnxruntime broadcasts a 3-vector along the last axis slowly.
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    assert [inits[n.input[1]].shape for n in proto.graph.node[1:len(prefix)]] == constant_shapes
    pixels, _ = test_images_200
    out = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["probabilities"], {"images": pixels[:8]})[0]
    ref = ort.InferenceSession(str(seed_export.fp32), providers=["CPUExecutionProvider"]).run(
        ["probabilities"], {"images": prep.apply(pixels[:8])})[0]
    np.testing.assert_allclose(out, ref, atol=1e-6)


def _nhwc_stem(out_channels: int) -> onnx.ModelProto:
    """images [N,32,32,3] -> Transpose to NCHW -> Conv 3x3 (3 -> out_channels) -> Relu."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Transpose", ["images"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "w", "c"], ["conv"], name="stem", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["y"])]
    inits = [onnx.numpy_helper.from_array(rng.normal(size=(out_channels, 3, 3, 3)).astype(np.float32), "w"),
             onnx.numpy_helper.from_array(rng.normal(size=out_channels).astype(np.float32), "c")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 32, 32, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", out_channels, 32, 32])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_stem_padding_to_four_channels_is_exact():
    from cifar_edge.exporter.quantize import pad_stem_channels

    proto = _nhwc_stem(32)
    x = np.random.default_rng(5).random((3, 32, 32, 3), dtype=np.float32)
    run = lambda p: ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    before = run(proto)
    assert pad_stem_channels(proto) == "stem__stem_pad"
    assert [n.op_type for n in proto.graph.node] == ["MatMul", "Transpose", "Conv", "Relu"]
    weight = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}["w"]
    assert weight.shape == (32, 4, 3, 3) and not weight[:, 3].any()
    onnx.checker.check_model(proto)
    np.testing.assert_array_equal(run(proto), before)
    assert pad_stem_channels(proto) is None  # already four channels
    assert pad_stem_channels(_nhwc_stem(12)) is None  # too few filters for the direct kernel: left alone


def test_int8_export_pads_the_stem_exactly(cli, seed_run, seed_export, test_images_200, tmp_path):
    from cifar_edge.exporter.uint8_input import to_uint8_input
    from cifar_edge.runtime.manifest import Preprocessing

    int8 = onnx.load(str(seed_export.int8))
    assert int8.graph.node[0].op_type == "MatMul"  # kept in float, before everything else
    manifest = json.loads((seed_export.dir / "manifest.json").read_text())
    assert "padded" in manifest["quantization"]["stem"]
    # The padding changes no number: the unpadded int8 model gives the same probabilities.
    result = cli("export", seed_run.model, *EXPORT_ARGS, "--no-pad-stem", "--out", tmp_path)
    assert result.code == 0, result.err
    unpadded = onnx.load(str(tmp_path / "model.int8.onnx"))
    assert unpadded.graph.node[0].op_type != "MatMul"
    pixels = test_images_200[0][:64]
    padded = Classifier(seed_export.int8).predict(pixels)
    np.testing.assert_allclose(Classifier(tmp_path / "model.int8.onnx").predict(pixels), padded, atol=1e-6)
    # Unpadded, a uint8 input vanishes into the input quantization: pixels go straight in.
    assert to_uint8_input(unpadded, Preprocessing()) == "fused into the input quantization"
    assert [n.op_type for n in unpadded.graph.node if "images" in n.input] == ["Transpose"]
    assert not any(n.op_type in ("Cast", "Mul") for n in unpadded.graph.node)
    fused = ort.InferenceSession(unpadded.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["probabilities"], {"images": pixels})[0]
    # The fused input quantization is pixel * 1/255, zero point 0: what min-max calibration finds on
    # real images (some pixels 0, some 255), so the numbers are the same too.
    np.testing.assert_allclose(fused, padded, atol=1e-6)
