"""Audio in and out: any file to 24 kHz mono float32 `pcm [N]`, streamed or whole; WAV/FLAC out, atomically.

Sits on `config` (the 24 kHz rate); feeds the engines (`engine/`: `Codec.encode(pcm)`), `metrics`, `corpus`, the CLI
and the server, which all take `pcm` from here and hand decoded `pcm` back to `save_audio`.

Decoding: WAV/FLAC/OGG (and the other libsndfile formats) through soundfile, MP3/Opus/M4A and anything else
through PyAV (FFmpeg); each falls back to the other. Channels are averaged to mono, then resampled with soxr.
`iter_audio` streams fixed-size chunks with bounded memory; `load_audio` is the concatenation of those chunks.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np
import soundfile
import soxr
from numpy.typing import ArrayLike, NDArray

from ._files import commit, discard, open_temporary, refuse_overwrite
from .config import SAMPLE_RATE
from .errors import MimistackError

__all__ = [
    "AudioError",
    "AudioInfo",
    "AudioWriter",
    "audio_info",
    "iter_audio",
    "load_audio",
    "resample",
    "save_audio",
    "validate_pcm",
]

logger = logging.getLogger(__name__)

SOUNDFILE_SUFFIXES = frozenset(
    {".wav", ".wave", ".flac", ".ogg", ".oga", ".aiff", ".aif", ".aifc", ".au", ".snd", ".w64", ".rf64", ".caf"}
)
"""Suffixes tried with soundfile (libsndfile) first; everything else goes to PyAV first."""
AUDIO_SUFFIXES = SOUNDFILE_SUFFIXES | frozenset({".mp3", ".opus", ".m4a", ".aac", ".webm", ".mka", ".mp4", ".wma"})
"""The one list of suffixes that commands taking folders (`stats`, `quality`, `tokenize-corpus`) treat as audio."""
OUTPUT_FORMATS = {".wav": "WAV", ".flac": "FLAC"}
RESAMPLE_QUALITY = "VHQ"
_DECODE_BLOCK = 1 << 16  # source samples per decoding step: bounds memory, amortises per-call costs


class AudioError(MimistackError, ValueError):
    """Audio that cannot be read, written or used: missing, undecodable, empty, non-finite or of the wrong shape."""


@dataclasses.dataclass(frozen=True)
class AudioInfo:
    """What a file holds, before any resampling or mixing."""

    path: Path
    sample_rate: int
    channels: int
    num_frames: int | None
    """Audio frames (samples per channel) when the container states them exactly (not for PyAV-decoded files)."""
    duration: float | None
    """Seconds, when known."""
    format: str
    """Container and encoding, e.g. 'WAV (PCM_16)' or 'mp3 (mp3float)'."""
    decoder: str
    """'soundfile' or 'pyav'."""


# -- validation -------------------------------------------------------------------------------------------------
def validate_pcm(pcm: ArrayLike) -> NDArray[np.float32]:
    """Check mono audio and return it as contiguous float32 `[N]`.

    Accepts floating-point `[N]` (or `[1, N]`, `[1, 1, N]`: leading singleton axes are dropped, as engines return
    `[B, 1, N]` with B = 1). Raises `AudioError` for integer or non-numeric data, several channels, no samples,
    NaN or infinity.
    """
    array = np.asarray(pcm)
    if not np.issubdtype(array.dtype, np.floating):
        raise AudioError(
            f"pcm must be floating point in [-1, 1], got dtype {array.dtype} (for int16 PCM divide by 32768)"
        )
    shape = array.shape
    while array.ndim > 1 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 1:
        raise AudioError(f"pcm must be mono [N] (or [1, N]), got shape {shape}")
    if array.size == 0:
        raise AudioError("pcm has no samples")
    array = np.ascontiguousarray(array, dtype=np.float32)
    _check_finite(array, "pcm")
    return array


def resample(pcm: np.ndarray, from_rate: int, to_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Resample mono float32 `pcm [N]` from `from_rate` to `to_rate` Hz with soxr (very high quality); the
    same resampler `load_audio` uses for files."""
    if from_rate <= 0 or to_rate <= 0:
        raise AudioError(f"sample rates must be positive, got {from_rate} -> {to_rate}")
    samples = validate_pcm(pcm)
    if from_rate == to_rate:
        return samples
    out = soxr.resample(samples, from_rate, to_rate, quality=RESAMPLE_QUALITY)
    return np.ascontiguousarray(out, dtype=np.float32)


def _check_finite(samples: np.ndarray, what: str, offset: int = 0, sample_rate: int | None = None) -> None:
    finite = np.isfinite(samples)
    if not finite.all():
        bad = np.flatnonzero(~finite.reshape(samples.shape[0], -1).all(axis=1))
        first = offset + int(bad[0])
        where = f" ({first / sample_rate:.3f} s)" if sample_rate else ""
        raise AudioError(f"{what}: {bad.size} sample(s) are NaN or infinite, the first at sample {first}{where}")


# -- decoders ---------------------------------------------------------------------------------------------------
class _DecodeFailure(Exception):
    """One decoder could not open or read the file (the other may still)."""


class _Source(Protocol):
    decoder: str

    def blocks(self) -> Iterator[tuple[np.ndarray, int]]:
        """Yield (float32 `[n, channels]`, sample rate) blocks in order."""
        ...

    def info(self, path: Path) -> AudioInfo: ...

    def close(self) -> None: ...


class _SoundfileSource:
    decoder = "soundfile"

    def __init__(self, path: Path) -> None:
        try:
            self.file = soundfile.SoundFile(str(path))
        except (soundfile.LibsndfileError, RuntimeError, TypeError) as exc:
            raise _DecodeFailure(str(exc)) from None

    def blocks(self) -> Iterator[tuple[np.ndarray, int]]:
        while True:
            try:
                data = self.file.read(_DECODE_BLOCK, dtype="float32", always_2d=True)
            except (soundfile.LibsndfileError, RuntimeError) as exc:
                raise _DecodeFailure(str(exc)) from None
            if not len(data):
                return
            yield data, int(self.file.samplerate)

    def info(self, path: Path) -> AudioInfo:
        frames = int(self.file.frames)
        rate = int(self.file.samplerate)
        return AudioInfo(
            path,
            rate,
            int(self.file.channels),
            frames,
            frames / rate,
            f"{self.file.format} ({self.file.subtype})",
            self.decoder,
        )

    def close(self) -> None:
        self.file.close()


class _PyAVSource:
    decoder = "pyav"

    def __init__(self, path: Path) -> None:
        import av

        self._av = av
        try:
            self.container = av.open(str(path), mode="r")
        except (av.error.FFmpegError, OSError) as exc:
            raise _DecodeFailure(str(exc)) from None
        if not self.container.streams.audio:
            self.container.close()
            raise _DecodeFailure(f"no audio stream (format {self.container.format.name})")
        self.stream = self.container.streams.audio[0]
        context = self.stream.codec_context
        if context.sample_rate <= 0 or context.layout.nb_channels <= 0:
            self.container.close()
            raise _DecodeFailure(
                f"no decodable audio stream (format {self.container.format.name}, "
                f"{context.sample_rate} Hz, {context.layout.nb_channels} channels)"
            )

    def blocks(self) -> Iterator[tuple[np.ndarray, int]]:
        resampler = self._av.AudioResampler(format="fltp")  # planar float32, same layout and rate
        pending: list[np.ndarray] = []
        pending_rate = 0
        count = 0
        try:
            for frame in self._frames():
                for converted in resampler.resample(frame):
                    block = converted.to_ndarray().T  # [n, channels]
                    if pending and (converted.sample_rate != pending_rate or block.shape[1] != pending[0].shape[1]):
                        yield np.concatenate(pending), pending_rate
                        pending, count = [], 0
                    pending.append(block)
                    pending_rate = converted.sample_rate
                    count += block.shape[0]
                    if count >= _DECODE_BLOCK:
                        yield np.concatenate(pending), pending_rate
                        pending, count = [], 0
        except (self._av.error.FFmpegError, OSError) as exc:
            raise _DecodeFailure(str(exc)) from None
        if pending:
            yield np.concatenate(pending), pending_rate

    def _frames(self) -> Iterator[Any]:
        yield from self.container.decode(self.stream)
        yield None  # flushes the resampler

    def info(self, path: Path) -> AudioInfo:
        context = self.stream.codec_context
        duration = None
        if self.stream.duration is not None and self.stream.time_base is not None:
            duration = float(self.stream.duration * self.stream.time_base)
        elif self.container.duration is not None:
            duration = self.container.duration / self._av.time_base
        return AudioInfo(
            path,
            int(context.sample_rate),
            int(context.layout.nb_channels),
            None,
            duration,
            f"{self.container.format.name} ({context.name})",
            self.decoder,
        )

    def close(self) -> None:
        self.container.close()


def _open(path: Path) -> tuple[_Source, list[str]]:
    """Open `path` with the decoder its suffix suggests, falling back to the other one; also returns what the
    decoders tried before said."""
    _check_input(path)
    order: list[type[_SoundfileSource] | type[_PyAVSource]] = [_SoundfileSource, _PyAVSource]
    if path.suffix.lower() not in SOUNDFILE_SUFFIXES:
        order.reverse()
    failures: list[str] = []
    for kind in order:
        try:
            return kind(path), failures
        except _DecodeFailure as exc:
            failures.append(f"{kind.decoder}: {exc}")
    raise AudioError(f"{path}: not a readable audio file ({'; '.join(failures)})")


def _check_input(path: Path) -> None:
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if not path.is_file():
        raise AudioError(f"{path}: not a file")


# -- reading ----------------------------------------------------------------------------------------------------
def audio_info(path: str | os.PathLike[str]) -> AudioInfo:
    """Sample rate, channels, length and format of an audio file, without decoding it."""
    target = Path(path)
    source, _ = _open(target)
    try:
        return source.info(target)
    finally:
        source.close()


def iter_audio(
    path: str | os.PathLike[str], *, chunk_seconds: float = 30.0, sample_rate: int = SAMPLE_RATE
) -> Iterator[np.ndarray]:
    """Stream a file as float32 mono `[n]` chunks at `sample_rate`, in bounded memory.

    Every chunk holds `round(chunk_seconds * sample_rate)` samples except the last (shorter). Their concatenation
    is exactly `load_audio(path, sample_rate=sample_rate)`. Raises `AudioError` for a missing file at once, and
    for undecodable, empty or non-finite audio while iterating.
    """
    if not chunk_seconds > 0:
        raise AudioError(f"chunk_seconds must be positive, got {chunk_seconds}")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise AudioError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    target = Path(path)
    _check_input(target)
    chunk_samples = max(1, round(chunk_seconds * sample_rate))
    return _stream(target, int(sample_rate), chunk_samples)


def _stream(path: Path, sample_rate: int, chunk_samples: int) -> Iterator[np.ndarray]:
    source, failures = _open(path)
    try:
        chunks = _Rechunker(chunk_samples)
        resampler: soxr.ResampleStream | None = None
        source_rate = 0
        consumed = 0
        produced = 0
        for block, rate in _decoded(source, path):
            if source_rate and rate != source_rate:
                raise AudioError(f"{path}: sample rate changes mid-stream ({source_rate} -> {rate} Hz)")
            if not source_rate:
                source_rate = rate
                if rate != sample_rate:
                    resampler = soxr.ResampleStream(rate, sample_rate, 1, dtype="float32", quality=RESAMPLE_QUALITY)
            _check_finite(block, str(path), consumed, rate)
            consumed += block.shape[0]
            mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
            out = resampler.resample_chunk(mono, last=False) if resampler else mono
            produced += out.shape[0]
            yield from chunks.push(out)
        if resampler is not None:
            tail = resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
            produced += tail.shape[0]
            yield from chunks.push(tail)
        if consumed == 0 and failures:  # the fallback decoder accepted something the right one refused
            raise AudioError(
                f"{path}: not a readable audio file ({'; '.join(failures)}; "
                f"{source.decoder}: opened it but decoded no samples)"
            )
        if consumed == 0:
            raise AudioError(f"{path}: the file holds no audio samples")
        if produced == 0:
            raise AudioError(f"{path}: {consumed} samples at {source_rate} Hz are too short to resample")
        yield from chunks.flush()
    finally:
        source.close()


def _decoded(source: _Source, path: Path) -> Iterator[tuple[np.ndarray, int]]:
    try:
        yield from source.blocks()
    except _DecodeFailure as exc:
        raise AudioError(f"{path}: decoding failed ({source.decoder}: {exc})") from None


class _Rechunker:
    """Regroups arrays into chunks of exactly `size` samples (the last one shorter)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.parts: list[np.ndarray] = []
        self.count = 0

    def push(self, samples: np.ndarray) -> Iterator[np.ndarray]:
        if samples.shape[0]:
            self.parts.append(np.asarray(samples, dtype=np.float32))
            self.count += samples.shape[0]
        if self.count < self.size:
            return
        joined = np.concatenate(self.parts)
        whole = (self.count // self.size) * self.size
        for start in range(0, whole, self.size):
            yield joined[start : start + self.size].copy()
        rest = joined[whole:]
        self.parts = [rest.copy()] if rest.shape[0] else []
        self.count = rest.shape[0]

    def flush(self) -> Iterator[np.ndarray]:
        if self.count:
            yield np.concatenate(self.parts)
        self.parts, self.count = [], 0


def load_audio(path: str | os.PathLike[str], *, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode a whole file to float32 mono `[N]` at `sample_rate` (any format, rate and channel count).

    Raises `AudioError` for a missing file, an unreadable or non-audio file (naming what each decoder said), a file
    with no samples, or NaN/infinite samples.
    """
    return np.concatenate(list(iter_audio(path, sample_rate=sample_rate)))


# -- writing ----------------------------------------------------------------------------------------------------
def _output_format(path: Path, subtype: str | None) -> tuple[str, str]:
    container = OUTPUT_FORMATS.get(path.suffix.lower())
    if container is None:
        raise AudioError(f"{path}: cannot write {path.suffix or 'suffix-less'} files; use .wav or .flac")
    subtype = subtype or "PCM_16"
    if not soundfile.check_format(container, subtype):
        raise AudioError(
            f"{path}: {container} cannot hold subtype {subtype!r} "
            f"(choose from {', '.join(sorted(soundfile.available_subtypes(container)))})"
        )
    return container, subtype


def _clip(pcm: np.ndarray, subtype: str, path: Path) -> np.ndarray:
    """Integer subtypes wrap around outside [-1, 1] in libsndfile; clip instead, and say so."""
    if subtype in ("FLOAT", "DOUBLE"):
        return pcm
    over = np.count_nonzero(np.abs(pcm) > 1.0)
    if over:
        logger.warning("%s: clipping %d sample(s) outside [-1, 1] for %s", path, over, subtype)
        return np.asarray(np.clip(pcm, -1.0, 1.0), dtype=pcm.dtype)
    return pcm


class AudioWriter:
    """Write mono audio incrementally to a .wav or .flac file, atomically.

    Use as a context manager: samples go to a temporary file beside `path`, which replaces `path` on a clean exit
    (refusing to overwrite an existing file unless `force`) and is removed if the block raises::

        with AudioWriter("out.wav") as writer:
            for pcm in chunks:
                writer.write(pcm)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        sample_rate: int = SAMPLE_RATE,
        *,
        subtype: str | None = None,
        force: bool = False,
    ) -> None:
        self.path = Path(path)
        self.sample_rate = int(sample_rate)
        if self.sample_rate <= 0:
            raise AudioError(f"sample_rate must be positive, got {sample_rate}")
        self.force = force
        self.container, self.subtype = _output_format(self.path, subtype)
        self.num_samples = 0
        self._handle, self._tmp = open_temporary(self.path, force, mode="w+b")
        try:
            self._file = soundfile.SoundFile(
                self._handle,
                "w",
                samplerate=self.sample_rate,
                channels=1,
                subtype=self.subtype,
                format=self.container,
                closefd=False,
            )
        except BaseException:
            self._discard()
            raise
        self.closed = False

    def write(self, pcm: ArrayLike) -> None:
        """Append float samples `[n]` (an empty chunk is allowed and ignored)."""
        if self.closed:
            raise AudioError(f"{self.path}: the writer is closed")
        if np.asarray(pcm).size == 0:
            return
        samples = _clip(validate_pcm(pcm), self.subtype, self.path)
        self._file.write(samples)
        self.num_samples += samples.shape[0]

    def close(self) -> Path:
        """Finish the file and move it into place."""
        if self.closed:
            return self.path
        self.closed = True
        try:
            self._file.close()
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            commit(self._tmp, self.path, self.force)
        finally:
            self._discard()
        return self.path

    def abort(self) -> None:
        """Drop everything written; `path` is left untouched."""
        if not self.closed:
            self.closed = True
            self._file.close()
            self._discard()

    def _discard(self) -> None:
        if not self._handle.closed:
            self._handle.close()
        discard(self._tmp)

    def __enter__(self) -> AudioWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def save_audio(
    path: str | os.PathLike[str],
    pcm: ArrayLike,
    sample_rate: int = SAMPLE_RATE,
    *,
    force: bool = False,
    subtype: str | None = None,
) -> Path:
    """Write mono `pcm [N]` as .wav or .flac (by suffix), 16-bit PCM unless `subtype` says otherwise (e.g. 'FLOAT'
    for WAV). Atomic; refuses to overwrite an existing file unless `force`."""
    target = Path(path)
    _output_format(target, subtype)
    refuse_overwrite(target, force)
    samples = validate_pcm(pcm)
    with AudioWriter(target, sample_rate, subtype=subtype, force=force) as writer:
        writer.write(samples)
    return target
