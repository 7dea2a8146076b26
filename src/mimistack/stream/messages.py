"""The wire format: one frozen dataclass per message kind with `encode()`, and `decode_message(bytes)`.

Sits on `protocol` (kinds, limits, errors) and `container` (`pack_tokens`, `unpack_tokens`, `bits_per_token`); used
by `session`, `receiver`, `sender`, `simulate`, `rate` (`Feedback`, `FRAME_HEADER_BYTES`) and `net`, and mirrored
operation for operation by `web/src/client/protocol.ts` (checked by `tests/test_protocol_js.py`). Anything malformed
raises `ProtocolError` and nothing else, so a peer's bytes can never end a session with another exception.
"""

from __future__ import annotations

import dataclasses
import re
import struct
from collections.abc import Callable
from typing import ClassVar

import numpy as np
from numpy.typing import NDArray

from ..engine.base import CacheMode
from ..mimifile import bits_per_token, pack_tokens, unpack_tokens
from .protocol import (
    CACHE_MODES,
    MAX_SAFE_INTEGER,
    PROTOCOL_VERSION,
    RATE_CONTROLS,
    UNKNOWN_SAMPLES,
    ErrorCode,
    MessageKind,
    ProtocolError,
    RateControl,
    StreamError,
)

_HEAD = struct.Struct("<BB")
_HELLO = struct.Struct("<BBBBIIIBBQQ32sH")
_FRAME = struct.Struct("<BBIBBB")
_FEEDBACK = struct.Struct("<BBIIIIIIBH")
_BANDWIDTH = struct.Struct("<BBIIBB")
_END = struct.Struct("<BBIQ")
_ERROR = struct.Struct("<BBHH")
FRAME_HEADER_BYTES = _FRAME.size
"""Bytes of a FRAME message before its tokens (9): the per-message overhead the rate rule budgets for."""


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ProtocolError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ProtocolError(f"{name} must lie in {low}-{high}, got {value}")
    return int(value)


def _utf8(name: str, text: object) -> bytes:
    if not isinstance(text, str):
        raise ProtocolError(f"{name} must be a string, got {type(text).__name__}")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ProtocolError(f"{name} cannot be encoded as UTF-8: {error}") from None
    if len(data) > 0xFFFF:
        raise ProtocolError(f"{name} is {len(data)} bytes of UTF-8, more than 65535")
    return data


def _from_utf8(name: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ProtocolError(f"{name} is not valid UTF-8: {error}") from None


def _choice(name: str, value: object, choices: tuple[str, ...]) -> int:
    if value not in choices:
        raise ProtocolError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return choices.index(str(value))


def _expect_length(kind: MessageKind, data: bytes, length: int) -> None:
    if len(data) != length:
        raise ProtocolError(f"{kind.name} message is {len(data)} bytes, expected {length}")


@dataclasses.dataclass(frozen=True)
class Hello:
    """Sender -> receiver, first message: the session parameters."""

    num_levels: int
    """Levels the codec has (32 for Mimi)."""
    max_levels: int
    """The most levels the sender will put in one frame (1..num_levels)."""
    sample_rate: int
    frame_size: int
    """Samples per frame (1920 for Mimi: 80 ms at 24 kHz)."""
    codebook_size: int
    weights_sha256: str
    """64 lowercase hex digits: the receiver must decode with the same weights."""
    stream_start_us: int
    """Sender's wall clock (µs since the Unix epoch) when the first sample was captured; frame i's last sample is
    captured at stream_start + (i + 1) * frame_size / sample_rate."""
    num_samples: int | None = None
    """Source length in samples when known in advance (END always states it)."""
    cache_mode: CacheMode = "window"
    """The streaming encoder's cache mode; the receiver decodes in the same mode."""
    rate_control: RateControl = "fixed"
    """How the sender sets its bandwidth estimate (informational)."""
    codec_config: str = ""
    """The codec's MimiConfig as JSON text (may be empty); a receiver may compare it with its own."""

    kind: ClassVar[MessageKind] = MessageKind.HELLO

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.frame_size

    @property
    def frame_duration(self) -> float:
        return self.frame_size / self.sample_rate

    @property
    def bits_per_token(self) -> int:
        return bits_per_token(self.codebook_size)

    def capture_time(self, frame_index: int) -> float:
        """Sender wall-clock seconds when frame `frame_index`'s last sample was captured."""
        return self.stream_start_us / 1e6 + (frame_index + 1) * self.frame_duration

    def encode(self) -> bytes:
        num_levels = _check_int("num_levels", self.num_levels, 1, 255)
        _check_int("max_levels", self.max_levels, 1, num_levels)
        if not isinstance(self.weights_sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", self.weights_sha256):
            raise ProtocolError(f"weights_sha256 must be 64 lowercase hex digits, got {self.weights_sha256!r}")
        samples = (
            UNKNOWN_SAMPLES
            if self.num_samples is None
            else _check_int("num_samples", self.num_samples, 0, MAX_SAFE_INTEGER)
        )
        config = _utf8("codec_config", self.codec_config)
        return (
            _HELLO.pack(
                self.kind,
                PROTOCOL_VERSION,
                num_levels,
                self.max_levels,
                _check_int("sample_rate", self.sample_rate, 1, 0xFFFF_FFFF),
                _check_int("frame_size", self.frame_size, 1, 0xFFFF_FFFF),
                _check_int("codebook_size", self.codebook_size, 1, 65536),
                _choice("cache_mode", self.cache_mode, CACHE_MODES),
                _choice("rate_control", self.rate_control, RATE_CONTROLS),
                _check_int("stream_start_us", self.stream_start_us, 0, MAX_SAFE_INTEGER),
                samples,
                bytes.fromhex(self.weights_sha256),
                len(config),
            )
            + config
        )

    @classmethod
    def decode(cls, data: bytes) -> Hello:
        if len(data) < _HELLO.size:
            raise ProtocolError(f"HELLO message is {len(data)} bytes, shorter than its {_HELLO.size}-byte header")
        (
            _,
            _,
            num_levels,
            max_levels,
            sample_rate,
            frame_size,
            codebook_size,
            cache_mode,
            rate_control,
            start_us,
            samples,
            digest,
            config_length,
        ) = _HELLO.unpack_from(data)
        _expect_length(MessageKind.HELLO, data, _HELLO.size + config_length)
        if cache_mode >= len(CACHE_MODES):
            raise ProtocolError(f"HELLO has an unknown cache mode {cache_mode}")
        if rate_control >= len(RATE_CONTROLS):
            raise ProtocolError(f"HELLO has an unknown rate control {rate_control}")
        hello = cls(
            num_levels=num_levels,
            max_levels=max_levels,
            sample_rate=sample_rate,
            frame_size=frame_size,
            codebook_size=codebook_size,
            weights_sha256=digest.hex(),
            stream_start_us=start_us,
            num_samples=None if samples == UNKNOWN_SAMPLES else samples,
            cache_mode=CACHE_MODES[cache_mode],
            rate_control=RATE_CONTROLS[rate_control],
            codec_config=_from_utf8("HELLO codec_config", data[_HELLO.size :]),
        )
        hello.encode()  # the same range checks as the sender's
        return hello


@dataclasses.dataclass(frozen=True, eq=False)
class Frame:
    """Sender -> receiver: `frame_count` consecutive frames from `first_frame`, each with levels 0..level_count-1.

    `codes`: uint16 `[level_count, frame_count]` (level k of frame first_frame + j is `codes[k, j]`; any integer
    array is accepted and stored as a read-only uint16 copy). On the wire the tokens are frame-major (frame j's
    levels 0..L-1, then frame j+1's), packed at `bits_per_token` bits.
    """

    first_frame: int
    codes: NDArray[np.uint16]
    bits_per_token: int = 11

    kind: ClassVar[MessageKind] = MessageKind.FRAME

    def __post_init__(self) -> None:
        codes = np.asarray(self.codes)
        if codes.ndim != 2:
            raise ProtocolError(f"Frame codes must be [level_count, frame_count], got shape {codes.shape}")
        if codes.size and not np.issubdtype(codes.dtype, np.integer):
            raise ProtocolError(f"Frame codes must be integers, got dtype {codes.dtype}")
        width = _check_int("bits_per_token", self.bits_per_token, 1, 16)
        if codes.size and (int(codes.min()) < 0 or int(codes.max()) >= 1 << width):
            raise ProtocolError(f"Frame tokens must lie in 0-{(1 << width) - 1} for {width}-bit packing")
        frozen = codes.astype(np.uint16, copy=True)
        frozen.flags.writeable = False
        object.__setattr__(self, "codes", frozen)

    @property
    def level_count(self) -> int:
        return int(self.codes.shape[0])

    @property
    def frame_count(self) -> int:
        return int(self.codes.shape[1])

    @property
    def last_frame(self) -> int:
        return self.first_frame + self.frame_count - 1

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return (
            (self.first_frame, self.bits_per_token) == (other.first_frame, other.bits_per_token)
            and self.codes.shape == other.codes.shape
            and bool(np.array_equal(self.codes, other.codes))
        )

    __hash__ = None  # type: ignore[assignment]  # the codes array makes a Frame unhashable, like a list

    def encode(self) -> bytes:
        frames = _check_int("frame_count", self.frame_count, 1, 255)
        levels = _check_int("level_count", self.level_count, 1, 255)
        first = _check_int("first_frame", self.first_frame, 0, 0xFFFF_FFFF)
        _check_int("first_frame + frame_count", first + frames, 1, 1 << 32)
        header = _FRAME.pack(self.kind, PROTOCOL_VERSION, first, frames, levels, self.bits_per_token)
        return header + pack_tokens(self.codes.T, self.bits_per_token)

    @classmethod
    def decode(cls, data: bytes) -> Frame:
        if len(data) < _FRAME.size:
            raise ProtocolError(f"FRAME message is {len(data)} bytes, shorter than its {_FRAME.size}-byte header")
        _, _, first, frames, levels, width = _FRAME.unpack_from(data)
        if frames == 0 or levels == 0:
            raise ProtocolError(f"FRAME holds {frames} frames x {levels} levels; both must be at least 1")
        if not 1 <= width <= 16:
            raise ProtocolError(f"FRAME bits_per_token must lie in 1-16, got {width}")
        if first + frames > 1 << 32:
            raise ProtocolError(f"FRAME runs past frame index 2^32 - 1 ({first} + {frames} frames)")
        count = frames * levels
        payload = data[_FRAME.size :]
        _expect_length(MessageKind.FRAME, data, _FRAME.size + (count * width + 7) // 8)
        tokens = unpack_tokens(payload, count, width)
        if (count * width) % 8 and payload[-1] >> ((count * width) % 8):
            raise ProtocolError("FRAME padding bits after the last token must be zero")
        return cls(first_frame=first, codes=tokens.reshape(frames, levels).T, bits_per_token=width)


@dataclasses.dataclass(frozen=True)
class Feedback:
    """Receiver -> sender, a few times a second: what the receiver is getting."""

    sequence: int
    """Counts FEEDBACK messages from 0."""
    frames_played: int
    """Frames decoded or concealed so far (the next frame index the receiver will output)."""
    frames_concealed: int
    """Of those, frames concealed because they were lost or late."""
    level_count: int
    """Levels in the most recently received frame (0 before the first)."""
    delivered_bps: int
    """Bits per second of all messages received over the last few seconds."""
    loss_permille: int
    """Frames concealed per 1000 output over the same window."""
    latency_us: int
    """Capture-to-decoded latency of the most recently received frame (µs; assumes synchronised clocks)."""
    queue_delay_us: int
    """One-way delay of the latest FRAME message above the smallest seen (µs): the congestion signal."""

    kind: ClassVar[MessageKind] = MessageKind.FEEDBACK

    def encode(self) -> bytes:
        u32 = 0xFFFF_FFFF
        return _FEEDBACK.pack(
            self.kind,
            PROTOCOL_VERSION,
            _check_int("sequence", self.sequence, 0, u32),
            _check_int("frames_played", self.frames_played, 0, u32),
            _check_int("frames_concealed", self.frames_concealed, 0, u32),
            _check_int("delivered_bps", self.delivered_bps, 0, u32),
            _check_int("latency_us", self.latency_us, 0, u32),
            _check_int("queue_delay_us", self.queue_delay_us, 0, u32),
            _check_int("level_count", self.level_count, 0, 255),
            _check_int("loss_permille", self.loss_permille, 0, 1000),
        )

    @classmethod
    def decode(cls, data: bytes) -> Feedback:
        _expect_length(MessageKind.FEEDBACK, data, _FEEDBACK.size)
        _, _, sequence, played, concealed, delivered, latency, queue, levels, loss = _FEEDBACK.unpack(data)
        if loss > 1000:
            raise ProtocolError(f"FEEDBACK loss_permille must lie in 0-1000, got {loss}")
        return cls(
            sequence=sequence,
            frames_played=played,
            frames_concealed=concealed,
            level_count=levels,
            delivered_bps=delivered,
            loss_permille=loss,
            latency_us=latency,
            queue_delay_us=queue,
        )


@dataclasses.dataclass(frozen=True)
class Bandwidth:
    """Sender -> receiver, whenever its plan changes: the estimate and what it sends from `from_frame` on."""

    from_frame: int
    estimate_bps: int
    level_count: int
    frames_per_message: int

    kind: ClassVar[MessageKind] = MessageKind.BANDWIDTH

    def encode(self) -> bytes:
        return _BANDWIDTH.pack(
            self.kind,
            PROTOCOL_VERSION,
            _check_int("from_frame", self.from_frame, 0, 0xFFFF_FFFF),
            _check_int("estimate_bps", self.estimate_bps, 0, 0xFFFF_FFFF),
            _check_int("level_count", self.level_count, 1, 255),
            _check_int("frames_per_message", self.frames_per_message, 1, 255),
        )

    @classmethod
    def decode(cls, data: bytes) -> Bandwidth:
        _expect_length(MessageKind.BANDWIDTH, data, _BANDWIDTH.size)
        _, _, from_frame, estimate, levels, frames = _BANDWIDTH.unpack(data)
        message = cls(from_frame=from_frame, estimate_bps=estimate, level_count=levels, frames_per_message=frames)
        message.encode()
        return message


@dataclasses.dataclass(frozen=True)
class End:
    """Sender -> receiver, last message: the stream's length."""

    num_frames: int
    num_samples: int

    kind: ClassVar[MessageKind] = MessageKind.END

    def encode(self) -> bytes:
        return _END.pack(
            self.kind,
            PROTOCOL_VERSION,
            _check_int("num_frames", self.num_frames, 0, 0xFFFF_FFFF),
            _check_int("num_samples", self.num_samples, 0, MAX_SAFE_INTEGER),
        )

    @classmethod
    def decode(cls, data: bytes) -> End:
        _expect_length(MessageKind.END, data, _END.size)
        _, _, frames, samples = _END.unpack(data)
        message = cls(num_frames=frames, num_samples=samples)
        message.encode()
        return message


@dataclasses.dataclass(frozen=True)
class ErrorMessage:
    """Either direction: why the session is being closed. `code` is an `ErrorCode` value (or an unknown one)."""

    code: int
    text: str

    kind: ClassVar[MessageKind] = MessageKind.ERROR

    def encode(self) -> bytes:
        text = _utf8("text", self.text)
        return _ERROR.pack(self.kind, PROTOCOL_VERSION, _check_int("code", self.code, 0, 0xFFFF), len(text)) + text

    @classmethod
    def decode(cls, data: bytes) -> ErrorMessage:
        if len(data) < _ERROR.size:
            raise ProtocolError(f"ERROR message is {len(data)} bytes, shorter than its {_ERROR.size}-byte header")
        _, _, code, length = _ERROR.unpack_from(data)
        _expect_length(MessageKind.ERROR, data, _ERROR.size + length)
        return cls(code=code, text=_from_utf8("ERROR text", data[_ERROR.size :]))


Message = Hello | Frame | Feedback | Bandwidth | End | ErrorMessage
_DECODERS: dict[int, Callable[[bytes], Message]] = {
    MessageKind.HELLO: Hello.decode,
    MessageKind.FRAME: Frame.decode,
    MessageKind.FEEDBACK: Feedback.decode,
    MessageKind.BANDWIDTH: Bandwidth.decode,
    MessageKind.END: End.decode,
    MessageKind.ERROR: ErrorMessage.decode,
}


def decode_message(data: bytes | bytearray | memoryview | str) -> Message:
    """Parse one binary WebSocket message. Raises `ProtocolError` (and nothing else) for anything malformed."""
    if isinstance(data, str):
        raise ProtocolError("text WebSocket messages are not part of the protocol; messages are binary")
    raw = bytes(data)
    if len(raw) < _HEAD.size:
        raise ProtocolError(f"a message needs at least {_HEAD.size} bytes (kind, version), got {len(raw)}")
    kind, version = _HEAD.unpack_from(raw)
    decoder = _DECODERS.get(kind)
    if decoder is None:
        raise ProtocolError(f"unknown message kind {kind}")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"unsupported protocol version {version} in a {MessageKind(kind).name} message "
            f"(this mimistack speaks version {PROTOCOL_VERSION})",
            ErrorCode.VERSION,
        )
    try:
        return decoder(raw)
    except ProtocolError:
        raise
    except (ValueError, struct.error) as error:  # e.g. unpack_tokens' own checks: still a malformed message
        raise ProtocolError(f"malformed {MessageKind(kind).name} message: {error}") from None


class RemoteError(StreamError):
    """The peer sent an ERROR message."""

    def __init__(self, message: ErrorMessage) -> None:
        try:
            name = ErrorCode(message.code).name
        except ValueError:
            name = f"code {message.code}"
        super().__init__(f"the peer reported {name}: {message.text}")
        self.message = message
