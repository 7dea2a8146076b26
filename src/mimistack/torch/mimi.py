"""The Mimi reference model in PyTorch: state dict identical to Kyutai's checkpoint, batch and streaming.

Sits on `conv`, `seanet`, `transformer`, `quantizer`; used by `engine.torch` (the torch `Codec` backend),
`engine.export` (ONNX graphs) and `testing` (random checkpoints).

Encode: pcm `[B, 1, N*1920]` -> SEANet (25 Hz) -> transformer -> stride-2 conv (12.5 Hz) -> split RVQ codes
`[B, K, N]`. Decode: codes + level set -> latent sum -> depthwise transposed conv (25 Hz) -> transformer -> SEANet
decoder -> pcm `[B, 1, N*1920]`. Every stage takes an optional explicit state and returns the next one, so
streaming is the same code as batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..config import MimiConfig
from .conv import ConvDownsample1d, ConvTrUpsample1d, State
from .quantizer import SplitResidualVectorQuantizer
from .seanet import SEANetDecoder, SEANetEncoder
from .transformer import ProjectedTransformer


def _split(state: State | None, sizes: list[int]) -> list[State | None]:
    if state is None:
        return [None] * len(sizes)
    parts: list[State | None] = []
    position = 0
    for size in sizes:
        parts.append(state[position : position + size])
        position += size
    if position != len(state):
        raise ValueError(f"state has {len(state)} tensors, expected {position}")
    return parts


class MimiModel(nn.Module):
    def __init__(self, config: MimiConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = SEANetEncoder(config)
        self.decoder = SEANetDecoder(config)
        self.encoder_transformer = ProjectedTransformer(config)
        self.decoder_transformer = ProjectedTransformer(config)
        self.quantizer = SplitResidualVectorQuantizer(config)
        self.downsample = ConvDownsample1d(config.downsample_stride, config.dimension)
        self.upsample = ConvTrUpsample1d(config.downsample_stride, config.dimension)
        cpu = torch.device("cpu")
        self._encoder_sizes = [
            len(m.init_state(1, cpu, torch.float32)) for m in (self.encoder, self.encoder_transformer, self.downsample)
        ]
        self._decoder_sizes = [
            len(m.init_state(1, cpu, torch.float32)) for m in (self.upsample, self.decoder_transformer, self.decoder)
        ]

    # -- states ---------------------------------------------------------------------------------------------
    def _param(self) -> Tensor:
        return next(iter(self.parameters()))

    def init_encoder_state(self, batch_size: int, ring: int | None = None) -> State:
        """The zero state; `ring`: the transformer's slot count for cache mode "ring-window"."""
        return self._zeros((self.encoder, self.encoder_transformer, self.downsample), batch_size, ring)

    def init_decoder_state(self, batch_size: int, ring: int | None = None) -> State:
        """The zero state; `ring`: the transformer's slot count for cache mode "ring-window"."""
        return self._zeros((self.upsample, self.decoder_transformer, self.decoder), batch_size, ring)

    def _zeros(self, stages: tuple[Any, ...], batch_size: int, ring: int | None) -> State:
        p = self._param()
        return tuple(
            t
            for m in stages
            for t in (
                m.init_state(batch_size, p.device, p.dtype, ring)
                if isinstance(m, ProjectedTransformer)
                else m.init_state(batch_size, p.device, p.dtype)
            )
        )

    # -- encode ---------------------------------------------------------------------------------------------
    def encode_latent(self, pcm: Tensor, state: State | None = None, mode: str = "window") -> tuple[Tensor, State]:
        """pcm `[B, 1, N*frame_size]` -> unquantized latent `[B, dimension, N]` at the frame rate.

        `mode`: the transformers' cache mode for chunked input (`ProjectedTransformer`): `"ring"` for moshi-exact
        frame-by-frame streaming, `"window"` for batch-exact chunks.
        """
        if pcm.dim() != 3 or pcm.shape[1] != 1 or pcm.shape[-1] % self.config.frame_size:
            raise ValueError(f"pcm must be [B, 1, N*{self.config.frame_size}], got {tuple(pcm.shape)}")
        s_enc, s_tr, s_down = _split(state, self._encoder_sizes)
        x, s_enc = self.encoder(pcm, s_enc)
        x, s_tr = self.encoder_transformer(x, s_tr, mode)
        x, s_down = self.downsample(x, s_down)
        return x, (*s_enc, *s_tr, *s_down)

    def encode(self, pcm: Tensor, state: State | None = None, mode: str = "window") -> tuple[Tensor, State]:
        """pcm `[B, 1, N*frame_size]` -> codes int64 `[B, num_levels, N]` (all levels)."""
        latent, state = self.encode_latent(pcm, state, mode)
        return self.quantizer.encode(latent), state

    # -- decode ---------------------------------------------------------------------------------------------
    def latent_from_codes(self, codes: Tensor, levels: list[int] | None = None) -> Tensor:
        """codes `[B, num_levels, N]` -> latent `[B, dimension, N]` with only `levels` (default all) summed."""
        if levels is None:
            levels = list(range(self.config.num_levels))
        return self.quantizer.decode(codes, levels)

    def decode_latent(self, latent: Tensor, state: State | None = None, mode: str = "window") -> tuple[Tensor, State]:
        """latent `[B, dimension, N]` at the frame rate -> pcm `[B, 1, N*frame_size]`."""
        s_up, s_tr, s_dec = _split(state, self._decoder_sizes)
        x, s_up = self.upsample(latent, s_up)
        x, s_tr = self.decoder_transformer(x, s_tr, mode)
        x, s_dec = self.decoder(x, s_dec)
        return x, (*s_up, *s_tr, *s_dec)

    def decode(
        self, codes: Tensor, levels: list[int] | None = None, state: State | None = None, mode: str = "window"
    ) -> tuple[Tensor, State]:
        return self.decode_latent(self.latent_from_codes(codes, levels), state, mode)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.quantizer.refresh()
        return result
