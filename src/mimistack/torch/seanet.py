"""SEANet encoder and decoder (causal, streaming) of the Mimi reference model.

Sits on `conv`; used by `mimi`. The `model` lists keep the original Sequential indices (ELU entries included) so
that keys read `encoder.model.3.conv.conv.weight` as in Kyutai's checkpoint.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import MimiConfig
from .conv import State, StreamingConv1d, StreamingConvTranspose1d


class ResnetBlock(nn.Module):
    """x + conv1x1(ELU(conv_k(ELU(x)))), channels squeezed by `compress` in between. `[B, C, T] -> [B, C, T]`."""

    def __init__(self, dim: int, kernel_size: int, compress: int) -> None:
        super().__init__()
        hidden = dim // compress
        self.block = nn.ModuleList(
            [
                nn.ELU(),
                StreamingConv1d(dim, hidden, kernel_size),
                nn.ELU(),
                StreamingConv1d(hidden, dim, 1),
            ]
        )

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> State:
        state: State = cast(Any, self.block[1]).init_state(batch_size, device, dtype)
        return state

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        y, new_state = self.block[1](F.elu(x), state)
        y, _ = self.block[3](F.elu(y))
        return x + y, new_state


def _run(layers: nn.ModuleList, x: Tensor, state: State | None) -> tuple[Tensor, State]:
    """Apply layers in order, threading each stateful layer's slice of the flat state."""
    new_state: list[Tensor] = []
    position = 0
    for layer in layers:
        if isinstance(layer, nn.ELU):
            x = F.elu(x)
            continue
        size = int(cast(int, layer.state_size))
        if size == 0:
            x, _ = layer(x)
            continue
        sub = None if state is None else state[position : position + size]
        x, out = layer(x, sub)
        new_state.extend(out)
        position += size
    return x, tuple(new_state)


def _annotate_state_sizes(layers: nn.ModuleList) -> None:
    for layer in layers:
        if not isinstance(layer, nn.ELU):
            layer.state_size = len(layer.init_state(1, torch.device("cpu"), torch.float32))  # type: ignore


class _Stack(nn.Module):
    """A list of layers run in order, each stateful one with its slice of one flat state tuple."""

    model: nn.ModuleList

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> State:
        return tuple(
            t
            for layer in self.model
            if not isinstance(layer, nn.ELU)
            for t in cast(Any, layer).init_state(batch_size, device, dtype)
        )

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        return _run(self.model, x, state)


class SEANetEncoder(_Stack):
    """pcm `[B, 1, N * hop]` -> latent `[B, dimension, N]` at sample_rate / hop (25 Hz)."""

    def __init__(self, config: MimiConfig) -> None:
        super().__init__()
        mult = 1
        nf = config.n_filters
        layers: list[nn.Module] = [StreamingConv1d(1, nf, config.kernel_size)]
        for ratio in reversed(config.ratios):
            layers += [
                ResnetBlock(mult * nf, config.residual_kernel_size, config.compress),
                nn.ELU(),
                StreamingConv1d(mult * nf, mult * nf * 2, ratio * 2, ratio),
            ]
            mult *= 2
        layers += [nn.ELU(), StreamingConv1d(mult * nf, config.dimension, config.last_kernel_size)]
        self.model = nn.ModuleList(layers)
        _annotate_state_sizes(self.model)


class SEANetDecoder(_Stack):
    """latent `[B, dimension, N]` at 25 Hz -> pcm `[B, 1, N * hop]` (no final activation)."""

    def __init__(self, config: MimiConfig) -> None:
        super().__init__()
        mult = 2 ** len(config.ratios)
        nf = config.n_filters
        layers: list[nn.Module] = [StreamingConv1d(config.dimension, mult * nf, config.kernel_size)]
        for ratio in config.ratios:
            layers += [
                nn.ELU(),
                StreamingConvTranspose1d(mult * nf, mult * nf // 2, ratio * 2, ratio),
                ResnetBlock(mult * nf // 2, config.residual_kernel_size, config.compress),
            ]
            mult //= 2
        layers += [nn.ELU(), StreamingConv1d(nf, 1, config.last_kernel_size)]
        self.model = nn.ModuleList(layers)
        _annotate_state_sizes(self.model)
