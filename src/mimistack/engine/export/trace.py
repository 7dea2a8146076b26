"""The torch side: build the model from weights and trace its stream graphs with `torch.onnx.export`; write the
quantizer into the traced encoder.

Part of `engine.export` (see its package docstring for the folder it writes).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ...config import MimiConfig
from ...weights import LoadedWeights
from ..onnx_format import (
    StateSpec,
)
from .common import ExportDependencyError, ExportError

logger = logging.getLogger(__name__)


def require_export_dependencies() -> tuple[Any, Any]:
    try:
        import onnx
        import torch
    except ImportError as error:
        raise ExportDependencyError(
            f"exporting ONNX graphs needs torch and onnx ({error}): pip install 'mimistack[export]'"
        ) from error
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

    from ...torch.mimi import MimiModel

    model = MimiModel(weights.config)
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.tensors.items()})
    return model.eval()


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's own warnings (deprecations inside torch, 'torchvision is not installed') are not the user's
    concern and would fail a warnings-as-errors test run; they are logged at debug level instead."""
    noisy = [
        logging.getLogger(name)
        for name in (
            "torch.onnx",
            "torch.onnx._internal.exporter._registration",
            "torch.export",
            "torch._export",
            "onnxscript",
            "onnx_ir",
        )
    ]
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


def _state_layout(
    model: Any, direction: str, ring: int | None
) -> tuple[list[Any], list[bool], list[int | None], tuple[int, ...]]:
    """Initial state at batch size 2, which tensors carry the batch on dim 0, which dim of each is the ring of a
    "ring-window" KV cache (None: no ring), and which start as ones."""
    init = model.init_encoder_state if direction == "encoder" else model.init_decoder_state
    two, three = init(2, ring), init(3, ring)
    batched = [a.shape != b.shape for a, b in zip(two, three)]
    ringed: list[int | None] = [None] * len(two)
    if ring is not None:
        for i, (a, b) in enumerate(zip(two, init(2, ring + 1))):
            differs = [d for d, (x, y) in enumerate(zip(a.shape, b.shape)) if x != y]
            ringed[i] = differs[0] if differs else None
    inverted = tuple(i for i, t in enumerate(init(1)) if t.numel() and bool((t == 1).all()))
    return list(two), batched, ringed, inverted


def _export_stream(model: Any, direction: str, mode: str, opset: int) -> tuple[Any, list[StateSpec]]:
    """Trace one stream graph; returns the ONNX ModelProto and its state specs."""
    import torch

    encoder_step, decoder_step = _modules()
    config: MimiConfig = model.config
    frames_example = 2
    # "window" graphs keep their KV caches in a ring of R slots (R a dim of the state, chosen by the caller); an
    # example ring that fits the example's steps and equals no other dim.
    ring = config.context + config.downsample_stride * frames_example + 5 if mode == "window" else None
    state, batched, ringed, inverted = _state_layout(model, direction, ring)
    torch_mode = "ring-window" if mode == "window" else "moshi-window"
    wrapper = (encoder_step if direction == "encoder" else decoder_step)(model, direction, torch_mode, inverted).eval()
    example_state = [1 - t if i in inverted else t for i, t in enumerate(state)]
    batch = torch.export.Dim("batch", min=1)
    frames = torch.export.Dim("frames", min=1)
    ring_dim = torch.export.Dim("ring", min=2)
    if direction == "encoder":
        main_name, out_name = "pcm", "latent"
        main = torch.randn(2, 1, frames_example * config.frame_size) * 0.1
        main_dims = {0: batch, 2: config.frame_size * frames}
    else:
        main_name, out_name = "latent", "pcm"
        main = torch.randn(2, config.dimension, frames_example)
        main_dims = {0: batch, 2: frames}
    state_dims = []
    specs = []
    for i, (tensor, is_batched, ring_axis) in enumerate(zip(state, batched, ringed)):
        dims: dict[int, Any] = {0: batch} if is_batched else {}
        shape: list[int | str] = list(tensor.shape)
        if is_batched:
            shape[0] = "batch"
        if ring_axis is not None:
            dims[ring_axis] = ring_dim
            shape[ring_axis] = "ring"
        state_dims.append(dims or None)
        specs.append(
            StateSpec(f"state_in_{i}", f"state_out_{i}", tuple(shape), str(tensor.dtype).removeprefix("torch."))
        )
    dynamic = {main_name: main_dims, "state": tuple(state_dims)}
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            (main, *example_state),
            dynamo=True,
            dynamic_shapes=dynamic,
            opset_version=opset,
            input_names=[main_name, *(s.input for s in specs)],
            output_names=[out_name, *(s.output for s in specs)],
            optimize=True,
            verbose=False,
            external_data=False,
        )
    if program is None:
        raise ExportError(f"torch.onnx.export returned no program for the {direction} stream graph")
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
    codes_output = helper.make_tensor_value_info(
        "codes", onnx.TensorProto.INT64, [dims[0].dim_param or "batch", level, dims[2].dim_param or "frames"]
    )
    outputs = [codes_output if o.name == "latent" else o for o in graph.output]
    del graph.output[:]
    graph.output.extend(outputs)
    return model_proto
