"""Constants and the model configuration.

Bottom layer of mimistack: every other module reads sizes from here (weights, torch model, level algebra,
tokens, engines). Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Literal

from .errors import MimistackError

SAMPLE_RATE = 24_000
"""Mimi works on 24 kHz mono audio."""
FRAME_RATE = 12.5
"""Token frames per second."""
FRAME_SIZE = 1920
"""Samples per token frame (80 ms)."""
NUM_LEVELS = 32
"""Quantizer levels in the official model (1 semantic + 31 acoustic)."""
CODEBOOK_SIZE = 2048
"""Entries per codebook; tokens are 0..2047 (11 bits)."""


class ConfigError(MimistackError, ValueError):
    """A configuration that cannot describe a Mimi model."""


@dataclasses.dataclass(frozen=True)
class MimiConfig:
    """Architecture of a Mimi codec. Frozen and validated on construction.

    The defaults are the official `kyutai/mimi` architecture; `MimiConfig.tiny()` is a miniature with the same
    structure for fast tests.
    """

    sample_rate: int = SAMPLE_RATE
    # SEANet: the encoder downsamples by prod(ratios) (reversed order); the decoder mirrors it.
    ratios: tuple[int, ...] = (8, 6, 5, 4)
    n_filters: int = 64  # channels after the first conv; doubled at each downsampling
    kernel_size: int = 7  # first conv
    last_kernel_size: int = 3  # last conv
    residual_kernel_size: int = 3
    compress: int = 2  # residual blocks squeeze channels by this factor
    dimension: int = 512  # latent width, also the transformers' d_model
    # Transformer (identical for encoder and decoder side).
    num_heads: int = 8
    num_layers: int = 8
    dim_feedforward: int = 2048
    context: int = 250  # sliding-window causal attention, in 25 Hz steps, batch mode too
    max_period: float = 10_000.0  # RoPE
    layer_norm_eps: float = 1e-5
    # Latent resampling between the encoder rate (sample_rate / hop) and the token frame rate.
    downsample_stride: int = 2
    # Split residual quantizer: `num_semantic` levels in the first branch, the rest in the acoustic chain.
    num_levels: int = NUM_LEVELS
    num_semantic: int = 1
    codebook_size: int = CODEBOOK_SIZE
    codebook_dim: int = 256
    codebook_epsilon: float = 1e-5  # centroid = embedding_sum / clamp(cluster_usage, epsilon)

    def __post_init__(self) -> None:
        def require(cond: bool, message: str) -> None:
            if not cond:
                raise ConfigError(message)

        require(self.sample_rate > 0, f"sample_rate must be positive, got {self.sample_rate}")
        require(len(self.ratios) > 0 and all(r > 0 for r in self.ratios), f"bad ratios {self.ratios}")
        for name in (
            "n_filters",
            "dimension",
            "num_heads",
            "num_layers",
            "dim_feedforward",
            "context",
            "num_levels",
            "num_semantic",
            "codebook_size",
            "codebook_dim",
            "downsample_stride",
        ):
            require(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")
        require(
            self.dimension % self.num_heads == 0,
            f"dimension {self.dimension} is not divisible by num_heads {self.num_heads}",
        )
        require((self.dimension // self.num_heads) % 2 == 0, "RoPE needs an even head dimension")
        require(self.n_filters % self.compress == 0, "n_filters must be divisible by compress")
        require(self.num_semantic < self.num_levels, "num_semantic must leave at least one acoustic level")
        require(self.codebook_size <= 65536, "codebook_size must fit uint16 tokens")
        require(self.kernel_size % 2 == 1 and self.last_kernel_size % 2 == 1, "kernel sizes must be odd")

    # -- derived sizes --------------------------------------------------------------------------------------
    @property
    def hop_length(self) -> int:
        """Samples per encoder step (before the stride-2 downsampling)."""
        return math.prod(self.ratios)

    @property
    def frame_size(self) -> int:
        """Samples per token frame."""
        return self.hop_length * self.downsample_stride

    @property
    def frame_rate(self) -> float:
        """Token frames per second."""
        return self.sample_rate / self.frame_size

    def num_frames(self, num_samples: int) -> int:
        """Token frames that cover `num_samples` samples: the last partial frame counts (it is zero-padded)."""
        return -(-int(num_samples) // self.frame_size)

    @property
    def encoder_channels(self) -> int:
        """Channels at the bottom of the SEANet encoder (before the final conv to `dimension`)."""
        return int(self.n_filters * 2 ** len(self.ratios))

    @property
    def num_acoustic(self) -> int:
        return self.num_levels - self.num_semantic

    @property
    def bits_per_token(self) -> float:
        return math.log2(self.codebook_size)

    def bitrate(self, num_levels: int) -> float:
        """Bits per second of `num_levels` levels with fixed-width tokens."""
        return num_levels * self.frame_rate * self.bits_per_token

    # -- constructors and serialisation ---------------------------------------------------------------------
    @classmethod
    def official(cls) -> MimiConfig:
        """The `kyutai/mimi` architecture (Moshi's tokenizer)."""
        return cls()

    @classmethod
    def tiny(cls) -> MimiConfig:
        """A miniature with the official structure (1920-sample frames, split quantizer) for fast tests.

        Its attention context is 8 steps (0.32 s, 4 frames) instead of 250 (10 s), so that tests which cross the
        cache boundary (ring wrap-around, window eviction) need a fraction of a second of audio."""
        return cls(
            n_filters=4,
            dimension=32,
            num_heads=2,
            num_layers=2,
            dim_feedforward=64,
            codebook_size=64,
            codebook_dim=16,
            context=8,
        )

    @classmethod
    def named(cls, name: Literal["official", "tiny"] | str) -> MimiConfig:
        if name == "official":
            return cls.official()
        if name == "tiny":
            return cls.tiny()
        raise ConfigError(f"unknown config name {name!r}; expected 'official' or 'tiny'")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["ratios"] = list(self.ratios)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MimiConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown MimiConfig fields: {', '.join(unknown)}")
        values = dict(data)
        if "ratios" in values:
            values["ratios"] = tuple(values["ratios"])
        return cls(**values)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @property
    def is_official(self) -> bool:
        return self == MimiConfig.official()
