"""`Codec`: the public API for encoding audio to token grids and decoding any subset of levels back.

Sits on `engine/` (the backends), `tokens`, `levels`, `weights` and `audio`; used by `ops`, `analysis`, `stream`,
the CLI, the server and `corpus`.

    codec = Codec.load("kyutai/mimi")               # or a local .safetensors, or "random" for tests
    grid = codec.encode(pcm)                         # float32 [N] at 24 kHz -> TokenGrid, all 32 levels
    pcm = codec.decode(grid, levels="0-7")           # any subset; output as long as the input

Batch calls are processed in chunks of `chunk_frames` frames with the model state carried across chunks, so
memory stays flat in input length; the result is the same function as one pass over the whole input.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypeVar, overload

import numpy as np
from numpy.typing import NDArray

from ._files import cache_dir
from .audio import resample, validate_pcm
from .config import MimiConfig
from .engine.base import CacheMode, Engine
from .engine.options import EngineName, EngineOptions, OnnxOptions, TorchOptions, resolve_options
from .errors import MimistackError
from .levels import Levels, LevelsLike
from .pool import PoolDirection, StreamPool
from .tokens import TokenGrid, TokenGridError
from .weights import WeightsRef

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

PcmLike: TypeAlias = "NDArray[np.floating[Any]] | torch.Tensor"
"""Mono float pcm `[N]`: a numpy array or a torch tensor (any device; tensors come back as tensors)."""
CodesLike: TypeAlias = "NDArray[np.integer[Any]] | torch.Tensor"
"""Integer codes `[num_levels, T]`: a numpy array or a torch tensor."""
_Array = TypeVar("_Array", NDArray[Any], "torch.Tensor")

DEFAULT_WEIGHTS = "kyutai/mimi"
RANDOM_WEIGHTS = ("random", "random-tiny")
DEFAULT_CHUNK_FRAMES = 125  # 10 s: as fast as one pass, and memory stays flat in input length


class CodecError(MimistackError, ValueError):
    """A request the codec cannot serve (bad input, levels that are not there, closed stream)."""


class AudioTooLongError(CodecError):
    """An input longer than the caller's limit (`Codec.encode_file(max_seconds=...)`)."""


def random_weights_path(name: str = "random", seed: int = 0) -> Path:
    """A cached random checkpoint of the official ("random") or tiny ("random-tiny") architecture."""
    from .testing import write_random_checkpoint

    config: Literal["official", "tiny"] = "tiny" if name == "random-tiny" else "official"
    path = cache_dir() / f"random-{config}-seed{seed}.safetensors"
    if not path.exists():
        logger.warning("writing a random %s checkpoint to %s (audio decoded with it is meaningless)", config, path)
        write_random_checkpoint(path, config, seed=seed)
    return path


class Codec:
    """Mimi encode/decode on one engine. Create with `Codec.load(...)`."""

    def __init__(
        self,
        engine: Engine,
        *,
        chunk_frames: int = DEFAULT_CHUNK_FRAMES,
        source: str = "",
        weights: WeightsRef | None = None,
    ) -> None:
        if chunk_frames <= 0:
            raise CodecError(f"chunk_frames must be positive, got {chunk_frames}")
        self.engine = engine
        self.chunk_frames = chunk_frames
        self.source = source
        self.weights = weights
        """The checkpoint this codec was loaded from (None for an engine made by hand or an export folder alone)."""

    @classmethod
    def load(
        cls,
        weights: str | os.PathLike[str] | WeightsRef = DEFAULT_WEIGHTS,
        engine: EngineName | EngineOptions = "auto",
        *,
        revision: str | None = None,
        chunk_frames: int = DEFAULT_CHUNK_FRAMES,
    ) -> Codec:
        """Load weights (a local .safetensors file or folder, a hub id, or "random"/"random-tiny") on an engine.

        `engine`: "auto" (torch when it is installed, else ONNX Runtime), "torch", "onnx", or an options object,
        `TorchOptions(device=..., dtype=..., fast=...)` or `OnnxOptions(onnx_dir=..., variant=...)`, which holds the
        settings that only that engine understands. `revision`: the hub revision (branch, tag or commit). A
        `WeightsRef` that the caller resolved already is used as it is (not hashed again).
        """
        options = resolve_options(engine)
        source = weights.source if isinstance(weights, WeightsRef) else os.fspath(weights)
        if isinstance(options, OnnxOptions) and options.onnx_dir is not None and source == DEFAULT_WEIGHTS:
            from .engine.onnx_cache import load_onnx_engine  # the export folder alone: its manifest names the weights

            backend: Engine = load_onnx_engine(
                onnx_dir=options.onnx_dir,
                device=options.device,
                num_threads=options.num_threads,
                variant=options.variant,
            )
            return cls(backend, chunk_frames=chunk_frames, source=source)
        # The weights first: a missing file or an unreachable hub fails before any engine (torch) is imported.
        if isinstance(weights, WeightsRef):
            ref = weights
        else:
            ref = WeightsRef.resolve(random_weights_path(source) if source in RANDOM_WEIGHTS else weights, revision)
        if isinstance(options, TorchOptions):
            from .engine.torch import TorchEngine
            from .weights import load_weights

            backend = TorchEngine(
                load_weights(ref),
                device=options.device,
                dtype=options.dtype,
                num_threads=options.num_threads,
                fast=options.fast,
                compile=options.compile,
                allow_tf32=options.allow_tf32,
            )
        else:
            from .engine.onnx_cache import load_onnx_engine

            backend = load_onnx_engine(
                weights=ref,
                onnx_dir=options.onnx_dir,
                device=options.device,
                num_threads=options.num_threads,
                variant=options.variant,
            )
        return cls(backend, chunk_frames=chunk_frames, source=source, weights=ref)

    # -- description ----------------------------------------------------------------------------------------
    @property
    def config(self) -> MimiConfig:
        return self.engine.config

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.config.frame_rate

    @property
    def frame_size(self) -> int:
        return self.config.frame_size

    @property
    def num_levels(self) -> int:
        return self.config.num_levels

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    @property
    def weights_sha256(self) -> str:
        return self.engine.weights_sha256

    def __repr__(self) -> str:
        return (
            f"Codec(engine={self.engine.name!r}, source={self.source!r}, "
            f"weights_sha256={self.weights_sha256[:12]}…, levels={self.num_levels})"
        )

    # -- encode ---------------------------------------------------------------------------------------------
    def encode(self, pcm: PcmLike, sample_rate: int | None = None) -> TokenGrid:
        """Mono pcm `[N]` (numpy or torch, floating point in [-1, 1]) -> a TokenGrid with all levels,
        `ceil(N' / 1920)` frames, where N' is the length at 24 kHz.

        `sample_rate`: the rate of `pcm` (default: the codec's, 24 kHz); other rates are resampled with soxr."""
        return self.encode_batch([pcm], sample_rate)[0]

    def encode_batch(self, pcms: Sequence[PcmLike], sample_rate: int | None = None) -> list[TokenGrid]:
        """Several utterances in one batch (padded to the longest; each grid trimmed to its own length)."""
        signals = [self._pcm(p, sample_rate) for p in pcms]
        if not signals:
            return []
        lengths = [len(s) for s in signals]
        frames = [self.config.num_frames(n) for n in lengths]
        shape = (len(signals), 1, max(frames) * self.frame_size)
        # An engine may lend a buffer it can send to its device without another copy (page-locked memory on CUDA).
        batch = self.engine.host_buffer(shape)
        for row, signal in enumerate(signals):
            batch[row, 0, : len(signal)] = signal
            batch[row, 0, len(signal) :] = 0.0
        codes = self._encode_frames(batch)
        return [self._grid(codes[row, :, : frames[row]], lengths[row]) for row in range(len(signals))]

    def encode_file(
        self,
        path: str | os.PathLike[str],
        *,
        progress: Callable[[float], object] | None = None,
        max_seconds: float | None = None,
    ) -> TokenGrid:
        """Encode an audio file of any format, rate and length with bounded memory.

        The file is decoded and encoded in chunks of `chunk_frames` frames with the model state carried across
        them, so the codes are those of `encode(load_audio(path))`. `progress` is called with the seconds of audio
        done after each chunk; past `max_seconds` of audio, `AudioTooLongError` stops the work. Used by the CLI and
        the server alike."""
        from .audio import iter_audio

        chunk_seconds = self.chunk_frames * self.frame_size / self.sample_rate
        stream = self.stream_encoder()
        for chunk in iter_audio(path, sample_rate=self.sample_rate, chunk_seconds=chunk_seconds):
            stream.push(chunk)
            if max_seconds is not None and stream.samples_received > max_seconds * self.sample_rate:
                raise AudioTooLongError(f"{os.fspath(path)} is longer than {max_seconds:g} s")
            if progress is not None:
                progress(len(chunk) / self.sample_rate)
        stream.flush()
        if stream.samples_received == 0:
            raise CodecError(f"{os.fspath(path)} holds no audio")
        return stream.grid()

    def _pcm(self, pcm: PcmLike, sample_rate: int | None) -> NDArray[np.float32]:
        array, _ = _as_numpy(pcm)
        signal = validate_pcm(array)
        if sample_rate is not None and sample_rate != self.sample_rate:
            if not isinstance(sample_rate, int) or sample_rate <= 0:
                raise CodecError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
            signal = resample(signal, sample_rate, self.sample_rate)
        return signal

    def _encode_frames(self, batch: np.ndarray) -> np.ndarray:
        total = batch.shape[-1] // self.frame_size
        if 0 < total <= self.engine.whole_max_frames:
            return self.engine.encode_whole(batch)
        state = self.engine.init_encoder_state(batch.shape[0], "window")
        parts = []
        for start in range(0, total, self.chunk_frames):
            stop = min(total, start + self.chunk_frames)
            part, state = self.engine.encode(
                batch[..., start * self.frame_size : stop * self.frame_size], state, "window"
            )
            parts.append(part)
        if not parts:
            return np.zeros((batch.shape[0], self.num_levels, 0), dtype=np.int64)
        return np.concatenate(parts, axis=-1)

    def _grid(self, codes: np.ndarray, num_samples: int) -> TokenGrid:
        return TokenGrid(
            codes=codes.astype(np.uint16),
            num_samples=num_samples,
            sample_rate=self.sample_rate,
            frame_rate=self.frame_rate,
            codebook_size=self.codebook_size,
            weights_sha256=self.weights_sha256,
        )

    # -- decode ---------------------------------------------------------------------------------------------
    def decode(self, grid: TokenGrid, levels: LevelsLike = None) -> np.ndarray:
        """Decode the chosen levels (default: all the grid holds) -> float32 pcm `[grid.num_samples]`.

        A level left out contributes nothing to the latent sum (it is not the same as setting its codes to 0).
        Non-prefix subsets are valid arithmetic but outside what the decoder was trained on: experimental.
        """
        return self.decode_batch([grid], levels)[0]

    def decode_batch(self, grids: Sequence[TokenGrid], levels: LevelsLike = None) -> list[np.ndarray]:
        if not grids:
            return []
        selections = [self._levels_for(grid, levels) for grid in grids]
        if len(set(selections)) != 1:
            raise CodecError("grids in one decode_batch call must share the selected levels")
        selected = selections[0]
        frames = [g.num_frames for g in grids]
        codes = np.zeros((len(grids), self.num_levels, max(frames)), dtype=np.int64)
        for row, grid in enumerate(grids):
            codes[row, :, : grid.num_frames] = grid.codes
        pcm = self._decode_frames(codes, selected)
        return [pcm[row, 0, : grid.num_samples].copy() for row, grid in enumerate(grids)]

    @overload
    def decode_codes(
        self, codes: NDArray[np.integer[Any]], levels: LevelsLike = None, num_samples: int | None = None
    ) -> NDArray[np.float32]: ...
    @overload
    def decode_codes(
        self, codes: torch.Tensor, levels: LevelsLike = None, num_samples: int | None = None
    ) -> torch.Tensor: ...
    def decode_codes(
        self, codes: CodesLike, levels: LevelsLike = None, num_samples: int | None = None
    ) -> NDArray[np.float32] | torch.Tensor:
        """Decode raw codes `[num_levels, T]` -> pcm `[num_samples or T*1920]` (a tensor for a tensor)."""
        array, device = _as_numpy(codes)
        if array.ndim != 2 or array.shape[0] != self.num_levels:
            raise CodecError(f"codes must be [{self.num_levels}, T], got shape {array.shape}")
        _check_tokens(array, self.codebook_size)
        selected = Levels.parse(levels, self.num_levels)
        pcm = self._decode_frames(array[None].astype(np.int64), selected)[0, 0]
        return _like(pcm if num_samples is None else pcm[:num_samples], device)

    def _levels_for(self, grid: TokenGrid, levels: LevelsLike) -> Levels:
        if grid.num_levels != self.num_levels:
            raise CodecError(f"grid has {grid.num_levels} levels, this model has {self.num_levels}")
        if grid.codebook_size != self.codebook_size:
            raise CodecError(
                f"grid tokens come from a codebook of {grid.codebook_size}, this model's has {self.codebook_size}"
            )
        if grid.weights_sha256 and grid.weights_sha256 != self.weights_sha256:
            logger.warning(
                "grid was encoded with weights %s…, decoding with %s…",
                grid.weights_sha256[:12],
                self.weights_sha256[:12],
            )
        try:
            return grid.check_levels(grid.present if levels is None else levels)
        except TokenGridError as error:
            raise CodecError(str(error)) from error

    def _decode_frames(self, codes: np.ndarray, levels: Levels) -> np.ndarray:
        total = codes.shape[-1]
        if 0 < total <= self.engine.whole_max_frames:
            return self.engine.decode_whole(codes, levels)
        state = self.engine.init_decoder_state(codes.shape[0], "window")
        parts = []
        for start in range(0, total, self.chunk_frames):
            part, state = self.engine.decode(
                codes[..., start : min(total, start + self.chunk_frames)], levels, state, "window"
            )
            parts.append(part)
        if not parts:
            return np.zeros((codes.shape[0], 1, 0), dtype=np.float32)
        return np.concatenate(parts, axis=-1)

    @overload
    def roundtrip(
        self, pcm: NDArray[np.floating[Any]], levels: LevelsLike = None, sample_rate: int | None = None
    ) -> NDArray[np.float32]: ...
    @overload
    def roundtrip(
        self, pcm: torch.Tensor, levels: LevelsLike = None, sample_rate: int | None = None
    ) -> torch.Tensor: ...
    def roundtrip(
        self, pcm: PcmLike, levels: LevelsLike = None, sample_rate: int | None = None
    ) -> NDArray[np.float32] | torch.Tensor:
        """Encode then decode `levels`: pcm at 24 kHz, as long as the input at 24 kHz (a tensor for a tensor)."""
        return _like(self.decode(self.encode(pcm, sample_rate), levels), _as_numpy(pcm)[1])

    # -- streaming ------------------------------------------------------------------------------------------
    def stream_encoder(self, mode: CacheMode = "window") -> StreamEncoder:
        """A causal encoder that takes pcm chunks of any size and emits each 80 ms frame once it is complete."""
        return StreamEncoder(self, mode)

    def stream_pool(
        self,
        max_streams: int,
        direction: PoolDirection = "both",
        mode: CacheMode = "window",
        *,
        max_pending_frames: int = 250,
        keep_outputs: bool = True,
    ) -> StreamPool:
        """Up to `max_streams` streams advanced together, one batched engine call per 80 ms step
        (`mimistack.pool.StreamPool`): `direction` "encode", "decode" (each slot at its own level set) or "both"."""
        return StreamPool(
            self.engine, max_streams, direction, mode, max_pending_frames=max_pending_frames, keep_outputs=keep_outputs
        )

    def stream_decoder(self, levels: LevelsLike = None, mode: CacheMode = "window") -> StreamDecoder:
        """A causal decoder: frames of codes in, 1920 samples per frame out; the level set may change per call."""
        return StreamDecoder(self, Levels.parse(levels, self.num_levels), mode)


def _as_numpy(value: Any) -> tuple[NDArray[Any], Any]:
    """A numpy view of `value`, and the device of a torch tensor (None for anything else). torch is never imported
    here: a tensor can only exist if the caller imported it."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        tensor = value.detach().to("cpu")
        if tensor.dtype in (torch.bfloat16, torch.float16):
            tensor = tensor.float()
        return tensor.numpy(), value.device
    return np.asarray(value), None


def _like(array: NDArray[Any], device: Any) -> NDArray[Any] | torch.Tensor:
    """`array` as the kind the caller gave: numpy as it is, or a torch tensor on `device`."""
    if device is None:
        return array
    import torch

    if array.dtype == np.uint16:  # torch has no arithmetic on uint16: tokens travel as int64 tensors
        array = array.astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(array)).to(device)


def _check_tokens(codes: NDArray[Any], codebook_size: int) -> None:
    if not np.issubdtype(codes.dtype, np.integer):
        raise CodecError(f"codes must be integers, got dtype {codes.dtype}")
    if codes.size and (codes.min() < 0 or codes.max() >= codebook_size):
        raise CodecError(f"tokens must lie in 0-{codebook_size - 1}")


def _chunks(done: int, count: int, step: int) -> list[tuple[int, int]]:
    """Split `count` new frames into runs that end on absolute multiples of `step` (frames since the stream
    started), so a stream fed in aligned pieces is cut exactly where batch processing cuts it."""
    runs = []
    start = 0
    while start < count:
        stop = min(count, start + step - (done + start) % step)
        runs.append((start, stop))
        start = stop
    return runs


class StreamEncoder:
    """Streaming encode with explicit state. `push(pcm)` -> codes uint16 `[num_levels, n]` for the frames completed
    by this chunk (n may be 0); `flush()` pads the last partial frame with zeros and emits it.

    `mode="window"` (default) computes the same function as batch `encode` (every step attends to exactly the
    window batch mode gives it); only float rounding differs with the chunking, which can flip a near-tied token
    (and the levels after it in that frame) now and then. `mode="moshi"` reproduces moshi's streaming bit for bit
    (frames are then processed one at a time, as moshi does).
    """

    def __init__(self, codec: Codec, mode: CacheMode = "window") -> None:
        self.codec = codec
        self.mode: CacheMode = mode
        self._state = codec.engine.init_encoder_state(1, mode)
        self._buffer = np.zeros(0, dtype=np.float32)
        self._codes: list[np.ndarray] = []
        self.samples_received = 0
        self.closed = False

    @property
    def frames_emitted(self) -> int:
        return sum(c.shape[1] for c in self._codes)

    @overload
    def push(self, pcm: NDArray[np.floating[Any]]) -> NDArray[np.uint16]: ...
    @overload
    def push(self, pcm: torch.Tensor) -> torch.Tensor: ...
    def push(self, pcm: PcmLike) -> NDArray[np.uint16] | torch.Tensor:
        """Take a chunk of any length; return the codes `[num_levels, n]` of the frames it completed (a tensor for
        a tensor)."""
        array, device = _as_numpy(pcm)
        return _like(self._push(array), device)

    def _push(self, pcm: NDArray[Any]) -> NDArray[np.uint16]:
        if self.closed:
            raise CodecError("this stream encoder was flushed; start a new one")
        if pcm.size and not np.issubdtype(pcm.dtype, np.floating):
            raise CodecError(f"pcm must be floating point in [-1, 1], got dtype {pcm.dtype}")
        chunk = np.asarray(pcm, dtype=np.float32).reshape(-1)
        if chunk.size and not np.isfinite(chunk).all():
            raise CodecError("pcm chunk holds NaN or infinite samples")
        self.samples_received += chunk.size
        self._buffer = np.concatenate([self._buffer, chunk]) if self._buffer.size else chunk.copy()
        frame_size = self.codec.frame_size
        ready = self._buffer.size // frame_size
        if ready == 0:
            return np.zeros((self.codec.num_levels, 0), dtype=np.uint16)
        frames, self._buffer = self._buffer[: ready * frame_size], self._buffer[ready * frame_size :]
        return self._encode(frames)

    def flush(self) -> np.ndarray:
        """Emit the last, zero-padded partial frame (if any) and close the stream."""
        if self.closed:
            return np.zeros((self.codec.num_levels, 0), dtype=np.uint16)
        self.closed = True
        if self._buffer.size == 0:
            return np.zeros((self.codec.num_levels, 0), dtype=np.uint16)
        frame = np.zeros(self.codec.frame_size, dtype=np.float32)
        frame[: self._buffer.size] = self._buffer
        self._buffer = np.zeros(0, dtype=np.float32)
        return self._encode(frame)

    def _encode(self, samples: np.ndarray) -> np.ndarray:
        frame_size = self.codec.frame_size
        total = samples.size // frame_size
        out = []
        for start, stop in _chunks(self.frames_emitted, total, 1 if self.mode == "moshi" else self.codec.chunk_frames):
            pcm = samples[start * frame_size : stop * frame_size].reshape(1, 1, -1)
            codes, self._state = self.codec.engine.encode(pcm, self._state, self.mode)
            out.append(codes[0])
        codes = np.concatenate(out, axis=-1).astype(np.uint16)
        self._codes.append(codes)
        return codes

    def grid(self) -> TokenGrid:
        """Every frame emitted so far as a TokenGrid (after `flush()`, the whole input)."""
        codes = (
            np.concatenate(self._codes, axis=-1)
            if self._codes
            else np.zeros((self.codec.num_levels, 0), dtype=np.uint16)
        )
        num_samples = self.samples_received if self.closed else codes.shape[1] * self.codec.frame_size
        return self.codec._grid(codes, num_samples)


class StreamDecoder:
    """Streaming decode with explicit state: `push(codes [num_levels, n])` -> pcm float32 `[n * 1920]`.

    `levels` may be changed between calls (`push(codes, levels=...)`), as a progressive receiver does when more
    or fewer levels arrive.
    """

    def __init__(self, codec: Codec, levels: Levels, mode: CacheMode = "window") -> None:
        self.codec = codec
        self.levels = levels
        self.mode: CacheMode = mode
        self._state = codec.engine.init_decoder_state(1, mode)
        self.frames_received = 0

    @overload
    def push(self, codes: NDArray[np.integer[Any]], levels: LevelsLike = None) -> NDArray[np.float32]: ...
    @overload
    def push(self, codes: torch.Tensor, levels: LevelsLike = None) -> torch.Tensor: ...
    def push(self, codes: CodesLike, levels: LevelsLike = None) -> NDArray[np.float32] | torch.Tensor:
        """Decode frames `[num_levels, n]` (or one frame `[num_levels]`) -> pcm `[n * 1920]` (a tensor for a
        tensor); `levels` replaces the level set from this call on."""
        array, device = _as_numpy(codes)
        return _like(self._push(array, levels), device)

    def _push(self, array: NDArray[Any], levels: LevelsLike) -> NDArray[np.float32]:
        if array.ndim == 1:
            array = array[:, None]
        if array.ndim != 2 or array.shape[0] != self.codec.num_levels:
            raise CodecError(f"codes must be [{self.codec.num_levels}, n], got shape {array.shape}")
        _check_tokens(array, self.codec.codebook_size)
        if levels is not None:
            self.levels = Levels.parse(levels, self.codec.num_levels)
        if array.shape[1] == 0:
            return np.zeros(0, dtype=np.float32)
        out = []
        step = 1 if self.mode == "moshi" else self.codec.chunk_frames
        for start, stop in _chunks(self.frames_received, array.shape[1], step):
            part = array[None, :, start:stop].astype(np.int64)
            pcm, self._state = self.codec.engine.decode(part, self.levels, self._state, self.mode)
            out.append(pcm[0, 0])
        self.frames_received += array.shape[1]
        return np.concatenate(out)
