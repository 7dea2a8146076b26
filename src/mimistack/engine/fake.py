"""A deterministic numpy engine that honours the whole engine contract, for tests that need no model.

Sits on `engine.base`, `levels` and `config`; used by tests (`FakeEngine.create("tiny")`) and anywhere a `Codec`
must run without torch or exported graphs. It is not Mimi: its "encoder" is a fixed random projection of each
frame and of the frame before it (so it is causal with one frame of state, like a streaming convolution), and its
"decoder" is the matching projection of the summed latent back to pcm, with an overlap-add tail. Its quantizer and
its latent sum are the real level algebra (`levels.quantize`, `levels.latent_from_codes`), so level subsets,
near-ties and token ranges behave as they do with the real engines.

Every frame is computed by the same operations whatever the chunking, so streaming equals batch exactly, and the
state is a fresh tuple of arrays each call, so sessions cannot disturb each other.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from ..config import MimiConfig
from ..levels import CodebookTables, Levels, latent_from_codes, quantize
from .base import CacheMode, Direction, Engine, EngineError, check_cache_mode


@dataclasses.dataclass(frozen=True)
class FakeState:
    """The previous frame (encoder: its pcm; decoder: its latent), `[B, frame_size]` or `[B, dimension]`, and
    how many frames each row has seen, `[B]`."""

    previous: NDArray[np.float32]
    frames: NDArray[np.int64]


class FakeEngine(Engine):
    """`FakeEngine(config, seed)`: deterministic for a (config, seed) pair; `whole_max_frames` > 0 exercises
    `Codec`'s whole-input path (the same arithmetic as the chunked one)."""

    name = "fake"

    def __init__(self, config: MimiConfig, seed: int = 0, *, whole_max_frames: int = 0) -> None:
        rng = np.random.default_rng(seed)
        dim, book_dim, size = config.dimension, config.codebook_dim, config.codebook_size
        self.config = config
        self.whole_max_frames = whole_max_frames
        scale = np.float32(1.0 / np.sqrt(config.frame_size))
        self._analysis = (rng.standard_normal((dim, config.frame_size)) * scale).astype(np.float32)
        self._synthesis = np.ascontiguousarray(self._analysis.T * np.float32(0.5))

        def books(count: int) -> NDArray[np.float32]:
            return (rng.standard_normal((count, size, book_dim)) * 0.5).astype(np.float32)

        def proj(rows: int, cols: int) -> NDArray[np.float32]:
            return (rng.standard_normal((rows, cols)) / float(np.sqrt(cols))).astype(np.float32)

        self.tables = CodebookTables(
            semantic_codebooks=books(config.num_semantic),
            acoustic_codebooks=books(config.num_acoustic),
            semantic_input_proj=proj(book_dim, dim),
            semantic_output_proj=proj(dim, book_dim),
            acoustic_input_proj=proj(book_dim, dim),
            acoustic_output_proj=proj(dim, book_dim),
        )
        self.weights_sha256 = hashlib.sha256(f"fake-engine:{config.to_json()}:{seed}".encode()).hexdigest()

    @classmethod
    def create(cls, config: str | MimiConfig = "tiny", seed: int = 0, *, whole_max_frames: int = 0) -> FakeEngine:
        return cls(
            config if isinstance(config, MimiConfig) else MimiConfig.named(config),
            seed,
            whole_max_frames=whole_max_frames,
        )

    # -- the contract ---------------------------------------------------------------------------------------
    def encode(
        self, pcm: NDArray[np.float32], state: FakeState | None, mode: CacheMode
    ) -> tuple[NDArray[np.int64], FakeState]:
        check_cache_mode(mode)
        frames = self._frames(pcm)
        state = state if state is not None else self.init_encoder_state(frames.shape[0], mode)
        self._check_state(state, frames.shape[0], self.config.frame_size)
        codes = np.zeros((frames.shape[0], self.config.num_levels, frames.shape[1]), dtype=np.int64)
        previous = state.previous
        for t in range(frames.shape[1]):  # frame by frame: the same arithmetic whatever the chunking
            current = frames[:, t]
            latent = current @ self._analysis.T + np.float32(0.5) * (previous @ self._analysis.T)
            codes[:, :, t] = quantize(self.tables, latent[:, :, None])[:, :, 0]
            previous = current
        return codes, FakeState(previous.copy(), state.frames + frames.shape[1])

    def decode(
        self, codes: NDArray[np.int64], levels: Levels, state: FakeState | None, mode: CacheMode
    ) -> tuple[NDArray[np.float32], FakeState]:
        check_cache_mode(mode)
        codes = np.asarray(codes)
        if codes.ndim != 3 or codes.shape[1] != self.config.num_levels:
            raise EngineError(f"codes must be [B, {self.config.num_levels}, N], got shape {codes.shape}")
        return self.decode_latent(latent_from_codes(self.tables, codes, levels), state, mode)

    def decode_latent(
        self, latent: NDArray[np.float32], state: FakeState | None, mode: CacheMode
    ) -> tuple[NDArray[np.float32], FakeState]:
        check_cache_mode(mode)
        if latent.ndim != 3 or latent.shape[1] != self.config.dimension:
            raise EngineError(f"latent must be [B, {self.config.dimension}, N], got shape {latent.shape}")
        batch, _, count = latent.shape
        state = state if state is not None else self.init_decoder_state(batch, mode)
        self._check_state(state, batch, self.config.dimension)
        pcm = np.zeros((batch, 1, count * self.config.frame_size), dtype=np.float32)
        previous = state.previous
        size = self.config.frame_size
        for t in range(count):
            current = np.ascontiguousarray(latent[:, :, t], dtype=np.float32)
            pcm[:, 0, t * size : (t + 1) * size] = current @ self._synthesis.T + np.float32(0.25) * (
                previous @ self._synthesis.T
            )
            previous = current
        return pcm, FakeState(previous.copy(), state.frames + count)

    # -- stream pools ---------------------------------------------------------------------------------------
    supports_pools = True

    def pool_state(self, direction: Direction, batch_size: int, mode: CacheMode) -> FakeState:
        init = self.init_encoder_state if direction == "encoder" else self.init_decoder_state
        return init(batch_size, mode)

    def take_rows(self, state: FakeState, rows: Sequence[int]) -> FakeState:
        index = np.asarray(rows, dtype=np.intp)
        return FakeState(state.previous[index], state.frames[index])

    def join_rows(self, states: Sequence[FakeState]) -> FakeState:
        return FakeState(
            np.concatenate([s.previous for s in states], axis=0), np.concatenate([s.frames for s in states], axis=0)
        )

    def put_rows(self, state: FakeState, rows: Sequence[int], part: FakeState) -> FakeState:
        index = np.asarray(rows, dtype=np.intp)
        previous, frames = state.previous.copy(), state.frames.copy()
        previous[index], frames[index] = part.previous, part.frames
        return FakeState(previous, frames)

    def init_encoder_state(self, batch_size: int, mode: CacheMode) -> FakeState:
        check_cache_mode(mode)
        return FakeState(
            np.zeros((batch_size, self.config.frame_size), dtype=np.float32), np.zeros(batch_size, np.int64)
        )

    def init_decoder_state(self, batch_size: int, mode: CacheMode) -> FakeState:
        check_cache_mode(mode)
        return FakeState(
            np.zeros((batch_size, self.config.dimension), dtype=np.float32), np.zeros(batch_size, np.int64)
        )

    def encode_whole(self, pcm: NDArray[np.float32]) -> NDArray[np.int64]:
        self._check_whole(pcm.shape[-1] // self.config.frame_size)
        return self.encode(pcm, None, "window")[0]

    def decode_whole(self, codes: NDArray[np.int64], levels: Levels) -> NDArray[np.float32]:
        self._check_whole(codes.shape[-1])
        return self.decode(codes, levels, None, "window")[0]

    # -- checks ---------------------------------------------------------------------------------------------
    def _frames(self, pcm: NDArray[np.float32]) -> NDArray[np.float32]:
        size = self.config.frame_size
        if pcm.ndim != 3 or pcm.shape[1] != 1 or pcm.shape[2] % size:
            raise EngineError(f"pcm must be [B, 1, N*{size}], got shape {pcm.shape}")
        return np.ascontiguousarray(pcm[:, 0].reshape(pcm.shape[0], -1, size), dtype=np.float32)

    @staticmethod
    def _check_state(state: FakeState, batch: int, width: int) -> None:
        if not isinstance(state, FakeState) or state.previous.shape != (batch, width):
            raise EngineError(f"state does not belong to a stream of {batch} row(s) of this engine")

    def _check_whole(self, frames: int) -> None:
        if not 0 < frames <= self.whole_max_frames:
            raise EngineError(f"the whole-input path takes 1..{self.whole_max_frames} frames, got {frames}")
