"""Many streams at once: a pool of stream slots that advance together, one batched engine call per step.

Sits on `engine.base` (the pool half of the contract: `pool_state`, `take_rows`, `join_rows`, `put_rows`,
`latent_from_codes`, `decode_latent`), `levels` and `config`; made by `Codec.stream_pool` and driven by the stream
server (`mimistack.serve`). Every stream shares each read of the weights: one step runs the encoder once for all
the slots with a frame of pcm waiting and the decoder once for all the slots with a frame of codes waiting.

How the state is kept. A lane (the encoder side or the decoder side) holds one engine state with one row per open
slot, in the order the slots joined. Every row keeps its own conv buffers, overlap tails, KV caches, positions and
first-frame flags (`engine.torch` and the ONNX graphs keep a position per row), so rows at different points of
their streams advance in one call. A slot that opens gets a row made by `pool_state`, the same start as a fresh
single stream; a slot that closes loses its row, so nothing of a closed stream can reach the next one. When every
row has a frame waiting (the steady state of real-time streams) the step runs on the lane's state as it is; when
only some do, their rows are taken out, advanced and put back, so slots without a frame cost nothing.

Thread use: `open`, `close`, `push_*`, `set_levels`, `finish` and `pull_*` may be called from any thread while
another runs `step`; only `step` touches engine states (one step at a time).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Literal, get_args

import numpy as np
from numpy.typing import NDArray

from .config import MimiConfig
from .engine.base import CacheMode, Direction, Engine, EngineState, check_cache_mode
from .errors import MimistackError
from .levels import Levels, LevelsLike

PoolDirection = Literal["encode", "decode", "both"]
POOL_DIRECTIONS: tuple[PoolDirection, ...] = get_args(PoolDirection)


class PoolError(MimistackError, ValueError):
    """A request a stream pool cannot take: an unknown or closed slot, bad input, too much input waiting."""


class PoolFullError(PoolError):
    """Every slot of the pool is taken (admission control: a stream over capacity is refused, so that the
    streams already running keep real time)."""


@dataclasses.dataclass(frozen=True)
class StepResult:
    """What one `step` produced: `codes[slot]` int64 `[num_levels]` (one frame encoded) and `pcm[slot]` float32
    `[frame_size]` (one frame decoded), with the rows each engine call ran and how long the step took."""

    codes: dict[int, NDArray[np.int64]]
    pcm: dict[int, NDArray[np.float32]]
    encode_rows: int
    decode_rows: int
    seconds: float

    @property
    def idle(self) -> bool:
        return not self.codes and not self.pcm


@dataclasses.dataclass
class _Slot:
    id: int
    levels: Levels
    sides: frozenset[str]
    pcm: list[NDArray[np.float32]] = dataclasses.field(default_factory=list)
    pcm_samples: int = 0
    codes: deque[tuple[Levels, NDArray[np.int64]]] = dataclasses.field(default_factory=deque)
    finishing: bool = False
    out_codes: deque[NDArray[np.int64]] = dataclasses.field(default_factory=deque)
    out_pcm: deque[NDArray[np.float32]] = dataclasses.field(default_factory=deque)
    encoded: int = 0
    decoded: int = 0


class _Lane:
    """The rows of one direction: slot ids in row order and the engine state with one row each."""

    def __init__(self, engine: Engine, direction: Direction, mode: CacheMode) -> None:
        self.engine, self.direction, self.mode = engine, direction, mode
        self.rows: list[int] = []
        self.state: EngineState | None = None

    def sync(self, open_ids: Sequence[int]) -> None:
        """Drop the rows of closed slots, add a fresh row for each slot that opened (in one join)."""
        wanted = set(open_ids)
        alive = [slot for slot in self.rows if slot in wanted]
        if len(alive) != len(self.rows):
            keep = [row for row, slot in enumerate(self.rows) if slot in wanted]
            self.state = self.engine.take_rows(self.state, keep) if keep else None
            self.rows = alive
        known = set(self.rows)
        new = [slot for slot in open_ids if slot not in known]
        if new:
            fresh = self.engine.pool_state(self.direction, len(new), self.mode)
            self.state = fresh if self.state is None else self.engine.join_rows([self.state, fresh])
            self.rows += new

    def run(self, ready: Sequence[int], compute: Any) -> Any:
        """`compute(state) -> (output, next state)` on the rows of the `ready` slots (all rows: as they are)."""
        position = {slot: row for row, slot in enumerate(self.rows)}
        index = [position[slot] for slot in ready]
        if index == list(range(len(self.rows))):
            output, self.state = compute(self.state)
            return output
        output, part = compute(self.engine.take_rows(self.state, index))
        self.state = self.engine.put_rows(self.state, index, part)
        return output


class StreamPool:
    """Up to `max_streams` streams advanced together. `direction`: "encode" (pcm in, codes out), "decode" (codes
    in, pcm out, each slot at its own level set) or "both" (each slot has both sides, as a call's participant).

    `mode`: the transformers' cache mode, as for `Codec.stream_encoder`: "window" (batch's window) or "moshi"
    (Kyutai's ring cache). Each step advances every slot with a whole frame waiting by one frame, so a slot's
    output equals a single stream of the same input fed frame by frame (up to float rounding, which depends on the
    batch: a near-tied token may flip). `max_pending_frames` bounds the input a slot may have waiting;
    `keep_outputs=False` leaves the outputs in `step`'s result only (for a server that sends them on at once).
    """

    def __init__(
        self,
        engine: Engine,
        max_streams: int,
        direction: PoolDirection = "both",
        mode: CacheMode = "window",
        *,
        max_pending_frames: int = 250,
        keep_outputs: bool = True,
    ) -> None:
        if direction not in POOL_DIRECTIONS:
            raise PoolError(f"unknown direction {direction!r}; expected one of {', '.join(POOL_DIRECTIONS)}")
        if isinstance(max_streams, bool) or not isinstance(max_streams, int) or max_streams < 1:
            raise PoolError(f"max_streams must be a positive integer, got {max_streams!r}")
        if max_pending_frames < 1:
            raise PoolError(f"max_pending_frames must be positive, got {max_pending_frames}")
        if not engine.supports_pools:
            # The engine says why (an old export, an engine without pools).
            engine.pool_state("decoder" if direction == "decode" else "encoder", 1, check_cache_mode(mode))
        self.engine = engine
        self.config: MimiConfig = engine.config
        self.max_streams = max_streams
        self.direction: PoolDirection = direction
        self.mode: CacheMode = check_cache_mode(mode)
        self.max_pending_frames = max_pending_frames
        self.keep_outputs = keep_outputs
        self._encoder = _Lane(engine, "encoder", self.mode) if direction != "decode" else None
        self._decoder = _Lane(engine, "decoder", self.mode) if direction != "encode" else None
        self._slots: dict[int, _Slot] = {}
        self._next_id = 0
        self._lock = threading.Lock()  # slots and their buffers
        self._step_lock = threading.Lock()  # engine states: one step at a time
        self.steps = 0

    def __repr__(self) -> str:
        return (
            f"StreamPool({self.engine.name}, {len(self._slots)}/{self.max_streams} open, "
            f"direction={self.direction!r}, mode={self.mode!r})"
        )

    # -- slots ----------------------------------------------------------------------------------------------
    @property
    def open_slots(self) -> list[int]:
        with self._lock:
            return list(self._slots)

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def free(self) -> int:
        return self.max_streams - len(self._slots)

    def open(self, levels: LevelsLike = None, sides: Sequence[str] | None = None) -> int:
        """A new slot (its id); `levels` is the decode side's level set (default all); `sides`: "encode" and/or
        "decode" (default: the pool's direction; a slot gets state rows on its own sides only). Raises
        `PoolFullError` when all `max_streams` slots are taken."""
        parsed = Levels.parse(levels, self.config.num_levels)
        available = {"encode", "decode"} if self.direction == "both" else {self.direction}
        chosen = frozenset(available if sides is None else sides)
        if not chosen or not chosen <= available:
            raise PoolError(f"sides must be a non-empty subset of {sorted(available)}, got {sorted(chosen)}")
        with self._lock:
            if len(self._slots) >= self.max_streams:
                raise PoolFullError(
                    f"the stream pool is full ({self.max_streams} of {self.max_streams} streams open); close one "
                    "or make a larger pool"
                )
            slot = self._next_id
            self._next_id += 1
            self._slots[slot] = _Slot(slot, parsed, chosen)
        return slot

    def close(self, slot: int) -> None:
        """End a slot: its input and output are dropped, and its state rows leave at the next step."""
        with self._lock:
            if self._slots.pop(slot, None) is None:
                raise PoolError(f"no open stream slot {slot}")

    def _slot(self, slot: int) -> _Slot:
        found = self._slots.get(slot)
        if found is None:
            raise PoolError(f"no open stream slot {slot}")
        return found

    def set_levels(self, slot: int, levels: LevelsLike) -> None:
        """The decode side's level set for the frames pushed from now on (frames already waiting keep theirs)."""
        parsed = Levels.parse(levels, self.config.num_levels)
        with self._lock:
            self._slot(slot).levels = parsed

    def levels(self, slot: int) -> Levels:
        with self._lock:
            return self._slot(slot).levels

    # -- input ----------------------------------------------------------------------------------------------
    def push_pcm(self, slot: int, pcm: NDArray[Any]) -> None:
        """Append mono float pcm (any length) to a slot's encode side."""
        if self._encoder is None:
            raise PoolError("this pool only decodes: push codes, not pcm")
        array = np.asarray(pcm)
        if array.size and not np.issubdtype(array.dtype, np.floating):
            raise PoolError(f"pcm must be floating point in [-1, 1], got dtype {array.dtype}")
        chunk = np.array(array, dtype=np.float32).reshape(-1)
        if chunk.size and not np.isfinite(chunk).all():
            raise PoolError("pcm chunk holds NaN or infinite samples")
        frame_size = self.config.frame_size
        with self._lock:
            state = self._slot(slot)
            if "encode" not in state.sides:
                raise PoolError(f"stream slot {slot} has no encode side")
            if state.finishing:
                raise PoolError(f"stream slot {slot} was finished; it takes no more pcm")
            if (state.pcm_samples + chunk.size) // frame_size > self.max_pending_frames:
                raise PoolError(
                    f"stream slot {slot} has more than {self.max_pending_frames} frames of pcm waiting (input "
                    "faster than the pool steps)"
                )
            if chunk.size:
                state.pcm.append(chunk)
                state.pcm_samples += chunk.size

    def finish(self, slot: int) -> None:
        """No more pcm for this slot: its last partial frame is padded with zeros and encoded by the next step."""
        with self._lock:
            self._slot(slot).finishing = True

    def push_codes(self, slot: int, codes: NDArray[Any]) -> None:
        """Append frames of codes `[num_levels, n]` (or one frame `[num_levels]`) to a slot's decode side."""
        if self._decoder is None:
            raise PoolError("this pool only encodes: push pcm, not codes")
        array = np.asarray(codes)
        if array.ndim == 1:
            array = array[:, None]
        levels = self.config.num_levels
        if array.ndim != 2 or array.shape[0] != levels:
            raise PoolError(f"codes must be [{levels}, n], got shape {array.shape}")
        if array.size and not np.issubdtype(array.dtype, np.integer):
            raise PoolError(f"codes must be integers, got dtype {array.dtype}")
        if array.size and (array.min() < 0 or array.max() >= self.config.codebook_size):
            raise PoolError(f"codes must lie in 0..{self.config.codebook_size - 1}")
        with self._lock:
            state = self._slot(slot)
            if "decode" not in state.sides:
                raise PoolError(f"stream slot {slot} has no decode side")
            if len(state.codes) + array.shape[1] > self.max_pending_frames:
                raise PoolError(
                    f"stream slot {slot} has more than {self.max_pending_frames} frames of codes waiting (input "
                    "faster than the pool steps)"
                )
            state.codes.extend((state.levels, np.array(array[:, t], dtype=np.int64)) for t in range(array.shape[1]))

    # -- output ---------------------------------------------------------------------------------------------
    def pull_codes(self, slot: int) -> NDArray[np.int64]:
        """The frames a slot's encode side produced since the last pull, `[num_levels, n]`."""
        with self._lock:
            out = self._slot(slot).out_codes
            frames = [out.popleft() for _ in range(len(out))]
        if not frames:
            return np.zeros((self.config.num_levels, 0), dtype=np.int64)
        return np.stack(frames, axis=1)

    def pull_pcm(self, slot: int) -> NDArray[np.float32]:
        """The pcm a slot's decode side produced since the last pull, `[n * frame_size]`."""
        with self._lock:
            out = self._slot(slot).out_pcm
            frames = [out.popleft() for _ in range(len(out))]
        return np.concatenate(frames) if frames else np.zeros(0, dtype=np.float32)

    def pending(self, slot: int) -> tuple[int, int]:
        """(frames of pcm, frames of codes) a slot has waiting."""
        with self._lock:
            state = self._slot(slot)
            return state.pcm_samples // self.config.frame_size, len(state.codes)

    def rows(self) -> tuple[int, int]:
        """State rows held now (encoder, decoder): open slots' rows until the next step drops closed ones."""
        return (
            len(self._encoder.rows) if self._encoder is not None else 0,
            len(self._decoder.rows) if self._decoder is not None else 0,
        )

    def done(self, slot: int) -> bool:
        """Whether a finished slot's last frame was encoded (nothing of its pcm is left)."""
        with self._lock:
            state = self._slot(slot)
            return state.finishing and state.pcm_samples == 0

    # -- stepping -------------------------------------------------------------------------------------------
    def step(self) -> StepResult:
        """Advance every slot with a whole frame waiting by one frame: one engine call per direction (none for a
        direction with nothing waiting). The outputs are returned and also queued for `pull_codes`/`pull_pcm`."""
        with self._step_lock:
            started = time.perf_counter()
            with self._lock:
                encoding = [slot for slot, state in self._slots.items() if "encode" in state.sides]
                decoding = [slot for slot, state in self._slots.items() if "decode" in state.sides]
                pcm_in = self._take_pcm() if self._encoder is not None else {}
                codes_in = self._take_codes() if self._decoder is not None else {}
            codes_out: dict[int, NDArray[np.int64]] = {}
            pcm_out: dict[int, NDArray[np.float32]] = {}
            if self._encoder is not None:
                self._encoder.sync(encoding)
                if pcm_in:
                    codes_out = self._encode(self._encoder, pcm_in)
            if self._decoder is not None:
                self._decoder.sync(decoding)
                if codes_in:
                    pcm_out = self._decode(self._decoder, codes_in)
            with self._lock:
                for slot, frame_codes in codes_out.items():
                    if slot in self._slots:
                        if self.keep_outputs:
                            self._slots[slot].out_codes.append(frame_codes)
                        self._slots[slot].encoded += 1
                for slot, frame_pcm in pcm_out.items():
                    if slot in self._slots:
                        if self.keep_outputs:
                            self._slots[slot].out_pcm.append(frame_pcm)
                        self._slots[slot].decoded += 1
            self.steps += 1
            return StepResult(codes_out, pcm_out, len(pcm_in), len(codes_in), time.perf_counter() - started)

    def drain(self) -> int:
        """Step until no slot has a whole frame waiting; returns the number of steps."""
        count = 0
        while not self.step().idle:
            count += 1
        return count

    def _take_pcm(self) -> dict[int, tuple[Levels, NDArray[np.float32]]]:
        """One frame from every slot with a whole one waiting (or a finishing slot's zero-padded last part)."""
        frame_size = self.config.frame_size
        taken: dict[int, tuple[Levels, NDArray[np.float32]]] = {}
        for slot, state in self._slots.items():
            if state.pcm_samples >= frame_size or (state.finishing and state.pcm_samples > 0):
                buffer = np.concatenate(state.pcm) if len(state.pcm) > 1 else state.pcm[0]
                frame = np.zeros(frame_size, dtype=np.float32)
                size = min(frame_size, buffer.size)
                frame[:size] = buffer[:size]
                rest = buffer[size:]
                state.pcm = [rest] if rest.size else []
                state.pcm_samples = rest.size
                taken[slot] = (state.levels, frame)
        return taken

    def _take_codes(self) -> dict[int, tuple[Levels, NDArray[np.int64]]]:
        return {slot: state.codes.popleft() for slot, state in self._slots.items() if state.codes}

    def _encode(
        self, lane: _Lane, inputs: dict[int, tuple[Levels, NDArray[np.float32]]]
    ) -> dict[int, NDArray[np.int64]]:
        ready = [slot for slot in lane.rows if slot in inputs]
        batch = self.engine.host_buffer((len(ready), 1, self.config.frame_size))
        for row, slot in enumerate(ready):
            batch[row, 0] = inputs[slot][1]
        mode = self.mode

        def compute(state: EngineState) -> tuple[NDArray[np.int64], EngineState]:
            return self.engine.encode(batch, state, mode)

        codes: NDArray[np.int64] = lane.run(ready, compute)
        return {slot: codes[row, :, 0].astype(np.int64) for row, slot in enumerate(ready)}

    def _decode(
        self, lane: _Lane, inputs: dict[int, tuple[Levels, NDArray[np.int64]]]
    ) -> dict[int, NDArray[np.float32]]:
        ready = [slot for slot in lane.rows if slot in inputs]
        codes = np.stack([inputs[slot][1] for slot in ready])[:, :, None]  # [R, K, 1]
        groups: dict[Levels, list[int]] = {}
        for row, slot in enumerate(ready):
            groups.setdefault(inputs[slot][0], []).append(row)
        if len(groups) == 1:
            (levels,) = groups
            latent = self.engine.latent_from_codes(codes, levels)
        else:
            latent = np.empty((len(ready), self.config.dimension, 1), dtype=np.float32)
            for levels, rows in groups.items():
                latent[rows] = self.engine.latent_from_codes(codes[rows], levels)
        mode = self.mode

        def compute(state: EngineState) -> tuple[NDArray[np.float32], EngineState]:
            return self.engine.decode_latent(latent, state, mode)

        pcm: NDArray[np.float32] = lane.run(ready, compute)
        return {slot: np.array(pcm[row, 0], dtype=np.float32) for row, slot in enumerate(ready)}
