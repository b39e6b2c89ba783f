"""Graph clean-ups that tf2onnx leaves undone, so every call runs fewer nodes.

- Keras' Flatten becomes `Shape -> Gather -> Cast -> Slice -> Concat -> Cast ->
  Reshape` (the batch size read at run time).  When the reshaped tensor's
  shape is known apart from the batch, that is a constant `Reshape(x, [-1, ...])`:
  seven kernel launches per call become one.
- A BatchNorm after a max pool (the `edge` blocks: conv -> pool -> BN -> ReLU)
  stays a float Mul and Add that tf2onnx cannot fold; in the int8 model each
  is a Dequantize -> Mul/Add -> Quantize detour.  With a positive scale the
  BN moves into the conv exactly (max(s*x + b) = s*max(x) + b per channel),
  and the ReLU moves before the pool (they commute), so the int8 model
  becomes QLinearConv (ReLU fused) -> uint8 MaxPool.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def _run_shape_tensors(proto: onnx.ModelProto, names: list[str], batch: int) -> list[np.ndarray]:
    """Values of the named tensors for a zero input of the given batch size."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    for name in names:
        probe.graph.output.append(onnx.ValueInfoProto(name=name))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    dtype = np.uint8 if inp.type == "tensor(uint8)" else np.float32
    shape = [batch, *(d if isinstance(d, int) else 1 for d in inp.shape[1:])]
    return session.run(names, {inp.name: np.zeros(shape, dtype=dtype)})


def fold_batch_reshapes(proto: onnx.ModelProto) -> int:
    """Replace run-time-computed Reshape targets of the form [batch, c1, c2...] by constants
    [-1, c1, c2...]; returns how many were folded.

    The target is probed at two batch sizes: only a target whose first entry
    is the batch and whose other entries do not change is folded.
    """
    initializers = {i.name for i in proto.graph.initializer}
    candidates = [n for n in proto.graph.node if n.op_type == "Reshape" and n.input[1] not in initializers]
    if not candidates:
        return 0
    names = [n.input[1] for n in candidates]
    at2, at3 = _run_shape_tensors(proto, names, 2), _run_shape_tensors(proto, names, 3)
    folded = 0
    for node, a, b in zip(candidates, at2, at3):
        a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
        if len(a) < 2 or a[0] != 2 or b[0] != 3 or not np.array_equal(a[1:], b[1:]) or (a[1:] < 0).any():
            continue
        name = f"{node.output[0]}__static_shape"
        proto.graph.initializer.append(numpy_helper.from_array(np.array([-1, *a[1:]], dtype=np.int64), name))
        node.input[1] = name
        folded += 1
    if folded:
        remove_dead_nodes(proto)
    return folded


def remove_dead_nodes(proto: onnx.ModelProto) -> None:
    """Drop nodes and initializers nothing downstream of the graph outputs uses."""
    graph = proto.graph
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(out in needed for out in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    unused = [i for i in graph.initializer if i.name not in needed]
    for init in unused:
        graph.initializer.remove(init)


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto | None]]:
    """Tensor name -> the nodes that read it (None for a graph output)."""
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    for out in graph.output:
        users.setdefault(out.name, []).append(None)  # a graph output has a consumer outside
    return users


def only_consumer(users: dict, name: str, op_type: str) -> onnx.NodeProto | None:
    """The one node of `op_type` reading `name`, if nothing else (not even a graph output) reads it."""
    found = users.get(name, [])
    return found[0] if len(found) == 1 and found[0] is not None and found[0].op_type == op_type else None


def fold_bn_through_maxpool(proto: onnx.ModelProto) -> int:
    """Conv -> MaxPool -> Mul(s) / Add(b) chain [-> Relu] with per-channel constants becomes
    Conv(W*s, c*s + b) [-> Relu] -> MaxPool when the overall scale is positive;
    returns how many pools were folded.

    Exact: for s > 0 the per-channel affine map is increasing, so it commutes
    with the max (and so does ReLU).  Anything else (a negative scale, a
    tensor used twice, a shared weight) is left as it is.
    """
    graph = proto.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return 0  # control flow: subgraphs may read these tensors too; leave the graph alone
    inits = {i.name: i for i in graph.initializer}
    users = consumers(graph)
    folded, dead = 0, []
    for conv in list(graph.node):
        if conv.op_type != "Conv" or conv.input[1] not in inits or len(users.get(conv.input[1], [])) != 1:
            continue
        pool = only_consumer(users, conv.output[0], "MaxPool")
        if pool is None or (len(pool.output) > 1 and pool.output[1]):
            continue  # pool indices would change where a window is all negative
        weight = numpy_helper.to_array(inits[conv.input[1]])
        if weight.ndim != 4:
            continue  # 2-D convs only: the constants below are matched against NCHW
        channels = weight.shape[0]
        scale, shift = np.ones(channels), np.zeros(channels)
        chain, tail = [], pool.output[0]
        while True:
            found = users.get(tail, [])
            node = found[0] if len(found) == 1 and found[0] is not None else None
            if node is None or node.op_type not in ("Mul", "Add") or node.input[0] != tail:
                break
            const = numpy_helper.to_array(inits[node.input[1]]) if node.input[1] in inits else None
            if const is None or (1,) * (4 - const.ndim) + const.shape != (1, channels, 1, 1):
                break  # only constants along NCHW's channel axis
            const = const.reshape(-1).astype(np.float64)
            if node.op_type == "Mul":
                scale, shift = scale * const, shift * const
            else:
                shift = shift + const
            chain.append(node)
            tail = node.output[0]
        if not chain or not (scale > 0).all():
            continue
        bias = np.zeros(channels)
        if len(conv.input) > 2 and conv.input[2]:
            if conv.input[2] not in inits or len(users.get(conv.input[2], [])) != 1:
                continue
            bias = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
        new_weight = (weight * scale.reshape(-1, *[1] * (weight.ndim - 1))).astype(weight.dtype)
        inits[conv.input[1]].CopyFrom(numpy_helper.from_array(new_weight, conv.input[1]))
        bias_name = f"{conv.output[0]}__folded_bias"
        graph.initializer.append(numpy_helper.from_array((bias * scale + shift).astype(weight.dtype), bias_name))
        del conv.input[2:]
        conv.input.append(bias_name)
        relu = only_consumer(users, tail, "Relu")
        if relu is not None:  # Conv -> Relu -> MaxPool, and the pool takes the Relu's place
            pooled = relu.output[0]
            relu.input[0] = conv.output[0]
            relu.output[0] = f"{conv.output[0]}__relu"
            pool.input[0] = relu.output[0]
            pool.output[0] = pooled
        else:
            pool.output[0] = tail
        dead += chain
        folded += 1
    for node in dead:
        graph.node.remove(node)
    if folded:
        _topological_sort(graph)
        remove_dead_nodes(proto)
    return folded


def _topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder nodes so each comes after its inputs' producers (rewiring may break the order)."""
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ValueError("graph has a cycle or a missing input")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def simplify(proto: onnx.ModelProto) -> onnx.ModelProto:
    """All clean-ups, in place; returns the model for chaining."""
    fold_batch_reshapes(proto)
    fold_bn_through_maxpool(proto)
    onnx.checker.check_model(proto)
    return proto



