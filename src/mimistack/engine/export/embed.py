"""`embed.onnx`: codes + level mask -> the decoder's latent (the level algebra as a graph).

Part of `engine.export` (see its package docstring for the folder it writes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...levels import CodebookTables


def _embed_nodes(
    onnx: Any, tables: CodebookTables, codes: str, mask: str, latent: str, prefix: str = "embed"
) -> tuple[list[Any], list[Any]]:
    """Nodes and initializers: codes int64 `[B, K, N]` + level mask float `[K]` -> latent `[B, D, N]`.

    Each level's centroid is gathered (codes clipped to the codebook, so rows of dropped levels may hold
    anything), scaled by its mask entry (0 leaves the level out), summed per branch and projected, as
    `levels.latent_from_codes` does.
    """
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    num_semantic, num_levels = tables.num_semantic, tables.num_levels
    size = tables.codebook_size
    table = np.concatenate([tables.semantic_codebooks, tables.acoustic_codebooks]).reshape(num_levels * size, -1)

    def name(text: str) -> str:
        return f"{prefix}/{text}"

    initializers = [
        numpy_helper.from_array(np.ascontiguousarray(table, dtype=np.float32), name("table")),
        numpy_helper.from_array(
            (np.arange(num_levels, dtype=np.int64) * size).reshape(1, num_levels, 1), name("offsets")
        ),
        numpy_helper.from_array(np.array([1, num_levels, 1, 1], dtype=np.int64), name("mask_shape")),
        numpy_helper.from_array(np.array([num_semantic, num_levels - num_semantic], dtype=np.int64), name("split")),
        numpy_helper.from_array(np.array([1], dtype=np.int64), name("level_axis")),
        numpy_helper.from_array(np.array(0, dtype=np.int64), name("lowest")),
        numpy_helper.from_array(np.array(size - 1, dtype=np.int64), name("highest")),
        numpy_helper.from_array(
            np.ascontiguousarray(tables.semantic_output_proj.T, dtype=np.float32), name("semantic_proj")
        ),
        numpy_helper.from_array(
            np.ascontiguousarray(tables.acoustic_output_proj.T, dtype=np.float32), name("acoustic_proj")
        ),
    ]
    nodes = [
        helper.make_node("Max", [codes, name("lowest")], [name("floor")]),
        helper.make_node("Min", [name("floor"), name("highest")], [name("clipped")]),
        helper.make_node("Add", [name("clipped"), name("offsets")], [name("rows")]),
        helper.make_node("Gather", [name("table"), name("rows")], [name("centroids")], axis=0),  # [B, K, N, d]
        helper.make_node("Reshape", [mask, name("mask_shape")], [name("mask4")]),
        helper.make_node("Mul", [name("centroids"), name("mask4")], [name("terms")]),
        helper.make_node(
            "Split", [name("terms"), name("split")], [name("semantic_terms"), name("acoustic_terms")], axis=1
        ),
        helper.make_node("ReduceSum", [name("semantic_terms"), name("level_axis")], [name("semantic_sum")], keepdims=0),
        helper.make_node("ReduceSum", [name("acoustic_terms"), name("level_axis")], [name("acoustic_sum")], keepdims=0),
        helper.make_node("MatMul", [name("semantic_sum"), name("semantic_proj")], [name("semantic_latent")]),
        helper.make_node("MatMul", [name("acoustic_sum"), name("acoustic_proj")], [name("acoustic_latent")]),
        helper.make_node("Add", [name("semantic_latent"), name("acoustic_latent")], [name("latent_t")]),
        helper.make_node("Transpose", [name("latent_t")], [latent], perm=[0, 2, 1]),
    ]
    for index, node in enumerate(nodes):
        node.name = name(f"node_{index}_{node.op_type}")
    return nodes, initializers


def _embed_model(onnx: Any, tables: CodebookTables, opset: int, ir_version: int) -> Any:
    helper = onnx.helper
    nodes, initializers = _embed_nodes(onnx, tables, "codes", "level_mask", "latent")
    graph = helper.make_graph(
        nodes,
        "mimistack_embed",
        [
            helper.make_tensor_value_info("codes", onnx.TensorProto.INT64, ["batch", tables.num_levels, "frames"]),
            helper.make_tensor_value_info("level_mask", onnx.TensorProto.FLOAT, [tables.num_levels]),
        ],
        [helper.make_tensor_value_info("latent", onnx.TensorProto.FLOAT, ["batch", tables.dimension, "frames"])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)
