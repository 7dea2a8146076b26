"""ONNX export of Mimi: batch, streaming, embedding and transformers.js graphs, with a manifest.

Sits on `torch.mimi` (the model it traces), `weights` (checkpoints, sha256, codebook tables), `levels` and
`engine.onnx` (the folder format it writes, which that engine reads); used by `mimistack export-onnx`
(`cli_onnx`), by `engine.onnx.load_onnx_engine` (export on first use) and by the browser app. Needs the `[export]`
extra (torch, onnx, onnxscript).

Written into `out_dir` (shapes for the official config: 32 levels, latent 512, frames of 1920 samples):

    encoder.onnx           pcm float32 [B, 1, N*1920] -> codes int64 [B, 32, N]              (quantizer inside)
    decoder.onnx           latent float32 [B, 512, N] -> pcm float32 [B, 1, N*1920]    (one graph, any subset)
    embed.onnx             codes int64 [B, 32, N] + level_mask float32 [32] -> latent float32 [B, 512, N]
    encoder_stream.onnx    pcm [B, 1, N*1920] + state_in_0.. -> codes + state_out_0..   (N >= 1 frames a call)
    decoder_stream.onnx    latent [B, 512, N] + state_in_0.. -> pcm + state_out_0..
    codebooks.safetensors  `levels.CodebookTables` for the numpy level algebra
    manifest.json          config, weights sha256, opset, version, files (sha256, bytes), states, checks, variants
    transformers.js/       config.json + onnx/{encoder,decoder}_model.onnx for transformers.js' `MimiModel`

How each graph is made:
- The stream graphs are traced once each with `torch.onnx.export(dynamo=True)`, batch and frame count dynamic
  (frames as a multiple of 1920; the legacy TorchScript exporter silently fixes the encoder's frame count to the
  traced one). Their state is explicit: conv left contexts, transposed-conv overlap tails, the transformers' KV
  caches of the last `context` steps and the stream position. Every state starts as zeros (the replicate-padding
  flag of the downsampling conv is stored inverted so that this holds).
- `encoder.onnx`/`decoder.onnx` are the stream graphs with every state bound to its zeros: streaming from zero
  state is batch mode's arithmetic (masked cache slots add exact zeros), so nothing is traced twice.
- `embed.onnx` and the level-prefix front of the transformers.js decoder are written with `onnx.helper`.
- The quantizer inside the encoder is written with `onnx.helper` too: exact L2 nearest centroid over the
  reference's own centroids. Float rounding differs from torch's GEMMs, so a near-tie between two centroids may
  resolve the other way (and the residual chain below it follows): the checks in the manifest count tokens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..config import MimiConfig
from ..levels import CodebookTables, Levels, latent_from_codes
from ..weights import LoadedWeights, codebook_tables, load_weights
from .base import EngineError
from .onnx import (
    CODEBOOK_FIELDS,
    CODEBOOKS_NAME,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    STREAM_GRAPHS,
    TRANSFORMERS_JS_DIR,
    VARIANTS,
    StateSpec,
    graph_file,
)

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18
"""Opset 18: what onnxruntime-web, onnxruntime-node and ONNX Runtime >= 1.14 all run."""
STREAM_MODES = ("window", "moshi")
CHECK_FRAMES = (1, 3)
"""Frame counts every graph is run at against the torch model after export (a graph with a frozen length fails)."""
VARIANT_SIGNAL_SECONDS = 4.0


class ExportError(EngineError):
    """An export that cannot be made or that does not reproduce the torch model."""


class ExportDependencyError(ExportError):
    """torch or onnx is not installed (the `[export]` extra)."""


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What `export_onnx` wrote: the folder, its manifest, the files (relative paths) and seconds per step."""

    out_dir: Path
    manifest: dict[str, Any]
    files: tuple[str, ...]
    seconds: dict[str, float]

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


# -- torch side -----------------------------------------------------------------------------------------------
def require_export_dependencies() -> tuple[Any, Any]:
    try:
        import onnx
        import torch
    except ImportError as error:
        raise ExportDependencyError(f"exporting ONNX graphs needs torch and onnx ({error}): pip install "
                                    "'mimistack[export]'") from error
    return torch, onnx


def _modules() -> Any:
    """The torch modules used for tracing (defined lazily so that importing this file needs no torch)."""
    from torch import Tensor, nn

    class Step(nn.Module):
        """One stream step of the encoder (pcm -> latent; the quantizer is appended in ONNX) or decoder
        (latent -> pcm) with flat explicit state; states listed in `inverted` are stored as 1 - x so that every
        state starts as zeros."""

        def __init__(self, model: Any, direction: str, mode: str, inverted: tuple[int, ...]) -> None:
            super().__init__()
            self.model = model
            self.direction = direction
            self.mode = mode
            self.inverted = inverted

        def _flip(self, state: Sequence[Tensor]) -> tuple[Tensor, ...]:
            return tuple(1 - t if i in self.inverted else t for i, t in enumerate(state))

        def step(self, value: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            if self.direction == "encoder":
                latent, new_state = self.model.encode_latent(value, self._flip(state), self.mode)
                return (latent, *self._flip(new_state))
            pcm, new_state = self.model.decode_latent(value, self._flip(state), self.mode)
            return (pcm, *self._flip(new_state))

    class EncoderStep(Step):
        def forward(self, pcm: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
            return self.step(pcm, state)

    class DecoderStep(Step):
        def forward(self, latent: Tensor, *state: Tensor) -> tuple[Tensor, ...]:
            return self.step(latent, state)

    return EncoderStep, DecoderStep


def _build_model(weights: LoadedWeights) -> Any:
    import torch

    from ..torch.mimi import MimiModel

    model = MimiModel(weights.config)
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.tensors.items()})
    return model.eval()


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's own warnings (deprecations inside torch, 'torchvision is not installed') are not the user's
    concern and would fail a warnings-as-errors test run; they are logged at debug level instead."""
    noisy = [logging.getLogger(name) for name in ("torch.onnx", "torch.onnx._internal.exporter._registration",
                                                  "torch.export", "torch._export", "onnxscript", "onnx_ir")]
    levels = [log.level for log in noisy]
    for log in noisy:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for item in caught:
            logger.debug("exporter warning: %s: %s", item.category.__name__, item.message)
    finally:
        for log, level in zip(noisy, levels):
            log.setLevel(level)


def _state_layout(model: Any, direction: str) -> tuple[list[Any], list[bool], tuple[int, ...]]:
    """Initial state at batch size 2, which tensors carry the batch on dim 0, and which start as ones."""
    init = model.init_encoder_state if direction == "encoder" else model.init_decoder_state
    two, three = init(2), init(3)
    batched = [a.shape != b.shape for a, b in zip(two, three)]
    inverted = tuple(i for i, t in enumerate(init(1)) if t.numel() and bool((t == 1).all()))
    return list(two), batched, inverted


def _export_stream(model: Any, direction: str, mode: str, opset: int) -> tuple[Any, list[StateSpec]]:
    """Trace one stream graph; returns the ONNX ModelProto and its state specs."""
    import torch

    encoder_step, decoder_step = _modules()
    config: MimiConfig = model.config
    state, batched, inverted = _state_layout(model, direction)
    torch_mode = "window" if mode == "window" else "moshi-window"
    wrapper = (encoder_step if direction == "encoder" else decoder_step)(model, direction, torch_mode, inverted).eval()
    example_state = [1 - t if i in inverted else t for i, t in enumerate(state)]
    frames_example = 2
    batch = torch.export.Dim("batch", min=1)
    frames = torch.export.Dim("frames", min=1)
    if direction == "encoder":
        main_name, out_name = "pcm", "latent"
        main = torch.randn(2, 1, frames_example * config.frame_size) * 0.1
        main_dims = {0: batch, 2: config.frame_size * frames}
    else:
        main_name, out_name = "latent", "pcm"
        main = torch.randn(2, config.dimension, frames_example)
        main_dims = {0: batch, 2: frames}
    dynamic = {main_name: main_dims, "state": tuple({0: batch} if b else None for b in batched)}
    specs = []
    for i, (tensor, is_batched) in enumerate(zip(state, batched)):
        shape: tuple[int | str, ...] = tuple(tensor.shape)
        if is_batched:
            shape = ("batch", *shape[1:])
        specs.append(StateSpec(f"state_in_{i}", f"state_out_{i}", shape, str(tensor.dtype).removeprefix("torch.")))
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            wrapper, (main, *example_state), dynamo=True, dynamic_shapes=dynamic, opset_version=opset,
            input_names=[main_name, *(s.input for s in specs)], output_names=[out_name, *(s.output for s in specs)],
            optimize=True, verbose=False, external_data=False)
    return program.model_proto, specs


def _with_quantizer(onnx: Any, traced: Any, model: Any) -> Any:
    """A copy of an encoder graph with its output `latent [B, D, N]` replaced by `codes int64 [B, K, N]`: the
    split RVQ of the reference.

    Nearest centroid by exact L2: `argmin_e |e|² - 2 x·e` (|x|² is the same for every centroid, and the clamp and
    square root of `torch.cdist` do not move a minimum), first index on ties, over the reference's own centroids
    (`embedding_sum / clamp(cluster_usage, eps)` taken from the torch model, bit for bit). The table is stored once
    per level as `-2 eᵀ` `[d, size]`, the MatMul's constant right operand, which ONNX Runtime prepacks; the chosen
    centroid is gathered back from it and scaled by -1/2, which is exact. Written by hand rather than traced:
    32 unrolled levels would double the trace time, and 8 nodes a level instead of the tracer's ~14 matters when a
    call is one 80 ms frame. Variants (fp16, int8) convert the traced part only and get this fp32 quantizer after.
    """
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    model_proto = onnx.ModelProto()
    model_proto.CopyFrom(traced)
    graph = model_proto.graph
    nodes, initializers = [], []
    codes = []

    def node(op: str, inputs: list[str], output: str, **attributes: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attributes))
        return output

    def constant(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    constant("quantizer/minus_half", np.array(-0.5, dtype=np.float32))
    constant("quantizer/level_axis", np.array([1], dtype=np.int64))
    latent_t = node("Transpose", ["latent"], "quantizer/latent_t", perm=[0, 2, 1])  # [B, N, D]
    level = 0
    for branch_name, branch in (("semantic", model.quantizer.rvq_first), ("acoustic", model.quantizer.rvq_rest)):
        prefix = f"quantizer/{branch_name}"
        weight = branch.input_proj.weight.detach().numpy()[:, :, 0].astype(np.float32)  # [d, D]
        residual = node("MatMul", [latent_t, constant(f"{prefix}/input_proj", weight.T)], f"{prefix}/residual")
        for embedding in branch.embeddings():
            centroids = embedding.detach().numpy().astype(np.float32)  # [size, d]
            name = f"quantizer/level_{level}"
            table = constant(f"{name}/table", -2 * centroids.T)  # [d, size], exact scaling
            norms = constant(f"{name}/norms", (centroids.astype(np.float64) ** 2).sum(-1).astype(np.float32))
            products = node("MatMul", [residual, table], f"{name}/products")  # [B, N, size]
            distances = node("Add", [products, norms], f"{name}/distances")  # |x - e|² - |x|²
            index = node("ArgMin", [distances], f"{name}/index", axis=-1, keepdims=0)  # [B, N]
            columns = node("Gather", [table, index], f"{name}/columns", axis=1)  # [d, B, N]
            scaled = node("Transpose", [columns], f"{name}/scaled", perm=[1, 2, 0])  # [B, N, d] = -2 e
            centroid = node("Mul", [scaled, "quantizer/minus_half"], f"{name}/centroid")
            residual = node("Sub", [residual, centroid], f"{name}/residual")
            codes.append(node("Unsqueeze", [index, "quantizer/level_axis"], f"{name}/codes"))
            level += 1
    node("Concat", codes, "codes", axis=1)
    graph.node.extend(nodes)
    graph.initializer.extend(initializers)
    latent_output = next(o for o in graph.output if o.name == "latent")
    dims = latent_output.type.tensor_type.shape.dim
    codes_output = helper.make_tensor_value_info("codes", onnx.TensorProto.INT64,
                                                 [dims[0].dim_param or "batch", level, dims[2].dim_param or "frames"])
    outputs = [codes_output if o.name == "latent" else o for o in graph.output]
    del graph.output[:]
    graph.output.extend(outputs)
    return model_proto


# -- ONNX surgery ---------------------------------------------------------------------------------------------
def _onnx_dtype(onnx: Any, dtype: str) -> int:
    return onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


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


def _bind_initial_state(onnx: Any, stream: Any, main_input: str, specs: Sequence[StateSpec]) -> Any:
    """The batch graph: a stream graph whose state inputs are zeros made in the graph (batch from the main input)
    and whose state outputs are gone."""
    helper = onnx.helper
    model = onnx.ModelProto()
    model.CopyFrom(stream)
    graph = model.graph
    state_inputs = {s.input for s in specs}
    state_outputs = {s.output for s in specs}
    inputs = [i for i in graph.input if i.name not in state_inputs]
    outputs = [o for o in graph.output if o.name not in state_outputs]
    nodes = [helper.make_node("Shape", [main_input], ["bind/batch"], start=0, end=1, name="bind/batch")]
    for spec in specs:
        dtype = _onnx_dtype(onnx, spec.dtype)
        if spec.shape and spec.shape[0] == "batch":
            rest = helper.make_tensor(f"bind/{spec.input}/rest", onnx.TensorProto.INT64, [len(spec.shape) - 1],
                                      [int(d) for d in spec.shape[1:]])
            nodes.append(helper.make_node("Constant", [], [f"bind/{spec.input}/rest"], value=rest))
            nodes.append(helper.make_node("Concat", ["bind/batch", f"bind/{spec.input}/rest"],
                                          [f"bind/{spec.input}/shape"], axis=0))
            nodes.append(helper.make_node("ConstantOfShape", [f"bind/{spec.input}/shape"], [spec.input],
                                          value=helper.make_tensor("zero", dtype, [1], [0])))
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


def _embed_nodes(onnx: Any, tables: CodebookTables, codes: str, mask: str, latent: str,
                 prefix: str = "embed") -> tuple[list[Any], list[Any]]:
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
        numpy_helper.from_array((np.arange(num_levels, dtype=np.int64) * size).reshape(1, num_levels, 1),
                                name("offsets")),
        numpy_helper.from_array(np.array([1, num_levels, 1, 1], dtype=np.int64), name("mask_shape")),
        numpy_helper.from_array(np.array([num_semantic, num_levels - num_semantic], dtype=np.int64), name("split")),
        numpy_helper.from_array(np.array([1], dtype=np.int64), name("level_axis")),
        numpy_helper.from_array(np.array(0, dtype=np.int64), name("lowest")),
        numpy_helper.from_array(np.array(size - 1, dtype=np.int64), name("highest")),
        numpy_helper.from_array(np.ascontiguousarray(tables.semantic_output_proj.T, dtype=np.float32),
                                name("semantic_proj")),
        numpy_helper.from_array(np.ascontiguousarray(tables.acoustic_output_proj.T, dtype=np.float32),
                                name("acoustic_proj")),
    ]
    nodes = [
        helper.make_node("Max", [codes, name("lowest")], [name("floor")]),
        helper.make_node("Min", [name("floor"), name("highest")], [name("clipped")]),
        helper.make_node("Add", [name("clipped"), name("offsets")], [name("rows")]),
        helper.make_node("Gather", [name("table"), name("rows")], [name("centroids")], axis=0),  # [B, K, N, d]
        helper.make_node("Reshape", [mask, name("mask_shape")], [name("mask4")]),
        helper.make_node("Mul", [name("centroids"), name("mask4")], [name("terms")]),
        helper.make_node("Split", [name("terms"), name("split")], [name("semantic_terms"), name("acoustic_terms")],
                         axis=1),
        helper.make_node("ReduceSum", [name("semantic_terms"), name("level_axis")], [name("semantic_sum")],
                         keepdims=0),
        helper.make_node("ReduceSum", [name("acoustic_terms"), name("level_axis")], [name("acoustic_sum")],
                         keepdims=0),
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
        nodes, "mimistack_embed",
        [helper.make_tensor_value_info("codes", onnx.TensorProto.INT64, ["batch", tables.num_levels, "frames"]),
         helper.make_tensor_value_info("level_mask", onnx.TensorProto.FLOAT, [tables.num_levels])],
        [helper.make_tensor_value_info("latent", onnx.TensorProto.FLOAT, ["batch", tables.dimension, "frames"])],
        initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)


def _transformers_js_encoder(onnx: Any, encoder: Any, frame_size: int) -> Any:
    """encoder.onnx as transformers.js wants it: `input_values [B, 1, S]` (any S, right-padded with zeros to whole
    frames, as transformers' Mimi does) -> `audio_codes [B, K, ceil(S / frame_size)]`."""
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    model = onnx.ModelProto()
    model.CopyFrom(encoder)
    graph = model.graph
    _rename(graph, "codes", "audio_codes")
    graph.initializer.extend([
        numpy_helper.from_array(np.array([2], dtype=np.int64), "tjs/time_axis"),
        numpy_helper.from_array(np.array([frame_size], dtype=np.int64), "tjs/frame_size"),
        numpy_helper.from_array(np.zeros(5, dtype=np.int64), "tjs/pad_head"),
        numpy_helper.from_array(np.array(0.0, dtype=np.float32), "tjs/zero"),
    ])
    front = [
        helper.make_node("Shape", ["input_values"], ["tjs/length"], start=2, end=3),
        helper.make_node("Mod", ["tjs/length", "tjs/frame_size"], ["tjs/remainder"]),
        helper.make_node("Sub", ["tjs/frame_size", "tjs/remainder"], ["tjs/missing"]),
        helper.make_node("Mod", ["tjs/missing", "tjs/frame_size"], ["tjs/pad_tail"]),
        helper.make_node("Concat", ["tjs/pad_head", "tjs/pad_tail"], ["tjs/pads"], axis=0),
        helper.make_node("Pad", ["input_values", "tjs/pads", "tjs/zero"], ["pcm"], mode="constant"),
    ]
    for index, node in enumerate(front):
        node.name = f"tjs/front_{index}_{node.op_type}"
    body = list(graph.node)
    del graph.node[:]
    graph.node.extend(front + body)
    graph.input[0].name = "input_values"
    _set_dims(graph.input[0], ["batch_size", 1, "sequence_length"])
    _set_dims(graph.output[0], ["batch_size", encoder.graph.output[0].type.tensor_type.shape.dim[1].dim_value,
                                "frames"])
    return model


def _transformers_js_decoder(onnx: Any, decoder: Any, tables: CodebookTables) -> Any:
    """decoder.onnx behind a level-prefix front: `audio_codes [B, K', N]` (K' from 1 to K: levels 0..K'-1) ->
    `audio_values [B, 1, N * frame_size]`; the missing levels are left out of the latent sum."""
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    num_levels = tables.num_levels
    model = onnx.ModelProto()
    model.CopyFrom(decoder)
    graph = model.graph
    _rename(graph, "pcm", "audio_values")
    embed_nodes, embed_initializers = _embed_nodes(onnx, tables, "tjs/codes", "tjs/mask", "latent", prefix="tjs")
    graph.initializer.extend([
        *embed_initializers,
        numpy_helper.from_array(np.array([num_levels], dtype=np.int64), "tjs/num_levels"),
        numpy_helper.from_array(np.zeros(4, dtype=np.int64), "tjs/pad_head"),
        numpy_helper.from_array(np.zeros(1, dtype=np.int64), "tjs/pad_last"),
        numpy_helper.from_array(np.array(0, dtype=np.int64), "tjs/zero"),
        numpy_helper.from_array(np.array(1, dtype=np.int64), "tjs/one"),
        numpy_helper.from_array(np.array(num_levels, dtype=np.int64), "tjs/level_count"),
    ])
    front = [
        helper.make_node("Shape", ["audio_codes"], ["tjs/given"], start=1, end=2),  # [1]: K'
        helper.make_node("Sub", ["tjs/num_levels", "tjs/given"], ["tjs/missing"]),
        helper.make_node("Concat", ["tjs/pad_head", "tjs/missing", "tjs/pad_last"], ["tjs/pads"], axis=0),
        helper.make_node("Pad", ["audio_codes", "tjs/pads"], ["tjs/codes"], mode="constant"),
        helper.make_node("Range", ["tjs/zero", "tjs/level_count", "tjs/one"], ["tjs/levels"]),
        helper.make_node("Less", ["tjs/levels", "tjs/given"], ["tjs/selected"]),
        helper.make_node("Cast", ["tjs/selected"], ["tjs/mask"], to=onnx.TensorProto.FLOAT),
    ]
    for index, node in enumerate(front):
        node.name = f"tjs/front_{index}_{node.op_type}"
    body = list(graph.node)
    del graph.node[:]
    graph.node.extend(front + embed_nodes + body)
    latent_input = graph.input[0]
    latent_input.name = "audio_codes"
    latent_input.type.tensor_type.elem_type = onnx.TensorProto.INT64
    _set_dims(latent_input, ["batch_size", "num_quantizers", "frames"])
    _set_dims(graph.output[0], ["batch_size", 1, "sequence_length"])
    return model


def transformers_config(config: MimiConfig, weights_sha256: str) -> dict[str, Any]:
    """A transformers `MimiConfig` (config.json) for this architecture, plus transformers.js' own settings."""
    return {
        "architectures": ["MimiModel"],
        "model_type": "mimi",
        "sampling_rate": config.sample_rate,
        "frame_rate": config.frame_rate,
        "audio_channels": 1,
        "hidden_size": config.dimension,
        "num_filters": config.n_filters,
        "num_residual_layers": 1,
        "upsampling_ratios": list(config.ratios),
        "kernel_size": config.kernel_size,
        "last_kernel_size": config.last_kernel_size,
        "residual_kernel_size": config.residual_kernel_size,
        "dilation_growth_rate": 2,
        "use_causal_conv": True,
        "pad_mode": "constant",
        "compress": config.compress,
        "trim_right_ratio": 1.0,
        "codebook_size": config.codebook_size,
        "codebook_dim": config.codebook_dim,
        "num_quantizers": config.num_levels,
        "use_conv_shortcut": False,
        "vector_quantization_hidden_dimension": config.codebook_dim,
        "num_semantic_quantizers": config.num_semantic,
        "upsample_groups": config.dimension,
        "num_hidden_layers": config.num_layers,
        "intermediate_size": config.dim_feedforward,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_heads,
        "head_dim": config.dimension // config.num_heads,
        "hidden_act": "gelu",
        "max_position_embeddings": 8000,
        "initializer_range": 0.02,
        "norm_eps": config.layer_norm_eps,
        "use_cache": False,
        "use_streaming": False,
        "rope_theta": config.max_period,
        "sliding_window": config.context,
        "attention_dropout": 0.0,
        "layer_scale_initial_scale": 0.01,
        "attention_bias": False,
        "torch_dtype": "float32",
        "transformers.js_config": {"dtype": "fp32"},
        "mimistack": {"weights_sha256": weights_sha256, "mimistack_version": __version__,
                      "note": "decoder_model accepts audio_codes with 1 to num_quantizers levels (a prefix)"},
    }


PREPROCESSOR_CONFIG = {"feature_extractor_type": "EncodecFeatureExtractor", "feature_size": 1,
                       "padding_side": "right", "padding_value": 0.0, "return_attention_mask": True,
                       "chunk_length_s": None, "overlap": None}


# -- variants -------------------------------------------------------------------------------------------------
def _fp16(onnx: Any, model: Any) -> Any:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converter_log = logging.getLogger("onnxruntime.transformers.float16")
    with warnings.catch_warnings(), _log_level(converter_log, logging.WARNING):
        warnings.simplefilter("ignore")  # "the model has values out of fp16 range" is measured, not warned
        return convert_float_to_float16(model, keep_io_types=True)


@contextlib.contextmanager
def _log_level(log: logging.Logger, level: int) -> Iterator[None]:
    previous = log.level
    log.setLevel(level)
    try:
        yield
    finally:
        log.setLevel(previous)


def _int8(onnx: Any, model: Any, work_dir: Path) -> Any:
    """Dynamic int8 quantization of the MatMuls (the transformers' linear layers)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"node_{index}"
    source, target = work_dir / f"int8-in-{uuid.uuid4().hex}.onnx", work_dir / f"int8-out-{uuid.uuid4().hex}.onnx"
    try:
        onnx.save_model(model, str(source))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            logging.getLogger("root").disabled = True
            try:
                quantize_dynamic(source, target, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                                 per_channel=False)
            finally:
                logging.getLogger("root").disabled = False
        return onnx.load_model(str(target))
    finally:
        source.unlink(missing_ok=True)
        target.unlink(missing_ok=True)


# -- checks ---------------------------------------------------------------------------------------------------
def _session(path: Path) -> Any:
    import onnxruntime as ort

    from .onnx import session_options, shared_pool_threads

    threads = shared_pool_threads()
    options = session_options(threads or 2, shared_pool=threads is not None)  # ORT refuses a private pool then
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _relative_l2(estimate: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(estimate - reference) / max(float(np.linalg.norm(reference)), 1e-12))


def _check_signal(config: MimiConfig, frames: int, batch: int = 1, seed: int = 0) -> np.ndarray:
    from ..testing import synthetic_signal

    length = frames * config.frame_size
    rows = [synthetic_signal(length / config.sample_rate + 0.1, config.sample_rate, seed + row)[:length]
            for row in range(batch)]
    return np.stack(rows)[:, None, :].astype(np.float32)


def _run_stream(session: Any, main: str, output: str, value: np.ndarray, specs: Sequence[StateSpec],
                chunks: Sequence[int], frame_size: int) -> np.ndarray:
    state = [spec.zeros(value.shape[0]) for spec in specs]
    scale = frame_size if main == "pcm" else 1
    parts, start = [], 0
    for count in chunks:
        piece = value[..., start * scale:(start + count) * scale]
        outputs = session.run([output, *(s.output for s in specs)],
                              {main: piece, **{s.input: a for s, a in zip(specs, state)}})
        parts.append(outputs[0])
        state = outputs[1:]
        start += count
    return np.concatenate(parts, axis=-1)


def _check_graphs(model: Any, folder: Path, streams: dict[str, dict[str, Any]], tables: CodebookTables,
                  transformers_js: bool) -> dict[str, Any]:
    """Run every fp32 graph at several frame counts against the torch model; raise ExportError on a mismatch."""
    import torch

    config: MimiConfig = model.config
    results: dict[str, Any] = {}
    worst_agreement, worst_audio = 1.0, 0.0
    for frames in CHECK_FRAMES:
        pcm = _check_signal(config, frames, batch=2, seed=frames)
        with torch.no_grad():
            latent_ref, _ = model.encode_latent(torch.from_numpy(pcm))
            codes_ref = model.quantizer.encode(latent_ref).numpy()
            latent = torch.from_numpy(latent_from_codes(tables, codes_ref))
            audio_ref = model.decode_latent(latent)[0].numpy()
        codes = _session(folder / "encoder.onnx").run(["codes"], {"pcm": pcm})[0]
        audio = _session(folder / "decoder.onnx").run(["pcm"], {"latent": latent.numpy()})[0]
        agreement = float((codes == codes_ref).mean())
        audio_error = _relative_l2(audio, audio_ref)
        results[f"batch_{frames}_frames"] = {"codes_agreement": agreement, "audio_relative_l2": audio_error}
        worst_agreement, worst_audio = min(worst_agreement, agreement), max(worst_audio, audio_error)
        if frames > 1:
            chunks = [1, frames - 1]
            for graph, spec in streams.items():
                if spec["mode"] != "window":
                    continue
                specs = [StateSpec.from_dict(s) for s in spec["states"]]
                session = _session(folder / f"{graph}.onnx")
                if spec["direction"] == "encoder":
                    out = _run_stream(session, "pcm", "codes", pcm, specs, chunks, config.frame_size)
                    agreement = float((out == codes_ref).mean())
                    worst_agreement = min(worst_agreement, agreement)
                    results[f"{graph}_{chunks}"] = {"codes_agreement": agreement}
                else:
                    out = _run_stream(session, "latent", "pcm", latent.numpy(), specs, chunks, config.frame_size)
                    error = _relative_l2(out, audio_ref)
                    worst_audio = max(worst_audio, error)
                    results[f"{graph}_{chunks}"] = {"audio_relative_l2": error}
        codes_all = np.asarray(codes_ref)
        mask = (np.arange(config.num_levels) % 3 != 1).astype(np.float32)
        embedded = _session(folder / "embed.onnx").run(["latent"], {"codes": codes_all, "level_mask": mask})[0]
        embed_error = _relative_l2(embedded, latent_from_codes(tables, codes_all, Levels.parse(np.flatnonzero(mask),
                                                                                               config.num_levels)))
        results[f"embed_{frames}_frames"] = {"latent_relative_l2": embed_error}
        if embed_error > 1e-5:
            raise ExportError(f"embed.onnx differs from latent_from_codes (relative L2 {embed_error:.2e})")
        if transformers_js:
            tjs = folder / TRANSFORMERS_JS_DIR / "onnx"
            tjs_codes = _session(tjs / "encoder_model.onnx").run(["audio_codes"], {"input_values": pcm})[0]
            prefix = max(1, config.num_levels // 4)
            tjs_audio = _session(tjs / "decoder_model.onnx").run(
                ["audio_values"], {"audio_codes": codes_ref[:, :prefix]})[0]
            with torch.no_grad():
                prefix_ref = model.decode_latent(torch.from_numpy(latent_from_codes(
                    tables, codes_ref, Levels.prefix(prefix, config.num_levels))))[0].numpy()
            results[f"transformers_js_{frames}_frames"] = {
                "codes_agreement": float((tjs_codes == codes_ref).mean()),
                "audio_relative_l2": _relative_l2(tjs_audio, prefix_ref)}
            worst_agreement = min(worst_agreement, results[f"transformers_js_{frames}_frames"]["codes_agreement"])
            worst_audio = max(worst_audio, results[f"transformers_js_{frames}_frames"]["audio_relative_l2"])
    results["worst_codes_agreement"] = worst_agreement
    results["worst_audio_relative_l2"] = worst_audio
    if worst_agreement < 0.99 or worst_audio > 1e-4:
        raise ExportError(f"the exported graphs do not reproduce the torch model (codes agreement "
                          f"{worst_agreement:.4f}, audio relative L2 {worst_audio:.2e})")
    return results


def _variant_errors(folder: Path, variant: str, config: MimiConfig, tables: CodebookTables) -> dict[str, float]:
    """Error of a variant's batch graphs against fp32 on a 4 s synthetic signal."""
    frames = int(VARIANT_SIGNAL_SECONDS * config.frame_rate)
    pcm = _check_signal(config, frames, seed=11)
    codes32 = _session(folder / "encoder.onnx").run(["codes"], {"pcm": pcm})[0]
    codes = _session(folder / graph_file("encoder", variant)).run(["codes"], {"pcm": pcm})[0]
    latent = latent_from_codes(tables, codes32)
    audio32 = _session(folder / "decoder.onnx").run(["pcm"], {"latent": latent})[0]
    audio = _session(folder / graph_file("decoder", variant)).run(["pcm"], {"latent": latent})[0]
    end_to_end = _session(folder / graph_file("decoder", variant)).run(
        ["pcm"], {"latent": latent_from_codes(tables, codes)})[0]
    return {"codes_agreement": float((codes == codes32).mean()),
            "level0_agreement": float((codes[:, 0] == codes32[:, 0]).mean()),
            "decoder_audio_relative_l2": _relative_l2(audio, audio32),
            "end_to_end_audio_relative_l2": _relative_l2(end_to_end, audio32),
            "signal_seconds": VARIANT_SIGNAL_SECONDS}


# -- writing --------------------------------------------------------------------------------------------------
def _file_entry(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"sha256": digest.hexdigest(), "bytes": path.stat().st_size}


def _save(onnx: Any, model: Any, path: Path, metadata: dict[str, str], role: str) -> None:
    del model.metadata_props[:]
    for key, value in {**metadata, "mimistack_graph": role}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "mimistack"
    model.producer_version = __version__
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    path.chmod(0o644)


def _check_target(target: Path, force: bool) -> None:
    if not target.exists():
        return
    if not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder")
    if not any(target.iterdir()):
        return
    if not force:
        raise FileExistsError(f"{target} exists and is not empty; pass force=True (--force) to replace it")
    if not (target / MANIFEST_NAME).is_file():
        raise FileExistsError(f"{target} is not a mimistack ONNX export (no {MANIFEST_NAME}); refusing to replace "
                              "it even with --force: choose another folder")


def _publish(staging: Path, target: Path, force: bool) -> None:
    """Move the finished folder into place (a rename: readers never see a half-written export)."""
    _check_target(target, force)
    old = None
    if target.exists() and any(target.iterdir()):
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
    elif target.exists():
        target.rmdir()
    try:
        os.replace(staging, target)
    except OSError as error:
        if old is not None:
            os.replace(old, target)
        raise FileExistsError(f"{target} appeared while exporting: {error}") from error
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_onnx(weights: LoadedWeights | str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
                opset: int = DEFAULT_OPSET, variants: Sequence[str] = ("fp32",), force: bool = False,
                stream_modes: Sequence[str] = ("window",), transformers_js: bool = True, check: bool = True,
                revision: str | None = None) -> ExportResult:
    """Export every graph of the module docstring into `out_dir` (created; an existing non-empty folder only with
    `force`, and only if it is an earlier export).

    `variants`: "fp32" always, plus "fp16" and/or "int8" copies of the encoder/decoder graphs, each with its
    measured error against fp32 in the manifest. `stream_modes`: "window" (batch-exact; always) and optionally
    "moshi" (`encoder_stream_moshi.onnx`/`decoder_stream_moshi.onnx`: Kyutai's ring-cache arithmetic, for
    `mode="moshi"` streams). `check`: run each graph against the torch model at several frame counts and refuse
    an export that does not match.
    """
    torch, onnx = require_export_dependencies()
    wanted = list(dict.fromkeys(["fp32", *variants]))
    unknown = [v for v in wanted if v not in VARIANTS]
    if unknown:
        raise ExportError(f"unknown variant(s) {unknown}; expected some of {', '.join(VARIANTS)}")
    modes = list(dict.fromkeys(["window", *stream_modes]))
    if any(m not in STREAM_MODES for m in modes):
        raise ExportError(f"unknown stream mode(s) in {list(stream_modes)}; expected 'window' and/or 'moshi'")
    if opset < 18:
        raise ExportError(f"opset {opset} is too old: the graphs use opset-18 operators (Split with sizes, "
                          "ReduceSum with axes as input); use 18 or newer")
    target = Path(out_dir)
    _check_target(target, force)
    if not target.parent.exists():
        raise FileNotFoundError(f"the parent folder of {target} does not exist")
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    loaded = weights if isinstance(weights, LoadedWeights) else load_weights(weights, revision=revision)
    model = _build_model(loaded)
    config = loaded.config
    tables = codebook_tables(loaded.tensors, config)
    seconds["load_weights"] = time.perf_counter() - started
    metadata = {"mimistack_config": config.to_json(), "weights_sha256": loaded.sha256, "opset": str(opset),
                "mimistack_version": __version__}
    staging = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        traced: dict[str, Any] = {}  # name -> graph as traced (encoders end at the latent)
        streams: dict[str, dict[str, Any]] = {}
        state_specs: dict[str, list[StateSpec]] = {}
        for mode in modes:
            for direction in ("encoder", "decoder"):
                name = STREAM_GRAPHS[direction, mode]  # type: ignore[index]
                step_started = time.perf_counter()
                logger.info("tracing %s", name)
                traced[name], state_specs[name] = _export_stream(model, direction, mode, opset)
                seconds[f"trace_{name}"] = time.perf_counter() - step_started
                main, output = ("pcm", "codes") if direction == "encoder" else ("latent", "pcm")
                streams[name] = {"direction": direction, "mode": mode, "input": main, "output": output,
                                 "states": [s.to_dict() for s in state_specs[name]]}
        step_started = time.perf_counter()
        traced["encoder"] = _bind_initial_state(onnx, traced["encoder_stream"], "pcm", state_specs["encoder_stream"])
        traced["decoder"] = _bind_initial_state(onnx, traced["decoder_stream"], "latent",
                                                state_specs["decoder_stream"])

        def write_variant(variant: str) -> list[str]:
            """Convert the traced graphs (fp16/int8), add the hand-written fp32 parts, save; returns the names."""
            names = ["encoder", "decoder", *streams]
            suffix = {"fp32": "", "fp16": "_fp16", "int8": "_int8"}[variant]
            graphs = {}
            for name in names:
                graph = traced[name]
                if variant == "fp16":
                    graph = _fp16(onnx, graph)
                elif variant == "int8":
                    graph = _int8(onnx, graph, staging)
                graphs[name] = _with_quantizer(onnx, graph, model) if name.startswith("encoder") else graph
            files = {graph_file(name, variant): (graphs[name], name) for name in names}
            if variant == "fp32":
                files["embed.onnx"] = (_embed_model(onnx, tables, opset, traced["encoder"].ir_version), "embed")
            if transformers_js:
                tjs = f"{TRANSFORMERS_JS_DIR}/onnx"
                files[f"{tjs}/encoder_model{suffix}.onnx"] = (
                    _transformers_js_encoder(onnx, graphs["encoder"], config.frame_size),
                    "transformers_js/encoder_model")
                files[f"{tjs}/decoder_model{suffix}.onnx"] = (
                    _transformers_js_decoder(onnx, graphs["decoder"], tables), "transformers_js/decoder_model")
            extra = {} if variant == "fp32" else {"variant": variant}
            for relative, (graph, role) in files.items():
                _save(onnx, graph, staging / relative, {**metadata, **extra}, role)
            return [graph_file(name, variant) for name in names]

        fp32_graphs = write_variant("fp32")
        from safetensors.numpy import save_file

        save_file({name: np.ascontiguousarray(getattr(tables, name)) for name in CODEBOOK_FIELDS},
                  str(staging / CODEBOOKS_NAME), metadata={"weights_sha256": loaded.sha256})
        (staging / CODEBOOKS_NAME).chmod(0o644)  # safetensors writes 0600; the folder is meant to be shared
        if transformers_js:
            (staging / TRANSFORMERS_JS_DIR / "config.json").write_text(
                json.dumps(transformers_config(config, loaded.sha256), indent=2) + "\n")
            (staging / TRANSFORMERS_JS_DIR / "preprocessor_config.json").write_text(
                json.dumps({**PREPROCESSOR_CONFIG, "sampling_rate": config.sample_rate}, indent=2) + "\n")
        seconds["write_graphs"] = time.perf_counter() - step_started

        checks: dict[str, Any] = {}
        if check:
            step_started = time.perf_counter()
            checks = _check_graphs(model, staging, streams, tables, transformers_js)
            seconds["check"] = time.perf_counter() - step_started

        variant_report: dict[str, Any] = {"fp32": {"graphs": fp32_graphs}}
        for variant in wanted[1:]:
            step_started = time.perf_counter()
            variant_report[variant] = {"graphs": write_variant(variant),
                                       "errors_vs_fp32": _variant_errors(staging, variant, config, tables)}
            seconds[f"variant_{variant}"] = time.perf_counter() - step_started
            logger.info("variant %s: %s", variant, variant_report[variant]["errors_vs_fp32"])

        listed = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "mimistack_version": __version__,
            "torch_version": torch.__version__,
            "onnx_version": onnx.__version__,
            "opset": opset,
            "weights_sha256": loaded.sha256,
            "weights_source": loaded.source,
            "config": config.to_dict(),
            "frame_size": config.frame_size,
            "sample_rate": config.sample_rate,
            "num_levels": config.num_levels,
            "codebook_size": config.codebook_size,
            "dimension": config.dimension,
            "graphs": {
                "encoder": {"file": "encoder.onnx", "inputs": {"pcm": ["batch", 1, f"{config.frame_size}*frames"]},
                            "outputs": {"codes": ["batch", config.num_levels, "frames"]}},
                "decoder": {"file": "decoder.onnx", "inputs": {"latent": ["batch", config.dimension, "frames"]},
                            "outputs": {"pcm": ["batch", 1, f"{config.frame_size}*frames"]}},
                "embed": {"file": "embed.onnx", "inputs": {"codes": ["batch", config.num_levels, "frames"],
                                                           "level_mask": [config.num_levels]},
                          "outputs": {"latent": ["batch", config.dimension, "frames"]}},
            },
            "streams": streams,
            "variants": variant_report,
            "checks": checks,
            "export_seconds": {k: round(v, 3) for k, v in seconds.items()},
            "files": {name: _file_entry(staging / name) for name in listed},
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        _publish(staging, target, force)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    seconds["total"] = time.perf_counter() - started
    logger.info("exported %s in %.1f s", target, seconds["total"])
    return ExportResult(out_dir=target, manifest=manifest, files=tuple([*listed, MANIFEST_NAME]),
                        seconds={k: v for k, v in seconds.items() if k != "total"})
