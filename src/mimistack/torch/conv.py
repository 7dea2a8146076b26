"""Causal convolutions with explicit streaming state.

Bottom of the PyTorch reference model (`mimistack.torch`); used by `seanet` and `mimi`. Module and parameter
names reproduce Kyutai's checkpoint (`<name>.conv.conv.weight`, `<name>.convtr.convtr.weight`).

Every stateful module here has `init_state(batch_size, device, dtype) -> tuple[Tensor, ...]` and
`forward(x, state) -> (y, new_state)`. `state=None` means "start of the stream" and takes the batch path (plain
padding, no concatenation), which is arithmetically identical to streaming from the initial state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

State = tuple[Tensor, ...]


class _Holder(nn.Module):
    """Adds one level of nesting so that parameter names match the original checkpoint."""

    def __init__(self, name: str, module: nn.Module) -> None:
        super().__init__()
        self.add_module(name, module)


class StreamingConv1d(nn.Module):
    """Causal Conv1d: left context of `effective_kernel - stride` samples, kept between calls.

    x: `[B, C_in, T]` with T a multiple of `stride` -> y: `[B, C_out, T / stride]`.
    State: `(previous [B, C_in, effective_kernel - stride],)`, plus `(first [B, 1, 1],)` in replicate mode (1.0
    until the first chunk has been seen: the left context then replicates the first sample).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        pad_mode: str = "constant",
    ) -> None:
        super().__init__()
        if pad_mode not in ("constant", "replicate"):
            raise ValueError(f"pad_mode must be 'constant' or 'replicate', got {pad_mode!r}")
        self.pad_mode = pad_mode
        self.conv = _Holder(
            "conv",
            nn.Conv1d(in_channels, out_channels, kernel_size, stride, dilation=dilation, groups=groups, bias=bias),
        )
        self.stride = stride
        self.context = (kernel_size - 1) * dilation + 1 - stride

    @property
    def inner(self) -> nn.Conv1d:
        return self.conv.conv  # type: ignore[return-value]

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> State:
        if self.context == 0:
            return ()
        previous = torch.zeros(batch_size, self.inner.in_channels, self.context, device=device, dtype=dtype)
        if self.pad_mode == "replicate":
            return previous, torch.ones(batch_size, 1, 1, device=device, dtype=dtype)
        return (previous,)

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        if self.context == 0:
            return self.inner(x), ()
        if state is None:
            mode = "replicate" if self.pad_mode == "replicate" else "constant"
            padded = F.pad(x, (self.context, 0), mode=mode)
            y = self.inner(padded)
            new_state: State = (padded[..., -self.context :],)
            if self.pad_mode == "replicate":
                new_state = (*new_state, torch.zeros(x.shape[0], 1, 1, device=x.device, dtype=x.dtype))
            return y, new_state
        previous = state[0]
        if self.pad_mode == "replicate":
            first = state[1]
            previous = first * x[..., :1] + (1 - first) * previous
        padded = torch.cat([previous, x], dim=-1)
        y = self.inner(padded)
        new_state = (padded[..., -self.context :],)
        if self.pad_mode == "replicate":
            new_state = (*new_state, torch.zeros_like(state[1]))
        return y, new_state


class StreamingConvTranspose1d(nn.Module):
    """Causal ConvTranspose1d: the `kernel - stride` samples that overlap the next chunk are kept as a tail.

    x: `[B, C_in, T]` -> y: `[B, C_out, T * stride]`. State: `(tail [B, C_out, kernel - stride],)` (bias removed,
    since the next chunk adds its own).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1, bias: bool = True
    ) -> None:
        super().__init__()
        self.convtr = _Holder(
            "convtr", nn.ConvTranspose1d(in_channels, out_channels, kernel_size, stride, groups=groups, bias=bias)
        )
        self.stride = stride
        self.overlap = kernel_size - stride
        # PyTorch's CPU transposed convolution takes a slow path (col2im) on short inputs, which dominates
        # frame-by-frame decoding. The torch engine turns this on; exported graphs keep the plain op.
        self.matmul_for_short_inputs = False
        self._matmul_ok = groups == 1 and kernel_size == 2 * stride

    @property
    def inner(self) -> nn.ConvTranspose1d:
        return self.convtr.convtr  # type: ignore[return-value]

    def _matmul(self, x: Tensor) -> Tensor:
        """The transposed convolution as one matmul when kernel = 2 * stride: each input step writes a 2S block,
        whose first half lands on its own S output samples and whose second half on the next step's."""
        batch, cin, steps = x.shape
        weight = self.inner.weight  # [C_in, C_out, 2S]
        cout, stride = weight.shape[1], self.stride
        blocks = torch.matmul(x.transpose(1, 2), weight.reshape(cin, -1)).view(batch, steps, cout, 2 * stride)
        out = F.pad(blocks[..., :stride], (0, 0, 0, 0, 0, 1)) + F.pad(blocks[..., stride:], (0, 0, 0, 0, 1, 0))
        y = out.permute(0, 2, 1, 3).reshape(batch, cout, (steps + 1) * stride)
        bias = self.inner.bias
        return y if bias is None else y + bias[:, None]

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> State:
        if self.overlap == 0:
            return ()
        return (torch.zeros(batch_size, self.inner.out_channels, self.overlap, device=device, dtype=dtype),)

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        if self.matmul_for_short_inputs and self._matmul_ok and x.shape[-1] <= 16:
            y = self._matmul(x)
        else:
            y = self.inner(x)
        if self.overlap == 0:
            return y, ()
        overlap = self.overlap
        if state is not None:
            y = torch.cat([y[..., :overlap] + state[0], y[..., overlap:]], dim=-1)
        tail = y[..., -overlap:]
        bias = self.inner.bias
        if bias is not None:
            tail = tail - bias[:, None]
        return y[..., :-overlap], (tail,)


class ConvDownsample1d(nn.Module):
    """Learnt stride-`stride` downsampling of the latent (replicate padding), 25 Hz -> 12.5 Hz."""

    def __init__(self, stride: int, dimension: int) -> None:
        super().__init__()
        self.conv = StreamingConv1d(dimension, dimension, 2 * stride, stride, bias=False, pad_mode="replicate")

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> State:
        return self.conv.init_state(batch_size, device, dtype)

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        out: tuple[Tensor, State] = self.conv(x, state)
        return out


class ConvTrUpsample1d(nn.Module):
    """Learnt depthwise transposed-conv upsampling of the latent, 12.5 Hz -> 25 Hz."""

    def __init__(self, stride: int, dimension: int) -> None:
        super().__init__()
        self.convtr = StreamingConvTranspose1d(dimension, dimension, 2 * stride, stride, groups=dimension, bias=False)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> State:
        return self.convtr.init_state(batch_size, device, dtype)

    def forward(self, x: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        out: tuple[Tensor, State] = self.convtr(x, state)
        return out
