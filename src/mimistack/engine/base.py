"""The engine contract: what a backend (PyTorch, ONNX Runtime, the numpy fake) provides to `Codec`.

Sits on `config`, `levels` and `errors`; implemented by `engine.torch`, `engine.onnx` and `engine.fake`; driven by
`mimistack.codec.Codec`, which owns padding, chunking, token grids and streaming sessions, so that engines stay
small. `tests/test_engine_contract.py` holds every engine to this contract.

All arrays are numpy. An engine works on whole frames: pcm `[B, 1, N * frame_size]` float32, codes
`[B, num_levels, N]` int64. State objects are opaque to callers; each call returns the next one and never changes
the one it was given, so two sessions (or a session and a retry) cannot disturb each other. The one exception is a
stream pool's state (made by `pool_state`, `take_rows` or `join_rows`), which belongs to the pool: an engine may
update it in place and hand it on, after which the state given is spent (the ONNX engine does, for its KV caches).

Required: `encode`, `decode`, `init_encoder_state`, `init_decoder_state` and the attributes `name`, `config`,
`weights_sha256`, `tables`. Optional capabilities have defaults here, so `Codec` calls them on every engine without
probing:
- the whole-input fast path: `whole_max_frames` (0: none), `encode_whole`, `decode_whole`;
- `host_buffer(shape)`: a float32 staging buffer the engine can send to its device without another copy;
- the latent split of decoding: `latent_from_codes` (the level algebra, default: `levels.latent_from_codes` on
  `tables`) and `decode_latent` (the decoder on a latent), so that rows with different level sets share one call;
- stream pools (`mimistack.pool`): `pool_state`, `take_rows`, `join_rows`, `put_rows`. A pool's state has one row
  per open stream; rows at different points of their streams advance together in one batched call, each row keeping
  its own positions, buffers and caches. `supports_pools` says whether the engine has them.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, Literal, get_args

import numpy as np
from numpy.typing import NDArray

from ..config import MimiConfig
from ..errors import MimistackError
from ..levels import CodebookTables, Levels, latent_from_codes

CacheMode = Literal["window", "moshi"]
"""How transformer caches behave when a stream is fed in chunks; the same on every engine:

- `"window"`: exactly batch mode's attention window (each step attends to the previous `context` steps), so
  streaming computes the same function as batch (up to float rounding, which depends on chunk sizes).
- `"moshi"`: Kyutai's ring KV cache of exactly `context` slots, bit-identical to moshi's own streaming; once a
  stream is longer than the context (250 steps = 10 s), the first step of each frame sees one key fewer than in
  batch mode, as in moshi. `Codec` feeds "moshi" streams one frame per call, as moshi does.
"""
CACHE_MODES: tuple[CacheMode, ...] = get_args(CacheMode)

Direction = Literal["encoder", "decoder"]

EngineState = Any
"""An engine's opaque stream state (each engine defines its own)."""


class EngineError(MimistackError, RuntimeError):
    """An engine that cannot run the request (missing runtime, wrong device, bad graph, bad arguments)."""


def check_cache_mode(mode: str) -> CacheMode:
    if mode in CACHE_MODES:
        return mode
    raise EngineError(f"unknown cache mode {mode!r}; expected one of {', '.join(CACHE_MODES)}")


class Engine(abc.ABC):
    """Base class of every engine: the required methods are abstract, the optional capabilities have defaults."""

    name: str
    config: MimiConfig
    weights_sha256: str
    tables: CodebookTables

    whole_max_frames: int = 0
    """Longest input (in frames) that `encode_whole`/`decode_whole` take; 0 when the engine has no such path."""

    @abc.abstractmethod
    def encode(
        self, pcm: NDArray[np.float32], state: EngineState | None, mode: CacheMode
    ) -> tuple[NDArray[np.int64], EngineState]:
        """pcm `[B, 1, N*frame_size]` -> codes int64 `[B, num_levels, N]` and the next state."""

    @abc.abstractmethod
    def decode(
        self, codes: NDArray[np.int64], levels: Levels, state: EngineState | None, mode: CacheMode
    ) -> tuple[NDArray[np.float32], EngineState]:
        """codes `[B, num_levels, N]` + levels -> pcm float32 `[B, 1, N*frame_size]` and the next state.

        Levels not selected contribute nothing to the latent; their rows of `codes` are ignored.
        """

    @abc.abstractmethod
    def init_encoder_state(self, batch_size: int, mode: CacheMode) -> EngineState | None:
        """The state a stream of `batch_size` rows starts from."""

    @abc.abstractmethod
    def init_decoder_state(self, batch_size: int, mode: CacheMode) -> EngineState | None:
        """The state a decoding stream of `batch_size` rows starts from."""

    # -- optional capabilities ------------------------------------------------------------------------------
    def encode_whole(self, pcm: NDArray[np.float32]) -> NDArray[np.int64]:
        """The whole-input path: pcm `[B, 1, N*frame_size]` with 0 < N <= `whole_max_frames` -> codes, in one
        call with no state (the same function as `encode` from the initial state, up to the path's precision)."""
        raise EngineError(f"the {self.name} engine has no whole-input path (whole_max_frames is 0)")

    def decode_whole(self, codes: NDArray[np.int64], levels: Levels) -> NDArray[np.float32]:
        """The whole-input path for decoding: codes `[B, num_levels, N]`, 0 < N <= `whole_max_frames` -> pcm."""
        raise EngineError(f"the {self.name} engine has no whole-input path (whole_max_frames is 0)")

    def host_buffer(self, shape: tuple[int, ...]) -> NDArray[np.float32]:
        """A float32 buffer of `shape` to stage pcm in; valid until the next call. Default: a new numpy array."""
        return np.empty(shape, dtype=np.float32)

    # -- the latent split of decoding -----------------------------------------------------------------------
    def latent_from_codes(self, codes: NDArray[np.int64], levels: Levels) -> NDArray[np.float32]:
        """codes `[B, num_levels, N]` -> latent float32 `[B, dimension, N]`: the sum of the selected levels' terms."""
        return latent_from_codes(self.tables, np.asarray(codes), levels)

    def decode_latent(
        self, latent: NDArray[np.float32], state: EngineState | None, mode: CacheMode
    ) -> tuple[NDArray[np.float32], EngineState]:
        """latent `[B, dimension, N]` -> pcm `[B, 1, N*frame_size]` and the next state (`decode` = this after
        `latent_from_codes`)."""
        raise EngineError(f"the {self.name} engine cannot decode a latent")

    # -- stream pools ---------------------------------------------------------------------------------------
    supports_pools: bool = False
    """Whether `pool_state`, `take_rows`, `join_rows` and `put_rows` work (and `decode_latent`)."""

    def pool_state(self, direction: Direction, batch_size: int, mode: CacheMode) -> EngineState:
        """An explicit initial state of `batch_size` rows (never None) whose rows can be taken, joined and put.

        It computes what `init_encoder_state`/`init_decoder_state` start from (up to float rounding)."""
        raise EngineError(f"the {self.name} engine cannot batch streams (no stream pools)")

    def take_rows(self, state: EngineState, rows: Sequence[int]) -> EngineState:
        """A new state made of `rows` of `state`, in that order (a copy: `state` is left as it is)."""
        raise EngineError(f"the {self.name} engine cannot batch streams (no stream pools)")

    def join_rows(self, states: Sequence[EngineState]) -> EngineState:
        """The rows of `states` one after the other, in one state."""
        raise EngineError(f"the {self.name} engine cannot batch streams (no stream pools)")

    def put_rows(self, state: EngineState, rows: Sequence[int], part: EngineState) -> EngineState:
        """`state` with `rows` replaced by the rows of `part`. The caller gives `state` up: it may be updated in
        place and returned (a pool owns its state; nobody else holds it)."""
        raise EngineError(f"the {self.name} engine cannot batch streams (no stream pools)")
