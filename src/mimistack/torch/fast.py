"""A fast whole-input path of the same model for GPU batch work (corpus tokenization): opt-in, batch only.

What it changes against `MimiModel`'s batch path (same weights, same function up to float rounding):

- the SEANet stacks run as 2-D convolutions on `[B, C, 1, T]` in channels-last memory (cuDNN's tensor-core
  kernels want channels innermost);
- each stride-s transposed convolution with kernel 2s becomes a causal kernel-2 convolution to `s * C_out`
  channels whose phases interleave for free in channels-last memory (cuDNN's transposed-convolution kernels are
  the slow part of GPU decoding at these shapes);
- SEANet, transformers and the down/upsampling convolutions may run in bfloat16 or float16 (weights cast once, no
  autocast casts); the nearest-centroid search and the latent sum always run in strict fp32 (no TF32);
- optionally `torch.compile` of the two stacks (fuses ELU, padding, residual adds, LayerScale, RoPE).

There is no streaming state: `encode`/`decode` take whole inputs (the engine uses this path only for inputs of at
most `max_frames` frames and falls back to its chunked path otherwise). In float32 it computes the batch path's
function in a different summation order (a near-tied token may flip); in bf16 many tokens differ from fp32 on
random weights (see BENCHMARKS.md), so it is never the default.

Sits on `torch.mimi`, `torch.conv`, `torch.seanet`; used by `engine.torch.TorchEngine(fast=True)` and
`bench/gpu_corpus.py`.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conv import StreamingConv1d, StreamingConvTranspose1d
from .mimi import MimiModel
from .seanet import ResnetBlock

_Op = tuple[Any, ...]


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """TF32 off for matmuls and convolutions inside the block (restored afterwards)."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def polyphase_weight(inner: nn.ConvTranspose1d) -> tuple[Tensor, Tensor | None]:
    """A stride-s, kernel-2s transposed convolution as a kernel-2 convolution to s * C_out channels.

    y[o, n*s + r] = sum_i W[i, o, r] x[i, n] + W[i, o, r + s] x[i, n - 1]: output channel r * C_out + o of the
    kernel-2 convolution over [x[n-1], x[n]] is phase r of channel o. Returns (weight `[s*C_out, C_in, 1, 2]`,
    bias `[s*C_out]` or None).
    """
    stride, kernel = inner.stride[0], inner.kernel_size[0]
    if inner.groups != 1 or kernel != 2 * stride:
        raise ValueError(f"polyphase form needs groups 1 and kernel 2 x stride, got {inner}")
    weight = inner.weight.detach()  # [C_in, C_out, 2s]
    taps = torch.stack([weight[:, :, stride:], weight[:, :, :stride]], dim=-1)  # [C_in, C_out, s, 2]
    taps = taps.permute(2, 1, 0, 3).reshape(stride * weight.shape[1], weight.shape[0], 1, 2)
    bias = None if inner.bias is None else inner.bias.detach().repeat(stride)
    return taps, bias


class ChannelsLastSeanet(nn.Module):
    """A SEANet stack's batch path (zero start state, tail dropped) as 2-D convolutions in channels-last memory."""

    def __init__(self, seanet: nn.Module, channels_last: bool = True) -> None:
        super().__init__()
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.ops: list[_Op] = []
        self.params = nn.ParameterList()
        for layer in seanet.model:  # type: ignore[union-attr]
            if isinstance(layer, nn.ELU):
                self.ops.append(("elu", layer.alpha))
            elif isinstance(layer, ResnetBlock):
                self.ops.append(
                    (
                        "res",
                        self._conv(cast(StreamingConv1d, layer.block[1])),
                        self._conv(cast(StreamingConv1d, layer.block[3])),
                        layer.block[0].alpha,
                        layer.block[2].alpha,
                    )
                )
            elif isinstance(layer, StreamingConv1d):
                self.ops.append(self._conv(layer))
            elif isinstance(layer, StreamingConvTranspose1d):
                weight, bias = polyphase_weight(layer.inner)
                self.ops.append(
                    ("polyphase", self._keep(weight), self._keep(bias), layer.stride, layer.inner.out_channels)
                )
            else:
                raise TypeError(f"unexpected SEANet layer {type(layer).__name__}")

    def _keep(self, tensor: Tensor | None) -> Tensor | None:
        if tensor is None:
            return None
        if tensor.dim() == 4:
            tensor = tensor.contiguous(memory_format=self.memory_format)
        param = nn.Parameter(tensor.detach().clone(), requires_grad=False)
        self.params.append(param)
        return param

    def _conv(self, layer: StreamingConv1d) -> _Op:
        inner = layer.inner
        return (
            "conv",
            self._keep(inner.weight.detach().unsqueeze(2)),
            self._keep(inner.bias),
            inner.stride[0],
            inner.dilation[0],
            inner.groups,
            layer.context,
            layer.pad_mode,
        )

    @staticmethod
    def _apply_conv(op: _Op, x: Tensor) -> Tensor:
        _, weight, bias, stride, dilation, groups, context, pad_mode = op
        if context:
            x = F.pad(x, (context, 0), mode="replicate" if pad_mode == "replicate" else "constant")
        return F.conv2d(x, weight, bias, stride=(1, stride), dilation=(1, dilation), groups=groups)

    def forward(self, x: Tensor) -> Tensor:
        """`[B, C, T]` -> `[B, C', T']` (contiguous)."""
        h = x.unsqueeze(2).contiguous(memory_format=self.memory_format)
        for op in self.ops:
            kind = op[0]
            if kind == "elu":
                h = F.elu(h, op[1])
            elif kind == "res":
                h = h + self._apply_conv(op[2], F.elu(self._apply_conv(op[1], F.elu(h, op[3])), op[4]))
            elif kind == "conv":
                h = self._apply_conv(op, h)
            else:
                _, weight, bias, stride, channels_out = op
                z = F.conv2d(F.pad(h, (1, 0)), weight, bias)  # [B, s*C_out, 1, T]
                batch, _, _, steps = z.shape
                h = z.permute(0, 2, 3, 1).reshape(batch, 1, steps * stride, channels_out).permute(0, 3, 1, 2)
                h = h.contiguous(memory_format=self.memory_format)
        return h.squeeze(2).contiguous()


class FastMimi(nn.Module):
    """Whole-input encode/decode of `model` in `dtype`, quantizer in strict fp32. `compile`: `torch.compile` the
    SEANet + transformer stacks (first call per input shape compiles, which takes tens of seconds)."""

    def __init__(
        self,
        model: MimiModel,
        dtype: torch.dtype = torch.bfloat16,
        *,
        channels_last: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.dtype = dtype
        self.config = model.config
        self.encoder = ChannelsLastSeanet(copy.deepcopy(model.encoder).to(dtype), channels_last)
        self.encoder_transformer = copy.deepcopy(model.encoder_transformer).to(dtype)
        self.downsample = copy.deepcopy(model.downsample).to(dtype)
        self.upsample = copy.deepcopy(model.upsample).to(dtype)
        self.decoder_transformer = copy.deepcopy(model.decoder_transformer).to(dtype)
        self.decoder = ChannelsLastSeanet(copy.deepcopy(model.decoder).to(dtype), channels_last)
        self.quantizer = model.quantizer  # shared with the exact path: fp32 tables, no copy
        self.encode_stack: Callable[[Tensor], Tensor] = self._encode_stack
        self.decode_stack: Callable[[Tensor], Tensor] = self._decode_stack
        if compile:
            self.encode_stack = torch.compile(self._encode_stack, dynamic=False)
            self.decode_stack = torch.compile(self._decode_stack, dynamic=False)

    def _encode_stack(self, pcm: Tensor) -> Tensor:
        x = self.encoder(pcm.to(self.dtype))
        x, _ = self.encoder_transformer(x, None, "window")
        x, _ = self.downsample(x)
        return cast(Tensor, x).float()

    def _decode_stack(self, latent: Tensor) -> Tensor:
        x, _ = self.upsample(latent.to(self.dtype))
        x, _ = self.decoder_transformer(x, None, "window")
        return cast(Tensor, self.decoder(x)).float()

    def encode(self, pcm: Tensor) -> Tensor:
        """pcm `[B, 1, N*frame_size]` -> codes int64 `[B, num_levels, N]`."""
        frame = self.config.frame_size
        if pcm.dim() != 3 or pcm.shape[1] != 1 or pcm.shape[-1] % frame:
            raise ValueError(f"pcm must be [B, 1, N*{frame}], got {tuple(pcm.shape)}")
        latent = self.encode_stack(pcm)
        with strict_fp32():
            return self.quantizer.encode(latent)

    def decode(self, codes: Tensor, levels: list[int]) -> Tensor:
        """codes `[B, num_levels, N]` + selected levels -> pcm float32 `[B, 1, N*frame_size]`."""
        with strict_fp32():
            latent = self.quantizer.decode(codes, levels)
        return self.decode_stack(latent)
