"""ONNX graph surgery with `onnx.helper`: prune, rename, bind stream states to their zeros.

Part of `engine.export` (see its package docstring for the folder it writes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..onnx_format import (
    StateSpec,
)


def _onnx_dtype(onnx: Any, dtype: str) -> int:
    return int(onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


def _prune(onnx: Any, graph: Any) -> None:
    """Drop the nodes and initializers that no graph output depends on."""
    needed = {output.name for output in graph.output}
    kept = []
    for node in reversed(list(graph.node)):
        if any(name in needed for name in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
            for attribute in node.attribute:
                for subgraph in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                    needed.update(_names_used(subgraph))
    del graph.node[:]
    graph.node.extend(reversed(kept))
    initializers = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    value_info = [v for v in graph.value_info if v.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(value_info)


def _names_used(graph: Any) -> set[str]:
    names: set[str] = set()
    for node in graph.node:
        names.update(name for name in node.input if name)
        for attribute in node.attribute:
            if attribute.HasField("g"):
                names |= _names_used(attribute.g)
            for subgraph in attribute.graphs:
                names |= _names_used(subgraph)
    return names


def _bind_initial_state(
    onnx: Any,
    stream: Any,
    main_input: str,
    specs: Sequence[StateSpec],
    ring: dict[str, int] | None = None,
    per_frame: int = 1,
) -> Any:
    """The batch graph: a stream graph whose state inputs are zeros made in the graph (batch from the main input)
    and whose state outputs are gone. `ring`: the stream graph's ring entry; its KV caches get the slots
    (`onnx_format.ring_slots`) of one call of the whole input, whose last dim holds `per_frame` values a frame."""
    helper = onnx.helper
    model = onnx.ModelProto()
    model.CopyFrom(stream)
    graph = model.graph
    state_inputs = {s.input for s in specs}
    state_outputs = {s.output for s in specs}
    inputs = [i for i in graph.input if i.name not in state_inputs]
    outputs = [o for o in graph.output if o.name not in state_outputs]
    nodes = [helper.make_node("Shape", [main_input], ["bind/batch"], start=0, end=1, name="bind/batch")]

    def constant(name: str, values: Sequence[int]) -> str:
        tensor = helper.make_tensor(name, onnx.TensorProto.INT64, [len(values)], list(values))
        nodes.append(helper.make_node("Constant", [], [name], value=tensor, name=name))
        return name

    if ring is not None and any(spec.ringed for spec in specs):
        mul, div, add = int(ring["steps_per_frame"]), per_frame, int(ring["context"]) - 1
        nodes.append(helper.make_node("Shape", [main_input], ["bind/length"], start=2, end=3, name="bind/length"))
        nodes.append(helper.make_node("Mul", ["bind/length", constant("bind/ring_mul", [mul])], ["bind/ring_m"]))
        nodes.append(helper.make_node("Div", ["bind/ring_m", constant("bind/ring_div", [div])], ["bind/ring_d"]))
        nodes.append(helper.make_node("Add", ["bind/ring_d", constant("bind/ring_add", [add])], ["bind/ring"]))
    for spec in specs:
        dtype = _onnx_dtype(onnx, spec.dtype)
        if any(isinstance(dim, str) for dim in spec.shape):
            parts = []
            for axis, dim in enumerate(spec.shape):
                if dim == "batch":
                    parts.append("bind/batch")
                elif dim == "ring":
                    if ring is None:
                        raise ValueError(f"state {spec.input} is a ring KV cache: its batch graph needs `ring`")
                    parts.append("bind/ring")
                else:
                    parts.append(constant(f"bind/{spec.input}/dim{axis}", [int(dim)]))
            nodes.append(helper.make_node("Concat", parts, [f"bind/{spec.input}/shape"], axis=0))
            nodes.append(
                helper.make_node(
                    "ConstantOfShape",
                    [f"bind/{spec.input}/shape"],
                    [spec.input],
                    value=helper.make_tensor("zero", dtype, [1], [0]),
                )
            )
        else:
            shape = [int(d) for d in spec.shape]
            zeros = helper.make_tensor(f"bind/{spec.input}", dtype, shape, np.zeros(shape, spec.dtype).ravel().tolist())
            nodes.append(helper.make_node("Constant", [], [spec.input], value=zeros))
    del graph.input[:]
    graph.input.extend(inputs)
    del graph.output[:]
    graph.output.extend(outputs)
    body = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + body)
    _prune(onnx, graph)
    return model


def _in_place_states(model: Any, specs: Sequence[StateSpec]) -> list[str]:
    """The state inputs a run may update in place: their values are read by one node only, a ScatterElements
    whose output is the matching state output (ONNX Runtime's scatter skips its copy when input and output share
    a buffer, and no other node reads the old values, so binding both to one buffer is safe). `Shape` and `Size`
    read no values (the ring's slot count comes from one)."""
    readers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        if node.op_type in ("Shape", "Size"):
            continue
        for name in node.input:
            readers.setdefault(name, []).append(node)
    found = []
    for spec in specs:
        nodes = readers.get(spec.input, [])
        if (
            len(nodes) == 1
            and nodes[0].op_type == "ScatterElements"
            and list(nodes[0].input).count(spec.input) == 1
            and nodes[0].input[0] == spec.input
            and list(nodes[0].output) == [spec.output]
        ):
            found.append(spec.input)
    return found


def _rename(graph: Any, old: str, new: str) -> None:
    """Rename value `old` to `new` everywhere in `graph` (nodes, inputs, outputs)."""
    for node in graph.node:
        node.input[:] = [new if name == old else name for name in node.input]
        node.output[:] = [new if name == old else name for name in node.output]
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name == old:
            value.name = new


def _set_dims(value: Any, dims: Sequence[int | str]) -> None:
    shape = value.type.tensor_type.shape
    for dim, wanted in zip(shape.dim, dims):
        if isinstance(wanted, str):
            dim.dim_param = wanted
        else:
            dim.dim_value = wanted
