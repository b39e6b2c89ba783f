"""Graph clean-ups that tf2onnx leaves undone, so every call runs fewer nodes.

Keras' Flatten becomes `Shape -> Gather -> Cast -> Slice -> Concat -> Cast ->
Reshape` (the batch size read at run time).  When the reshaped tensor's
shape is known apart from the batch, that is a constant `Reshape(x, [-1, ...])`:
seven kernel launches per call become one.
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


def simplify(proto: onnx.ModelProto) -> onnx.ModelProto:
    """All clean-ups, in place; returns the model for chaining."""
    fold_batch_reshapes(proto)
    onnx.checker.check_model(proto)
    return proto



