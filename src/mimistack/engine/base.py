"""The engine interface: what a backend (PyTorch, ONNX Runtime, a fake for tests) must provide.

Sits on `config` and `levels`; implemented by `engine.torch` and `engine.onnx`; driven by `mimistack.codec.Codec`,
which owns padding, chunking, token grids and streaming sessions, so that engines stay small.

All arrays are numpy. An engine works on whole frames: pcm `[B, 1, N * frame_size]` float32, codes
`[B, num_levels, N]` int64. State objects are opaque to callers; `None` means "start of the stream".
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from ..config import MimiConfig
from ..levels import CodebookTables, Levels

CacheMode = Literal["window", "moshi"]
"""How transformer caches behave when a stream is fed in chunks:

- `"window"`: exactly batch mode's attention window (each step attends to the previous `context` steps), so
  streaming computes the same function as batch (up to float rounding, which depends on chunk sizes).
- `"moshi"`: Kyutai's ring KV cache, bit-identical to moshi's own streaming; it drops up to one frame's worth of
  the oldest keys once a stream is longer than the context (250 steps = 10 s), as moshi does.
"""


class EngineError(RuntimeError):
    """An engine that cannot run the request (missing runtime, wrong device, bad graph)."""


@runtime_checkable
class Engine(Protocol):
    name: str
    config: MimiConfig
    weights_sha256: str
    tables: CodebookTables

    def encode(self, pcm: np.ndarray, state: Any | None, mode: CacheMode) -> tuple[np.ndarray, Any]:
        """pcm `[B, 1, N*frame_size]` -> codes int64 `[B, num_levels, N]` and the next state."""
        ...

    def decode(self, codes: np.ndarray, levels: Levels, state: Any | None,
               mode: CacheMode) -> tuple[np.ndarray, Any]:
        """codes `[B, num_levels, N]` + levels -> pcm float32 `[B, 1, N*frame_size]` and the next state.

        Levels not selected contribute nothing to the latent; their rows of `codes` are ignored.
        """
        ...

    def init_encoder_state(self, batch_size: int, mode: CacheMode) -> Any | None:
        """The state a stream starts from (None when the engine's batch path serves as the start)."""
        ...

    def init_decoder_state(self, batch_size: int, mode: CacheMode) -> Any | None:
        ...
