"""Progressive, bandwidth-adaptive streaming of Mimi tokens over WebSocket (spec: `docs/protocol.md`).

Transport layer. Sits on `codec` (`Codec.stream_encoder()` / `stream_decoder()`), `levels`, `container`
(`pack_tokens`, `FrameStreamWriter` for the received `.mimi`) and `audio` (`AudioWriter`, `iter_audio`); used by
`cli_stream` (`mimistack stream send|receive`), `bench/bench_stream.py`, and mirrored for the browser by
`web/src/protocol.ts`.

Pieces, bottom to top:

* the wire format: `MessageKind`, one frozen dataclass per kind (`Hello`, `Frame`, `Feedback`, `Bandwidth`,
  `End`, `ErrorMessage`) with `encode()`, and `decode_message(bytes)`; anything malformed raises `ProtocolError`;
* the rate rule: `plan_frames(bandwidth)` -> how many frames go in one FRAME message and how many levels each
  carries; `BandwidthSchedule` ("0:200,2:4400,5:500"), and the estimators `FixedRate`, `ScheduledRate`,
  `FeedbackRate`;
* the receiver: `ReceiverSession` (sans-IO: bytes and arrival times in, decoded audio and replies out; conceals
  lost and late frames) and `StreamReceiver` (serves one session on a WebSocket);
* the sender: `send_stream` with the sources `ArraySource`, `FileSource`, `MicSource`;
* the network simulator: `SimulatedLink` (a paced bottleneck following a schedule) inside `LossyRelay`, a
  WebSocket relay on 127.0.0.1 that drops FRAME messages at random (seeded), for tests and the benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import ipaddress
import json
import logging
import math
import random
import re
import struct
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np

from .container import FrameStreamWriter, bits_per_token, pack_tokens, unpack_tokens
from .levels import Levels

logger = logging.getLogger(__name__)

__all__ = [
    "CACHE_MODES",
    "FRAME_HEADER_BYTES",
    "MAX_MESSAGE_BYTES",
    "PROTOCOL_VERSION",
    "RATE_CONTROLS",
    "UNKNOWN_SAMPLES",
    "ArraySource",
    "AudioSource",
    "Bandwidth",
    "BandwidthSchedule",
    "End",
    "ErrorCode",
    "ErrorMessage",
    "Feedback",
    "FeedbackRate",
    "FileSource",
    "FixedRate",
    "Frame",
    "FrameRecord",
    "Hello",
    "LossyRelay",
    "Message",
    "MessageKind",
    "MicSource",
    "Plan",
    "ProtocolError",
    "RateController",
    "ReceiverReport",
    "ReceiverSession",
    "RelayStats",
    "RemoteError",
    "ScheduledRate",
    "SenderReport",
    "SenderStatus",
    "SimulatedLink",
    "StreamError",
    "StreamReceiver",
    "check_compatible",
    "check_listen_host",
    "decode_message",
    "parse_bitrate",
    "plan_frames",
    "send_stream",
    "write_received_mimi",
]

PROTOCOL_VERSION = 1
MAX_SAFE_INTEGER = (1 << 53) - 1
"""u64 fields carry at most 2^53 - 1, so that JavaScript numbers hold them exactly."""
UNKNOWN_SAMPLES = (1 << 64) - 1
"""HELLO's num_samples when the source length is not known in advance (a microphone)."""
MAX_MESSAGE_BYTES = 1 << 18
"""Largest message of any kind (a FRAME of 255 frames x 255 levels at 16 bits is 130 059 bytes)."""
CACHE_MODES = ("window", "moshi")
RATE_CONTROLS = ("fixed", "schedule", "feedback")


class MessageKind(enum.IntEnum):
    """Byte 0 of every message."""

    HELLO = 1
    FRAME = 2
    FEEDBACK = 3
    BANDWIDTH = 4
    END = 5
    ERROR = 6


class ErrorCode(enum.IntEnum):
    """`ErrorMessage.code` values (other values may be received; they are kept as plain integers)."""

    PROTOCOL = 1
    VERSION = 2
    INCOMPATIBLE = 3
    STATE = 4
    INTERNAL = 5


class StreamError(RuntimeError):
    """A streaming session that failed: the peer went away, timed out, or could not be reached."""


class ProtocolError(ValueError):
    """Bytes that are not a valid message, or a message that breaks the session rules. `code` says which."""

    def __init__(self, message: str, code: int = ErrorCode.PROTOCOL) -> None:
        super().__init__(message)
        self.code = int(code)


class RemoteError(StreamError):
    """The peer sent an ERROR message."""

    def __init__(self, message: ErrorMessage) -> None:
        try:
            name = ErrorCode(message.code).name
        except ValueError:
            name = f"code {message.code}"
        super().__init__(f"the peer reported {name}: {message.text}")
        self.message = message


# -- wire format --------------------------------------------------------------------------------------------------
_HEAD = struct.Struct("<BB")
_HELLO = struct.Struct("<BBBBIIIBBQQ32sH")
_FRAME = struct.Struct("<BBIBBB")
_FEEDBACK = struct.Struct("<BBIIIIIIBH")
_BANDWIDTH = struct.Struct("<BBIIBB")
_END = struct.Struct("<BBIQ")
_ERROR = struct.Struct("<BBHH")
FRAME_HEADER_BYTES = _FRAME.size
"""Bytes of a FRAME message before its tokens (9): the per-message overhead the rate rule budgets for."""


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ProtocolError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ProtocolError(f"{name} must lie in {low}-{high}, got {value}")
    return int(value)


def _utf8(name: str, text: Any) -> bytes:
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


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> int:
    if value not in choices:
        raise ProtocolError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return choices.index(value)


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
    cache_mode: Literal["window", "moshi"] = "window"
    """The streaming encoder's cache mode; the receiver decodes in the same mode."""
    rate_control: Literal["fixed", "schedule", "feedback"] = "fixed"
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
        samples = UNKNOWN_SAMPLES if self.num_samples is None else \
            _check_int("num_samples", self.num_samples, 0, MAX_SAFE_INTEGER)
        config = _utf8("codec_config", self.codec_config)
        return _HELLO.pack(
            self.kind, PROTOCOL_VERSION, num_levels, self.max_levels,
            _check_int("sample_rate", self.sample_rate, 1, 0xFFFF_FFFF),
            _check_int("frame_size", self.frame_size, 1, 0xFFFF_FFFF),
            _check_int("codebook_size", self.codebook_size, 1, 65536),
            _choice("cache_mode", self.cache_mode, CACHE_MODES),
            _choice("rate_control", self.rate_control, RATE_CONTROLS),
            _check_int("stream_start_us", self.stream_start_us, 0, MAX_SAFE_INTEGER),
            samples, bytes.fromhex(self.weights_sha256), len(config)) + config

    @classmethod
    def decode(cls, data: bytes) -> Hello:
        if len(data) < _HELLO.size:
            raise ProtocolError(f"HELLO message is {len(data)} bytes, shorter than its {_HELLO.size}-byte header")
        (_, _, num_levels, max_levels, sample_rate, frame_size, codebook_size, cache_mode, rate_control, start_us,
         samples, digest, config_length) = _HELLO.unpack_from(data)
        _expect_length(MessageKind.HELLO, data, _HELLO.size + config_length)
        if cache_mode >= len(CACHE_MODES):
            raise ProtocolError(f"HELLO has an unknown cache mode {cache_mode}")
        if rate_control >= len(RATE_CONTROLS):
            raise ProtocolError(f"HELLO has an unknown rate control {rate_control}")
        hello = cls(num_levels=num_levels, max_levels=max_levels, sample_rate=sample_rate, frame_size=frame_size,
                    codebook_size=codebook_size, weights_sha256=digest.hex(), stream_start_us=start_us,
                    num_samples=None if samples == UNKNOWN_SAMPLES else samples,
                    cache_mode=CACHE_MODES[cache_mode], rate_control=RATE_CONTROLS[rate_control],  # type: ignore[arg-type]
                    codec_config=_from_utf8("HELLO codec_config", data[_HELLO.size:]))
        hello.encode()  # the same range checks as the sender's
        return hello


@dataclasses.dataclass(frozen=True, eq=False)
class Frame:
    """Sender -> receiver: `frame_count` consecutive frames from `first_frame`, each with levels 0..level_count-1.

    `codes`: uint16 `[level_count, frame_count]` (level k of frame first_frame + j is `codes[k, j]`). On the wire
    the tokens are frame-major (frame j's levels 0..L-1, then frame j+1's), packed at `bits_per_token` bits.
    """

    first_frame: int
    codes: np.ndarray
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
        return (self.first_frame, self.bits_per_token) == (other.first_frame, other.bits_per_token) \
            and self.codes.shape == other.codes.shape and bool(np.array_equal(self.codes, other.codes))

    __hash__ = None  # type: ignore[assignment]

    def encode(self) -> bytes:
        frames = _check_int("frame_count", self.frame_count, 1, 255)
        levels = _check_int("level_count", self.level_count, 1, 255)
        first = _check_int("first_frame", self.first_frame, 0, 0xFFFF_FFFF)
        _check_int("first_frame + frame_count", first + frames, 1, 1 << 32)
        return _FRAME.pack(self.kind, PROTOCOL_VERSION, first, frames, levels, self.bits_per_token) \
            + pack_tokens(self.codes.T, self.bits_per_token)

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
        payload = data[_FRAME.size:]
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
            self.kind, PROTOCOL_VERSION, _check_int("sequence", self.sequence, 0, u32),
            _check_int("frames_played", self.frames_played, 0, u32),
            _check_int("frames_concealed", self.frames_concealed, 0, u32),
            _check_int("delivered_bps", self.delivered_bps, 0, u32),
            _check_int("latency_us", self.latency_us, 0, u32),
            _check_int("queue_delay_us", self.queue_delay_us, 0, u32),
            _check_int("level_count", self.level_count, 0, 255),
            _check_int("loss_permille", self.loss_permille, 0, 1000))

    @classmethod
    def decode(cls, data: bytes) -> Feedback:
        _expect_length(MessageKind.FEEDBACK, data, _FEEDBACK.size)
        _, _, sequence, played, concealed, delivered, latency, queue, levels, loss = _FEEDBACK.unpack(data)
        if loss > 1000:
            raise ProtocolError(f"FEEDBACK loss_permille must lie in 0-1000, got {loss}")
        return cls(sequence=sequence, frames_played=played, frames_concealed=concealed, level_count=levels,
                   delivered_bps=delivered, loss_permille=loss, latency_us=latency, queue_delay_us=queue)


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
            self.kind, PROTOCOL_VERSION, _check_int("from_frame", self.from_frame, 0, 0xFFFF_FFFF),
            _check_int("estimate_bps", self.estimate_bps, 0, 0xFFFF_FFFF),
            _check_int("level_count", self.level_count, 1, 255),
            _check_int("frames_per_message", self.frames_per_message, 1, 255))

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
        return _END.pack(self.kind, PROTOCOL_VERSION, _check_int("num_frames", self.num_frames, 0, 0xFFFF_FFFF),
                         _check_int("num_samples", self.num_samples, 0, MAX_SAFE_INTEGER))

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
        return cls(code=code, text=_from_utf8("ERROR text", data[_ERROR.size:]))


Message = Hello | Frame | Feedback | Bandwidth | End | ErrorMessage
_DECODERS: dict[int, Callable[[bytes], Message]] = {
    MessageKind.HELLO: Hello.decode, MessageKind.FRAME: Frame.decode, MessageKind.FEEDBACK: Feedback.decode,
    MessageKind.BANDWIDTH: Bandwidth.decode, MessageKind.END: End.decode, MessageKind.ERROR: ErrorMessage.decode,
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
        raise ProtocolError(f"unsupported protocol version {version} in a {MessageKind(kind).name} message "
                            f"(this mimistack speaks version {PROTOCOL_VERSION})", ErrorCode.VERSION)
    try:
        return decoder(raw)
    except ProtocolError:
        raise
    except (ValueError, struct.error) as error:  # e.g. unpack_tokens' own checks: still a malformed message
        raise ProtocolError(f"malformed {MessageKind(kind).name} message: {error}") from None


# -- the rate rule ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Plan:
    """What the sender puts in each FRAME message: `frames_per_message` frames of `level_count` levels."""

    frames_per_message: int
    level_count: int


def plan_frames(bandwidth_bps: float, *, frame_duration: float = 0.08, bits_per_token: int = 11,
                max_levels: int = 32, utilization: float = 0.9, max_frames_per_message: int = 16,
                overhead_bytes: int = FRAME_HEADER_BYTES) -> Plan:
    """The most levels that fit the bandwidth, batching frames only when one frame cannot carry level 0.

    Bits available per frame are `bandwidth * utilization * frame_duration`; a message of n frames of L levels
    costs `8 * overhead_bytes + n * L * bits_per_token`. The smallest n (1..max_frames_per_message) that fits at
    least one level is chosen, then the largest L (capped at max_levels). When even the largest batch cannot
    carry level 0, level 0 is sent anyway in the largest batch (the link is then oversubscribed). Mirrored by
    `planFrames` in web/src/protocol.ts, operation for operation, so both give the same plan.
    """
    if not math.isfinite(bandwidth_bps):
        raise ValueError(f"bandwidth must be a finite number of bits per second, got {bandwidth_bps}")
    if max_levels < 1 or max_frames_per_message < 1 or bits_per_token < 1:
        raise ValueError("max_levels, max_frames_per_message and bits_per_token must be at least 1")
    usable = bandwidth_bps * utilization * frame_duration
    for frames in range(1, max_frames_per_message + 1):
        levels = math.floor((usable * frames - 8 * overhead_bytes) / (bits_per_token * frames))
        if levels >= 1:
            return Plan(frames, min(levels, max_levels))
    return Plan(max_frames_per_message, 1)


_RATE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([kKmM]?)\s*$")


def parse_bitrate(text: str) -> float:
    """'4400', '4.4k', '1.2M' -> bits per second."""
    match = _RATE.match(str(text))
    if not match:
        raise ValueError(f"not a bitrate: {text!r} (expected bits per second, e.g. 4400 or 4.4k)")
    value = float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6}[match.group(2).lower()]
    if not math.isfinite(value):
        raise ValueError(f"not a finite bitrate: {text!r}")
    return value


@dataclasses.dataclass(frozen=True)
class BandwidthSchedule:
    """Piecewise-constant bandwidth over stream time: `steps` of (start seconds, bits per second), the first at 0."""

    steps: tuple[tuple[float, float], ...]

    def __post_init__(self) -> None:
        if not self.steps or self.steps[0][0] != 0:
            raise ValueError("a bandwidth schedule must start at time 0")
        for (t0, _), (t1, _) in zip(self.steps, self.steps[1:]):
            if not t1 > t0:
                raise ValueError(f"schedule times must increase, got {t0:g} then {t1:g}")
        for t, rate in self.steps:
            if not (math.isfinite(t) and math.isfinite(rate)) or rate < 0:
                raise ValueError(f"schedule step {t:g}:{rate:g} must have a finite time and a rate >= 0")

    @classmethod
    def parse(cls, text: str) -> BandwidthSchedule:
        """'0:200,2:4400,5:500': 200 bit/s from 0 s, 4400 from 2 s, 500 from 5 s ('4.4k' also works)."""
        steps = []
        for part in str(text).split(","):
            time_text, sep, rate_text = part.partition(":")
            if not sep:
                raise ValueError(f"schedule step {part.strip()!r} is not SECONDS:BITRATE (in {text!r})")
            try:
                start = float(time_text)
            except ValueError:
                raise ValueError(f"schedule time {time_text.strip()!r} is not a number (in {text!r})") from None
            steps.append((start, parse_bitrate(rate_text)))
        return cls(tuple(steps))

    @classmethod
    def constant(cls, bandwidth_bps: float) -> BandwidthSchedule:
        return cls(((0.0, float(bandwidth_bps)),))

    def at(self, seconds: float) -> float:
        """Bandwidth at `seconds` of stream time (the first step's before 0)."""
        rate = self.steps[0][1]
        for start, value in self.steps:
            if seconds >= start:
                rate = value
            else:
                break
        return rate

    def next_change(self, seconds: float) -> float | None:
        for start, _ in self.steps:
            if start > seconds:
                return start
        return None

    def __str__(self) -> str:
        return ",".join(f"{t:g}:{r:g}" for t, r in self.steps)


class RateController(Protocol):
    """A bandwidth estimate the sender plans with; `elapsed` is seconds since the stream started."""

    name: str

    def estimate(self, elapsed: float) -> float: ...

    def on_feedback(self, feedback: Feedback, elapsed: float) -> None: ...

    def limit(self, max_bps: float) -> None:
        """The most bandwidth the sender can use (every level): an adaptive estimate need not grow beyond it."""


class FixedRate:
    """A bandwidth the user states (`--bitrate`)."""

    name = "fixed"

    def __init__(self, bandwidth_bps: float) -> None:
        if not bandwidth_bps > 0:
            raise ValueError(f"bitrate must be positive, got {bandwidth_bps}")
        self.bandwidth_bps = float(bandwidth_bps)

    def estimate(self, elapsed: float) -> float:
        return self.bandwidth_bps

    def on_feedback(self, feedback: Feedback, elapsed: float) -> None:
        pass

    def limit(self, max_bps: float) -> None:
        pass


class ScheduledRate:
    """A scripted bandwidth (`--schedule`): the sender knows the link's schedule (tests and benchmarks)."""

    name = "schedule"

    def __init__(self, schedule: BandwidthSchedule) -> None:
        self.schedule = schedule

    def estimate(self, elapsed: float) -> float:
        return self.schedule.at(elapsed)

    def on_feedback(self, feedback: Feedback, elapsed: float) -> None:
        pass

    def limit(self, max_bps: float) -> None:
        pass


class FeedbackRate:
    """Bandwidth estimated from the receiver's FEEDBACK: delay-based, multiplicative increase and decrease.

    When the queueing delay the receiver reports exceeds `high_delay`, the estimate drops to `backoff` times the
    delivered bitrate (halved again when the delay exceeds 4 x `high_delay`, to drain a long queue) and holds for
    `hold` seconds while the queue drains; while the delay stays under `low_delay`, it grows by `growth` per
    FEEDBACK (probing for more), up to what every level needs (`limit`). Random loss is not read as congestion.
    """

    name = "feedback"

    def __init__(self, initial_bps: float = 1000.0, *, min_bps: float = 100.0, max_bps: float = 20_000.0,
                 low_delay: float = 0.1, high_delay: float = 0.3, growth: float = 1.25, backoff: float = 0.85,
                 hold: float = 0.5) -> None:
        if not 0 < min_bps <= initial_bps <= max_bps:
            raise ValueError(f"need 0 < min_bps <= initial_bps <= max_bps, got {min_bps}, {initial_bps}, {max_bps}")
        self.bandwidth_bps = float(initial_bps)
        self.min_bps, self.max_bps = float(min_bps), float(max_bps)
        self.low_delay, self.high_delay = low_delay, high_delay
        self.growth, self.backoff, self.hold = growth, backoff, hold
        self._hold_until = -math.inf

    def estimate(self, elapsed: float) -> float:
        return self.bandwidth_bps

    def on_feedback(self, feedback: Feedback, elapsed: float) -> None:
        delay = feedback.queue_delay_us / 1e6
        if elapsed < self._hold_until:
            return
        if delay > self.high_delay:
            delivered = feedback.delivered_bps or self.bandwidth_bps
            drain = 0.5 if delay > 4 * self.high_delay else 1.0
            self.bandwidth_bps = max(self.min_bps, min(self.bandwidth_bps, delivered) * self.backoff * drain)
            self._hold_until = elapsed + self.hold
        elif delay < self.low_delay:
            self.bandwidth_bps = min(self.max_bps, self.bandwidth_bps * self.growth)

    def limit(self, max_bps: float) -> None:
        self.max_bps = max(self.min_bps, min(self.max_bps, max_bps))
        self.bandwidth_bps = min(self.bandwidth_bps, self.max_bps)


# -- network simulator --------------------------------------------------------------------------------------------
class SimulatedLink:
    """A bottleneck link whose bandwidth follows a schedule: messages are serialised one after another.

    `transmit(bits, now)` queues a message behind those in flight and returns when its last bit leaves the link
    (integrating the scheduled bandwidth over time). Times are seconds on any clock; `start` is the clock reading
    at schedule time 0.
    """

    def __init__(self, schedule: BandwidthSchedule, start: float = 0.0) -> None:
        self.schedule = schedule
        self.start = start
        self.busy_until = -math.inf

    def transmit(self, bits: float, now: float) -> float:
        # Schedule time (relative to `start`) is advanced to each change exactly: absolute clock readings near
        # 1.7e9 s would round, and a step could then be revisited forever.
        position = max(now, self.busy_until) - self.start
        remaining = float(bits)
        while True:
            rate = self.schedule.at(position)
            change = self.schedule.next_change(position)
            if change is None and rate <= 0:
                raise StreamError("the simulated link's bandwidth is 0 for good: the message never gets through")
            if change is None or (rate > 0 and remaining <= rate * (change - position)):
                position += remaining / rate
                break
            remaining -= rate * (change - position)
            position = change
        self.busy_until = self.start + position
        return self.busy_until


@dataclasses.dataclass
class RelayStats:
    """What the relay did: dropped FRAME messages (by the random loss or a full queue) and what it delivered."""

    dropped_frames: list[int] = dataclasses.field(default_factory=list)
    queue_dropped_frames: list[int] = dataclasses.field(default_factory=list)
    frame_messages: int = 0
    delivered_messages: int = 0
    delivered_bytes: int = 0


class LossyRelay:
    """A WebSocket relay on 127.0.0.1 between a sender and a receiver: the loopback network simulator.

    Downstream (sender -> receiver) every FRAME message is dropped with probability `loss` (a seeded
    `random.Random`), and the rest are paced through a `SimulatedLink` following `schedule` (protocol bytes only:
    WebSocket and TCP/IP framing are not counted), then delayed by `delay` seconds. Control messages (HELLO,
    BANDWIDTH, END) are neither dropped nor paced, but keep their order behind the FRAME messages in flight.
    A FRAME that would wait more than `max_queue_delay` seconds is dropped (a finite router buffer). Upstream
    (FEEDBACK, ERROR) is forwarded at once. The schedule's time 0 is HELLO's `stream_start_us`. One session::

        async with LossyRelay("ws://127.0.0.1:9000", schedule, loss=0.1, seed=0) as relay:
            await send_stream(relay.uri, ...)
    """

    def __init__(self, target_uri: str, schedule: BandwidthSchedule, *, loss: float = 0.1, seed: int = 0,
                 delay: float = 0.0, max_queue_delay: float = 2.0, host: str = "127.0.0.1", port: int = 0) -> None:
        if not 0 <= loss < 1:
            raise ValueError(f"loss must lie in [0, 1), got {loss}")
        check_listen_host(host, allow_remote=False)
        self.target_uri = target_uri
        self.schedule = schedule
        self.loss = loss
        self.delay = delay
        self.max_queue_delay = max_queue_delay
        self.host, self.port = host, port
        self.random = random.Random(seed)
        self.stats = RelayStats()
        self._server: Any = None
        self._sessions: list[asyncio.Task[None]] = []

    @property
    def uri(self) -> str:
        return f"ws://{_uri_host(self.host)}:{self.port}"

    async def __aenter__(self) -> LossyRelay:
        serve = _websockets().asyncio.server.serve
        self._server = await serve(self._session, self.host, self.port, max_size=MAX_MESSAGE_BYTES,
                                   compression=None).__aenter__()
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._server.__aexit__(*exc_info)

    async def _session(self, incoming: Any) -> None:
        connect = _websockets().asyncio.client.connect
        async with connect(self.target_uri, max_size=MAX_MESSAGE_BYTES, compression=None) as outgoing:
            queue: asyncio.Queue[tuple[float, Any] | None] = asyncio.Queue()
            deliver = asyncio.create_task(self._deliver(queue, outgoing))
            upstream = asyncio.create_task(_pipe(outgoing, incoming, close=True))
            link: SimulatedLink | None = None
            last_delivery = -math.inf
            with contextlib.suppress(_websockets().exceptions.ConnectionClosed):
                async for data in incoming:
                    now = time.time()
                    kind = data[0] if isinstance(data, bytes) and data else None
                    if kind == MessageKind.HELLO and link is None:
                        with contextlib.suppress(ProtocolError):
                            link = SimulatedLink(self.schedule, Hello.decode(data).stream_start_us / 1e6)
                    if kind == MessageKind.FRAME and len(data) >= FRAME_HEADER_BYTES:
                        at = self._admit(data, now, link or SimulatedLink(self.schedule, now))
                        if at is None:
                            continue
                        last_delivery = max(last_delivery, at)
                    else:
                        last_delivery = max(last_delivery, now + self.delay)
                    queue.put_nowait((last_delivery, data))
            queue.put_nowait(None)
            await deliver
        await upstream  # the receiver's side is closed now, so this ends

    def _admit(self, data: bytes, now: float, link: SimulatedLink) -> float | None:
        """Delivery time of a FRAME message, or None when it is dropped."""
        self.stats.frame_messages += 1
        first, count = struct.unpack_from("<IB", data, 2)
        frames = list(range(first, first + count))
        if self.random.random() < self.loss:
            self.stats.dropped_frames.extend(frames)
            return None
        if max(now, link.busy_until) - now > self.max_queue_delay:
            self.stats.queue_dropped_frames.extend(frames)
            return None
        return link.transmit(8 * len(data), now) + self.delay

    async def _deliver(self, queue: asyncio.Queue[tuple[float, Any] | None], outgoing: Any) -> None:
        while (item := await queue.get()) is not None:
            at, data = item
            wait = at - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                await outgoing.send(data)
            except _websockets().exceptions.ConnectionClosed:
                return
            self.stats.delivered_messages += 1
            self.stats.delivered_bytes += len(data)


async def _pipe(source: Any, target: Any, *, close: bool = False) -> None:
    """Forward every message from `source` to `target`; then, if `close`, hang up on `target` too."""
    with contextlib.suppress(_websockets().exceptions.ConnectionClosed):
        async for data in source:
            await target.send(data)
    if close:
        await target.close()


# -- receiver -----------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class FrameRecord:
    """One output frame at the receiver."""

    index: int
    levels_received: int
    """Levels that arrived for this frame (0 when it was concealed)."""
    levels_decoded: int
    """Levels the decoder used (the concealment's decayed count for a concealed frame)."""
    concealed: str | None
    """None for a received frame; "lost" (a gap in the frame indices, or missing at END) or "deadline" (not
    there by its deadline)."""
    capture_time: float
    """Sender wall-clock time of the frame's last sample."""
    output_time: float
    """Receiver wall-clock time when its audio was decoded."""
    arrived_late: bool = False
    """A frame concealed at its deadline whose data came afterwards (and was dropped)."""

    @property
    def latency(self) -> float:
        return self.output_time - self.capture_time


@dataclasses.dataclass
class ReceiverReport:
    """Everything a receiver session measured."""

    hello: Hello | None
    frames: list[FrameRecord]
    num_samples: int
    """Samples of audio output."""
    complete: bool
    """True when the stream ended with END; False when the sender went away first."""
    bytes_received: int
    bandwidth_messages: list[Bandwidth]
    feedback_sent: int
    error: str | None = None

    @property
    def concealed(self) -> list[int]:
        return [r.index for r in self.frames if r.concealed]

    def latencies(self, received_only: bool = True) -> np.ndarray:
        return np.array([r.latency for r in self.frames if not (received_only and r.concealed)], dtype=np.float64)

    def latency_percentile(self, percentile: float, received_only: bool = True) -> float:
        values = self.latencies(received_only)
        return float(np.percentile(values, percentile)) if values.size else math.nan

    @property
    def mean_levels(self) -> float:
        values = [r.levels_received for r in self.frames if not r.concealed]
        return float(np.mean(values)) if values else 0.0

    def summary(self) -> str:
        frames = len(self.frames)
        lost = sum(1 for r in self.frames if r.concealed == "lost")
        deadline = sum(1 for r in self.frames if r.concealed == "deadline")
        token_rate = 0.0
        if self.hello is not None and frames:
            token_rate = self.mean_levels * self.hello.bits_per_token * self.hello.frame_rate
        return (f"{frames} frames ({self.num_samples} samples), {frames - lost - deadline} received with "
                f"{self.mean_levels:.1f} levels on average ({token_rate:.0f} bit/s of tokens), {lost} lost and "
                f"{deadline} late frames concealed; latency p50 {_ms(self.latency_percentile(50))}, "
                f"p99 {_ms(self.latency_percentile(99))}" + ("" if self.complete else "; INCOMPLETE: no END"))


def _ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.0f} ms"


class ReceiverSession:
    """The receiving end of one stream, without any I/O: feed it each message with its arrival time.

    `handle(data, arrival)` and `tick(now)` return the messages to send back (FEEDBACK, a few times a second).
    Frames are decoded in order with the levels that arrived (`StreamDecoder.push(codes, levels=0..L-1)`); the
    decoded audio goes to `on_audio(pcm [n])`, trimmed at the end to the length END states, so the output is
    continuous, frame-aligned and exactly as long as the input.

    Concealment (see docs/protocol.md): a frame is concealed when a later frame arrives first (the message holding
    it was lost: WebSocket keeps order, so it will never come) or when it is still missing `max_delay` seconds
    after its capture (plus the smallest one-way delay seen, which absorbs clock offsets); its data arriving
    afterwards is dropped. A concealed frame decodes the last received frame's tokens again with the level count
    halved for each consecutive concealed frame (at least 1), so the decoder's state runs on and the audio stays
    continuous; from the third consecutive concealed frame the output fades to silence over three frames, and it
    fades back in on the next received frame.
    """

    def __init__(self, codec: Any, *, max_delay: float = 3.0, feedback_interval: float = 0.25,
                 rate_window: float = 1.0, max_gap_frames: int = 1000,
                 on_audio: Callable[[np.ndarray], None] | None = None,
                 on_progress: Callable[[Feedback], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if not max_delay > 0:
            raise ValueError(f"max_delay must be positive, got {max_delay}")
        self.codec = codec
        self.max_delay = max_delay
        self.feedback_interval = feedback_interval
        self.rate_window = rate_window
        self.max_gap_frames = max_gap_frames
        self.on_audio = on_audio
        self.on_progress = on_progress
        self.clock = clock
        self.hello: Hello | None = None
        self.end: End | None = None
        self.records: list[FrameRecord] = []
        self.bandwidth_messages: list[Bandwidth] = []
        self.tokens: list[np.ndarray] = []
        """Per output frame: the uint16 `[num_levels]` tokens decoded (received levels, or the concealment's)."""
        self.samples_written = 0
        self.bytes_received = 0
        self.feedback_sent = 0
        self._decoder: Any = None
        self._arrivals: deque[tuple[float, int]] = deque()
        self._unwritten: list[np.ndarray] = []
        self._offset = math.inf
        self._queue_delay = 0.0
        self._last_arrived = -1
        self._batch = 1
        self._last_tokens: np.ndarray | None = None
        self._last_levels = 0
        self._run = 0
        self._gain = 1.0
        self._next_feedback = math.inf
        self._hello_arrival = 0.0

    # -- public ---------------------------------------------------------------------------------------------------
    @property
    def next_frame(self) -> int:
        return len(self.records)

    @property
    def ended(self) -> bool:
        return self.end is not None

    def handle(self, data: bytes, arrival: float) -> list[bytes]:
        """Process one message that arrived at `arrival` (wall-clock seconds); returns the replies to send."""
        message = decode_message(data)
        self.bytes_received += len(data)
        self._arrivals.append((arrival, len(data)))
        if isinstance(message, ErrorMessage):
            raise RemoteError(message)
        if isinstance(message, Hello):
            self._start(message, arrival)
            return self._replies(arrival)
        if self.hello is None:
            raise ProtocolError(f"{message.kind.name} before HELLO", ErrorCode.STATE)
        if self.ended:
            raise ProtocolError(f"{message.kind.name} after END", ErrorCode.STATE)
        if isinstance(message, Feedback):
            raise ProtocolError("FEEDBACK goes from receiver to sender, not to the receiver", ErrorCode.STATE)
        self._conceal_overdue(arrival)
        if isinstance(message, Frame):
            self._on_frame(message, arrival)
        elif isinstance(message, Bandwidth):
            self.bandwidth_messages.append(message)
            self._batch = message.frames_per_message
            logger.info("sender plan from frame %d: %d bit/s, %d levels, %d frames per message", message.from_frame,
                        message.estimate_bps, message.level_count, message.frames_per_message)
        elif isinstance(message, End):
            self._on_end(message)
            return [self._feedback(arrival).encode()]
        return self._replies(arrival)

    def tick(self, now: float) -> list[bytes]:
        """Conceal the frames whose deadline has passed by `now`; returns the FEEDBACK due, if any."""
        if self.hello is None or self.ended:
            return []
        self._conceal_overdue(now)
        return self._replies(now)

    def next_wakeup(self) -> float | None:
        """When `tick` next has something to do (a frame's deadline or a FEEDBACK), or None."""
        if self.hello is None or self.ended:
            return None
        if self.next_frame >= self._frame_limit:
            return self._next_feedback
        return min(self._deadline(self.next_frame), self._next_feedback)

    def finish(self) -> None:
        """Write the audio still held back. Without END, trailing concealed frames are dropped (nothing confirms
        that those frames exist) and the output ends with the last received frame."""
        if self.ended or self.hello is None:
            return
        while self.records and self.records[-1].concealed:
            self.records.pop()
            self.tokens.pop()
            self._unwritten.pop()
        self._write(self._unwritten)
        self._unwritten = []

    def report(self, error: str | None = None) -> ReceiverReport:
        return ReceiverReport(self.hello, list(self.records), self.samples_written, self.ended, self.bytes_received,
                              list(self.bandwidth_messages), self.feedback_sent, error)

    # -- session --------------------------------------------------------------------------------------------------
    def _start(self, hello: Hello, arrival: float) -> None:
        if self.hello is not None:
            raise ProtocolError("a second HELLO in one session", ErrorCode.STATE)
        check_compatible(hello, self.codec)
        self.hello = hello
        self._decoder = self.codec.stream_decoder(Levels.prefix(0, hello.num_levels), mode=hello.cache_mode)
        self._offset = arrival - hello.stream_start_us / 1e6
        self._hello_arrival = arrival
        self._next_feedback = arrival + self.feedback_interval
        logger.info("stream from %s: %d Hz, %d-sample frames, up to %d of %d levels, rate control %s",
                    hello.weights_sha256[:12], hello.sample_rate, hello.frame_size, hello.max_levels,
                    hello.num_levels, hello.rate_control)

    @property
    def _session_hello(self) -> Hello:
        if self.hello is None:
            raise ProtocolError("no HELLO yet", ErrorCode.STATE)
        return self.hello

    def _deadline(self, index: int) -> float:
        return self._session_hello.capture_time(index) + self._offset + self.max_delay

    def _on_frame(self, frame: Frame, arrival: float) -> None:
        hello = self._session_hello
        if frame.bits_per_token != hello.bits_per_token:
            raise ProtocolError(f"FRAME packs {frame.bits_per_token}-bit tokens, the session's codebook of "
                                f"{hello.codebook_size} needs {hello.bits_per_token}")
        if frame.level_count > hello.max_levels:
            raise ProtocolError(f"FRAME holds {frame.level_count} levels, HELLO allows at most {hello.max_levels}")
        if int(frame.codes.max()) >= hello.codebook_size:
            raise ProtocolError(f"FRAME holds token {int(frame.codes.max())}, outside the codebook of "
                                f"{hello.codebook_size}")
        if hello.num_samples is not None and frame.last_frame >= _frames_for(hello.num_samples, hello.frame_size):
            raise ProtocolError(f"FRAME {frame.last_frame} lies past the {hello.num_samples} samples HELLO announced")
        gap = frame.first_frame - self.next_frame
        if gap > self.max_gap_frames:
            raise ProtocolError(f"FRAME index jumps from {self.next_frame} to {frame.first_frame} "
                                f"(more than {self.max_gap_frames} frames missing)")
        one_way = arrival - hello.capture_time(frame.last_frame)
        self._offset = min(self._offset, one_way)
        self._queue_delay = max(0.0, one_way - self._offset)
        self._last_arrived = frame.last_frame
        for _ in range(gap):
            self._conceal("lost")
        for j in range(frame.frame_count):
            index = frame.first_frame + j
            if index < self.next_frame:
                if self.records[index].concealed == "deadline":
                    self.records[index].arrived_late = True
                continue
            self._decode_received(frame.codes[:, j], index)

    def _on_end(self, end: End) -> None:
        hello = self._session_hello
        if end.num_frames != _frames_for(end.num_samples, hello.frame_size):
            raise ProtocolError(f"END states {end.num_frames} frames for {end.num_samples} samples; "
                                f"{_frames_for(end.num_samples, hello.frame_size)} frames cover them")
        if hello.num_samples is not None and end.num_samples != hello.num_samples:
            raise ProtocolError(f"END states {end.num_samples} samples, HELLO announced {hello.num_samples}")
        if end.num_frames - self.next_frame > self.max_gap_frames:
            raise ProtocolError(f"END states {end.num_frames} frames, only {self.next_frame} arrived")
        while self.next_frame < end.num_frames:
            self._conceal("lost")
        extra = self.next_frame - end.num_frames  # concealed at their deadline, but the stream had ended
        if any(not r.concealed for r in self.records[end.num_frames:]):
            raise ProtocolError(f"END states {end.num_frames} frames, but frame {self.next_frame - 1} arrived")
        if extra:
            del self.records[end.num_frames:], self.tokens[end.num_frames:], self._unwritten[-extra:]
        self.end = end
        if self.records:  # a last, partial frame was complete when the source ended, before its nominal time
            last = self.records[-1]
            source_end = hello.stream_start_us / 1e6 + end.num_samples / hello.sample_rate
            last.capture_time = min(last.capture_time, source_end)
        held = np.concatenate(self._unwritten) if self._unwritten else np.zeros(0, dtype=np.float32)
        self._write([held[:max(0, end.num_samples - self.samples_written)]])
        self._unwritten = []
        logger.info("stream ended: %s", self.report().summary())

    # -- decoding and concealment -------------------------------------------------------------------------------------
    def _decode_received(self, codes: np.ndarray, index: int) -> None:
        hello = self._session_hello
        levels = codes.shape[0]
        tokens = np.zeros(hello.num_levels, dtype=np.uint16)
        tokens[:levels] = codes
        pcm = self._decode(tokens, levels)
        pcm = _ramp(pcm, self._gain, 1.0)
        self._gain = 1.0
        self._last_tokens, self._last_levels, self._run = tokens, levels, 0
        self._write(self._unwritten)
        self._unwritten = [pcm]
        self.records.append(FrameRecord(index, levels, levels, None, hello.capture_time(index), self.clock()))
        self.tokens.append(tokens)

    def _conceal(self, reason: str) -> None:
        hello = self._session_hello
        self._run += 1
        if self._last_tokens is None:  # nothing received yet: keep the decoder's clock running, output silence
            tokens, levels, gain = np.zeros(hello.num_levels, dtype=np.uint16), 0, 0.0
            self._gain = 0.0
        else:
            tokens, levels = self._last_tokens, max(1, self._last_levels >> self._run)
            gain = min(1.0, max(0.0, 1.0 - (self._run - 2) / 3))
        pcm = _ramp(self._decode(tokens, levels), self._gain, gain)
        self._gain = gain
        index = self.next_frame
        self._unwritten.append(pcm)
        self.records.append(FrameRecord(index, 0, levels, reason, hello.capture_time(index), self.clock()))
        self.tokens.append(tokens.copy())

    def _decode(self, tokens: np.ndarray, levels: int) -> np.ndarray:
        selected = Levels.prefix(levels, self._session_hello.num_levels)
        return self._decoder.push(tokens[:, None], levels=selected)

    @property
    def _frame_limit(self) -> float:
        """Frames in the stream when HELLO stated its length, else infinity."""
        hello = self._session_hello
        return math.inf if hello.num_samples is None else _frames_for(hello.num_samples, hello.frame_size)

    def _conceal_overdue(self, now: float) -> None:
        while self.next_frame < self._frame_limit and self._deadline(self.next_frame) < now:
            self._conceal("deadline")

    def _write(self, parts: Iterable[np.ndarray]) -> None:
        for pcm in parts:
            if pcm.size:
                if self.on_audio is not None:
                    self.on_audio(pcm)
                self.samples_written += pcm.size

    # -- feedback -----------------------------------------------------------------------------------------------------
    def _replies(self, now: float) -> list[bytes]:
        if now < self._next_feedback:
            return []
        self._next_feedback += self.feedback_interval
        if self._next_feedback <= now:  # fell behind (a long decode): keep the cadence from now
            self._next_feedback = now + self.feedback_interval
        return [self._feedback(now).encode()]

    def _feedback(self, now: float) -> Feedback:
        while self._arrivals and self._arrivals[0][0] <= now - self.rate_window:
            self._arrivals.popleft()
        window = max(self.feedback_interval, min(self.rate_window, now - self._hello_arrival))
        delivered = sum(size for _, size in self._arrivals) * 8 / window
        recent = [r for r in self.records[-int(self.rate_window * self.hello.frame_rate) - 1:]
                  if r.output_time > now - self.rate_window] if self.hello else []
        loss = round(1000 * sum(1 for r in recent if r.concealed) / len(recent)) if recent else 0
        received = next((r for r in reversed(self.records) if not r.concealed), None)
        feedback = Feedback(
            sequence=self.feedback_sent, frames_played=self.next_frame,
            frames_concealed=sum(1 for r in self.records if r.concealed), level_count=self._last_levels,
            delivered_bps=min(0xFFFF_FFFF, round(delivered)), loss_permille=loss,
            latency_us=0 if received is None else min(0xFFFF_FFFF, max(0, round(received.latency * 1e6))),
            queue_delay_us=min(0xFFFF_FFFF, round(self._current_queue_delay(now) * 1e6)))
        self.feedback_sent += 1
        if self.on_progress is not None:
            self.on_progress(feedback)
        return feedback


    def _current_queue_delay(self, now: float) -> float:
        """The last FRAME's queueing delay, or more when the next message is overdue (a stalled link shows at
        once, not only when its frames finally arrive)."""
        expected = self._last_arrived + self._batch
        if self.hello is None or self._last_arrived < 0 or expected >= self._frame_limit:
            return self._queue_delay
        overdue = now - self._offset - self.hello.capture_time(expected)
        return max(self._queue_delay, overdue)


def _ramp(pcm: np.ndarray, start: float, stop: float) -> np.ndarray:
    """Multiply by a gain going linearly from `start` to `stop` across the frame (no jump between frames)."""
    if start == stop == 1.0:
        return pcm
    return (pcm * np.linspace(start, stop, pcm.size, endpoint=False, dtype=np.float32)).astype(np.float32)


def _frames_for(num_samples: int, frame_size: int) -> int:
    return -(-num_samples // frame_size)


def check_compatible(hello: Hello, codec: Any) -> None:
    """Raise `ProtocolError(INCOMPATIBLE)` unless `codec` can decode what HELLO describes."""
    problems = []
    for name, theirs, ours in (("sample_rate", hello.sample_rate, codec.sample_rate),
                               ("frame_size", hello.frame_size, codec.frame_size),
                               ("num_levels", hello.num_levels, codec.num_levels),
                               ("codebook_size", hello.codebook_size, codec.codebook_size)):
        if theirs != ours:
            problems.append(f"{name} {theirs} (this receiver's codec has {ours})")
    if hello.weights_sha256 != codec.weights_sha256:
        problems.append(f"weights sha256 {hello.weights_sha256[:16]}… (this receiver decodes with "
                        f"{codec.weights_sha256[:16]}…; start it with the sender's --weights)")
    if hello.codec_config:
        try:
            config = json.loads(hello.codec_config)
        except ValueError:
            problems.append("a codec_config that is not JSON")
        else:
            if config != codec.config.to_dict():
                problems.append("a codec config that differs from this receiver's")
    if problems:
        raise ProtocolError("the sender's codec does not match: " + "; ".join(problems), ErrorCode.INCOMPATIBLE)


class StreamReceiver:
    """Serves one `ReceiverSession` on a WebSocket at ws://host:port (127.0.0.1 unless `allow_remote`).

    Audio goes to `on_audio`; `wait()` returns the `ReceiverReport` once the session ends (END, the sender
    closing, an error, or `idle_timeout` seconds without a message). A second connection while a session runs is
    refused with ERROR(STATE)::

        async with StreamReceiver(codec, port=0, on_audio=writer.write) as receiver:
            ...  # tell the sender receiver.uri
            report = await receiver.wait()
    """

    def __init__(self, codec: Any, *, host: str = "127.0.0.1", port: int = 0, allow_remote: bool = False,
                 idle_timeout: float = 30.0, warmup: bool = True, **session_options: Any) -> None:
        check_listen_host(host, allow_remote)
        self.codec = codec
        self.host, self.port = host, port
        self.idle_timeout = idle_timeout
        self.warmup = warmup
        self.session_options = session_options
        self.session: ReceiverSession | None = None
        self._server: Any = None
        self._done: asyncio.Future[ReceiverReport] | None = None

    @property
    def uri(self) -> str:
        return f"ws://{_uri_host(self.host)}:{self.port}"

    async def __aenter__(self) -> StreamReceiver:
        websockets = _websockets()
        if self.warmup:
            await asyncio.to_thread(_warm_up, self.codec)
        self._done = asyncio.get_running_loop().create_future()
        self._server = await websockets.asyncio.server.serve(
            self._serve, self.host, self.port, max_size=MAX_MESSAGE_BYTES, compression=None).__aenter__()
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("listening on %s", self.uri)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._server.__aexit__(*exc_info)

    async def wait(self, timeout: float | None = None) -> ReceiverReport:
        if self._done is None:
            raise StreamError("use StreamReceiver as an async context manager ('async with') before wait()")
        return await asyncio.wait_for(asyncio.shield(self._done), timeout)

    async def _serve(self, connection: Any) -> None:
        if self._done is None:
            return
        if self.session is not None:
            await _send_error(connection, ErrorCode.STATE, "this receiver is already serving a stream")
            return
        session = self.session = ReceiverSession(self.codec, **self.session_options)
        error: str | None = None
        try:
            await self._run(session, connection)
        except ProtocolError as problem:
            error = str(problem)
            logger.error("closing the stream: %s", problem)
            await _send_error(connection, problem.code, str(problem))
        except (StreamError, TimeoutError) as problem:
            error = str(problem) or "no message for too long"
            logger.error("stream failed: %s", error)
        except Exception as problem:
            error = f"{type(problem).__name__}: {problem}"
            await _send_error(connection, ErrorCode.INTERNAL, error)
            if not self._done.done():
                self._done.set_exception(problem)
            raise
        finally:
            session.finish()
            await connection.close()
        if not self._done.done():
            self._done.set_result(session.report(error))

    async def _run(self, session: ReceiverSession, connection: Any) -> None:
        queue: asyncio.Queue[tuple[Any, float] | None] = asyncio.Queue()
        reader = asyncio.create_task(_read_into(connection, queue))
        last_message = time.time()
        try:
            while not session.ended:
                wakeup = session.next_wakeup()
                timeout = self.idle_timeout if wakeup is None else wakeup - time.time()
                try:  # messages first: a wakeup already due must not starve them
                    item = queue.get_nowait() if not queue.empty() else \
                        await asyncio.wait_for(queue.get(), min(max(timeout, 0.001), self.idle_timeout))
                except TimeoutError:
                    if time.time() - last_message >= self.idle_timeout:
                        raise StreamError(f"no message from the sender for {self.idle_timeout:g} s") from None
                    replies = await asyncio.to_thread(session.tick, time.time())
                else:
                    if item is None:
                        if session.hello is None:
                            raise StreamError("the sender closed the connection before HELLO")
                        raise StreamError("the sender closed the connection before END")
                    data, arrival = item
                    last_message = arrival
                    replies = await asyncio.to_thread(session.handle, data, arrival)
                for reply in replies:
                    with contextlib.suppress(_websockets().exceptions.ConnectionClosed):
                        await connection.send(reply)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def _read_into(connection: Any, queue: asyncio.Queue[tuple[Any, float] | None]) -> None:
    """Stamp each message with its arrival time as it comes off the socket (decoding may lag behind)."""
    with contextlib.suppress(_websockets().exceptions.ConnectionClosed):
        async for data in connection:
            queue.put_nowait((data, time.time()))
    queue.put_nowait(None)


async def _send_error(connection: Any, code: int, text: str) -> None:
    with contextlib.suppress(Exception):
        await connection.send(ErrorMessage(int(code), text[:1000]).encode())


def _warm_up(codec: Any) -> None:
    """One throwaway frame through a fresh encoder and decoder, so the first real frame is not slow."""
    frame = np.zeros(codec.frame_size, dtype=np.float32)
    codes = codec.stream_encoder().push(frame)
    codec.stream_decoder(Levels.prefix(1, codec.num_levels)).push(codes)


def write_received_mimi(session: ReceiverSession, path: str | Path, *, force: bool = False) -> Path | None:
    """Write what a session decoded as a frame-major `.mimi` (atomically; None when no frame was received).

    The levels stored are the largest prefix that every received frame carried (level 0 at least). Concealed
    frames hold the tokens the receiver decoded in their place (the last received frame's, repeated); the header's
    metadata lists them under `stream.concealed_frames` as [first, count] runs, and the levels each received frame
    carried under `stream.levels_received` as [first, count, levels] runs (0 for concealed frames).
    """
    hello = session.hello
    received = [r.levels_received for r in session.records if not r.concealed]
    if hello is None or not received:
        return None
    levels = min(received)
    counts = [r.levels_received for r in session.records]
    metadata = {"stream": {
        "source": "mimistack stream receive", "protocol_version": PROTOCOL_VERSION,
        "concealment": "repeat the last received frame's tokens",
        "concealed_frames": [[start, count] for start, count, value in _runs([r.concealed is not None
                                                                            for r in session.records]) if value],
        "levels_received": [list(run) for run in _runs(counts)],
    }}
    num_samples = session.end.num_samples if session.end else session.samples_written
    with FrameStreamWriter(path, num_levels=hello.num_levels, levels_present=Levels.prefix(levels, hello.num_levels),
                           sample_rate=hello.sample_rate, frame_rate=hello.frame_rate,
                           codebook_size=hello.codebook_size, weights_sha256=hello.weights_sha256,
                           metadata=metadata, force=force) as writer:
        if session.tokens:
            writer.append(np.stack(session.tokens, axis=1))
        writer.close(num_samples)
    return Path(path)


def _runs(values: Sequence[Any]) -> list[tuple[int, int, Any]]:
    """Run-length encoding: [(first index, count, value), ...]."""
    runs: list[tuple[int, int, Any]] = []
    for index, value in enumerate(values):
        if runs and runs[-1][2] == value:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1, value)
        else:
            runs.append((index, 1, value))
    return runs


# -- sources ------------------------------------------------------------------------------------------------------
class AudioSource(Protocol):
    """Audio captured in real time: `start()` returns the wall-clock time of the first sample; `chunks()` then
    yields float32 pcm `[n]` at 24 kHz as it is captured (a file is paced to real time)."""

    num_samples: int | None

    def start(self) -> float: ...

    def chunks(self) -> AsyncIterator[np.ndarray]: ...


class ArraySource:
    """pcm float32 `[N]` played out in real time, one frame every `frame_size / sample_rate` seconds."""

    def __init__(self, pcm: np.ndarray, *, sample_rate: int = 24_000, frame_size: int = 1920) -> None:
        self.pcm = np.ascontiguousarray(pcm, dtype=np.float32).reshape(-1)
        if self.pcm.size == 0:
            raise ValueError("the source holds no samples")
        self.sample_rate, self.frame_size = sample_rate, frame_size
        self.num_samples: int | None = self.pcm.size
        self._start = 0.0

    def start(self) -> float:
        self._start = time.time()
        return self._start

    async def chunks(self) -> AsyncIterator[np.ndarray]:
        for begin in range(0, self.pcm.size, self.frame_size):
            chunk = self.pcm[begin:begin + self.frame_size]
            await _sleep_until(self._start + (begin + chunk.size) / self.sample_rate)
            yield chunk


class FileSource:
    """An audio file (any format `mimistack.audio` reads), resampled to 24 kHz and paced to real time."""

    def __init__(self, path: str | Path, *, sample_rate: int = 24_000, frame_size: int = 1920) -> None:
        from .audio import iter_audio

        self.path = Path(path)
        self.sample_rate, self.frame_size = sample_rate, frame_size
        self._chunks = iter_audio(self.path, chunk_seconds=frame_size / sample_rate, sample_rate=sample_rate)
        self.num_samples: int | None = None
        self._start = 0.0

    def start(self) -> float:
        self._start = time.time()
        return self._start

    async def chunks(self) -> AsyncIterator[np.ndarray]:
        captured = 0
        for chunk in self._chunks:
            captured += chunk.size
            await _sleep_until(self._start + captured / self.sample_rate)
            yield chunk


class MicSource:
    """The default input device through `sounddevice` (PortAudio), resampled to 24 kHz, for `seconds` or until
    `stop()`."""

    def __init__(self, *, seconds: float | None = None, sample_rate: int = 24_000, frame_size: int = 1920,
                 device: str | int | None = None) -> None:
        try:
            import sounddevice
        except (ImportError, OSError) as error:  # OSError: the package is there but PortAudio is not
            raise StreamError(f"--mic needs the sounddevice package and the PortAudio library "
                              f"(pip install sounddevice; apt-get install libportaudio2): {error}") from None
        self._sounddevice = sounddevice
        self.seconds, self.sample_rate, self.frame_size, self.device = seconds, sample_rate, frame_size, device
        self.num_samples: int | None = None
        self._queue: asyncio.Queue[np.ndarray] = asyncio.Queue()
        self._stream: Any = None
        self._stopped = asyncio.Event()

    def stop(self) -> None:
        self._stopped.set()

    def start(self) -> float:
        import soxr

        loop = asyncio.get_running_loop()
        info = self._sounddevice.query_devices(self.device, "input")
        device_rate = int(info["default_samplerate"])
        resampler = soxr.ResampleStream(device_rate, self.sample_rate, 1, dtype="float32")

        def callback(data: np.ndarray, frames: int, when: Any, status: Any) -> None:
            if status:
                logger.warning("microphone: %s", status)
            loop.call_soon_threadsafe(self._queue.put_nowait, resampler.resample_chunk(data[:, 0].copy()))

        self._stream = self._sounddevice.InputStream(samplerate=device_rate, channels=1, dtype="float32",
                                                     device=self.device, callback=callback,
                                                     blocksize=round(device_rate * self.frame_size / self.sample_rate))
        self._stream.start()
        return time.time()

    async def chunks(self) -> AsyncIterator[np.ndarray]:
        captured = 0
        limit = math.inf if self.seconds is None else round(self.seconds * self.sample_rate)
        stop = asyncio.create_task(self._stopped.wait())
        try:
            while captured < limit and not self._stopped.is_set():
                get = asyncio.create_task(self._queue.get())
                done, _ = await asyncio.wait({get, stop}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    break
                chunk = get.result()
                if captured + chunk.size > limit:
                    chunk = chunk[:int(limit - captured)]
                captured += chunk.size
                if chunk.size:
                    yield chunk
        finally:
            stop.cancel()
            self._stream.stop()
            self._stream.close()


async def _sleep_until(wall_time: float) -> None:
    delay = wall_time - time.time()
    if delay > 0:
        await asyncio.sleep(delay)


# -- sender -------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class SenderReport:
    """What a sender session did."""

    hello: Hello
    num_frames: int
    num_samples: int
    codes: np.ndarray
    """Every level the encoder produced, uint16 `[num_levels, num_frames]` (what was sent is a prefix of each)."""
    frame_levels: list[int]
    """Levels sent for each frame, by frame index."""
    plans: list[tuple[int, float, Plan]]
    """(first frame, estimate in bit/s, plan) each time the plan changed."""
    messages: int
    bytes_sent: int
    feedback: list[Feedback]


@dataclasses.dataclass(frozen=True)
class SenderStatus:
    """Passed to `send_stream`'s `on_progress` after every frame."""

    frames: int
    estimate_bps: float
    plan: Plan
    feedback: Feedback | None


async def send_stream(uri: str, codec: Any, source: AudioSource, rate: RateController, *,
                      max_levels: int | None = None, utilization: float = 0.9, max_frames_per_message: int = 16,
                      mode: Literal["window", "moshi"] = "window", open_timeout: float = 10.0,
                      close_timeout: float = 30.0, warmup: bool = True,
                      on_progress: Callable[[SenderStatus], None] | None = None) -> SenderReport:
    """Encode `source` frame by frame and stream it to the receiver at `uri`, level 0 first plus as many levels
    as `rate`'s estimate allows (`plan_frames`). Returns once the receiver has processed END and closed."""
    websockets = _websockets()
    levels_cap = codec.num_levels if max_levels is None else max_levels
    if not 1 <= levels_cap <= codec.num_levels:
        raise ValueError(f"max_levels must lie in 1-{codec.num_levels}, got {max_levels}")
    if warmup:
        await asyncio.to_thread(_warm_up, codec)
    try:
        connection = await websockets.asyncio.client.connect(uri, max_size=MAX_MESSAGE_BYTES, compression=None,
                                                             open_timeout=open_timeout)
    except (OSError, TimeoutError, websockets.exceptions.InvalidHandshake) as error:
        raise StreamError(f"cannot connect to the receiver at {uri}: {error}") from None
    async with connection:
        sender = _Sender(connection, codec, rate, levels_cap, utilization, max_frames_per_message, mode)
        sender.on_progress = on_progress
        return await sender.run(source, close_timeout)


class _Sender:
    def __init__(self, connection: Any, codec: Any, rate: RateController, max_levels: int, utilization: float,
                 max_frames_per_message: int, mode: Literal["window", "moshi"]) -> None:
        self.connection, self.codec, self.rate = connection, codec, rate
        self.max_levels, self.utilization, self.max_batch = max_levels, utilization, max_frames_per_message
        self.mode = mode
        self.width = bits_per_token(codec.codebook_size)
        frame_duration = codec.frame_size / codec.sample_rate
        every_level = (8 * FRAME_HEADER_BYTES + max_levels * self.width) / frame_duration / utilization
        rate.limit(1.25 * every_level)
        self.pending: list[np.ndarray] = []
        self.plan: Plan | None = None
        self.frames = 0
        self.frame_levels: list[int] = []
        self.plans: list[tuple[int, float, Plan]] = []
        self.messages = 0
        self.bytes_sent = 0
        self.feedback: list[Feedback] = []
        self.start = 0.0
        self.failure: StreamError | ProtocolError | None = None
        self.on_progress: Callable[[SenderStatus], None] | None = None

    async def run(self, source: AudioSource, close_timeout: float) -> SenderReport:
        self.start = source.start()
        hello = Hello(num_levels=self.codec.num_levels, max_levels=self.max_levels,
                      sample_rate=self.codec.sample_rate, frame_size=self.codec.frame_size,
                      codebook_size=self.codec.codebook_size, weights_sha256=self.codec.weights_sha256,
                      stream_start_us=round(self.start * 1e6), num_samples=source.num_samples, cache_mode=self.mode,
                      rate_control=self.rate.name, codec_config=self.codec.config.to_json())  # type: ignore[arg-type]
        await self._send(hello)
        listener = asyncio.create_task(self._listen())
        encoder = self.codec.stream_encoder(self.mode)
        try:
            async for chunk in source.chunks():
                self._check_remote()
                codes = await asyncio.to_thread(encoder.push, chunk)
                for j in range(codes.shape[1]):
                    await self._on_frame(codes[:, j])
            for column in encoder.flush().T:
                await self._on_frame(column)
            await self._flush()
            num_samples = encoder.samples_received
            await self._send(End(self.frames, num_samples))
            await asyncio.wait_for(asyncio.shield(listener), close_timeout)
        except TimeoutError:
            raise StreamError(f"the receiver did not close the stream within {close_timeout:g} s of END") from None
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        self._check_remote()
        return SenderReport(hello, self.frames, num_samples, encoder.grid().codes, self.frame_levels, self.plans,
                            self.messages, self.bytes_sent, self.feedback)

    def _check_remote(self) -> None:
        if self.failure is not None:
            raise self.failure

    async def _listen(self) -> None:
        """Read FEEDBACK (and ERROR) until the receiver closes the connection."""
        websockets = _websockets()
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            async for data in self.connection:
                try:
                    message = decode_message(data)
                except ProtocolError as error:
                    self.failure = error
                    await _send_error(self.connection, error.code, str(error))
                    return
                if isinstance(message, Feedback):
                    self.feedback.append(message)
                    self.rate.on_feedback(message, time.time() - self.start)
                elif isinstance(message, ErrorMessage):
                    self.failure = RemoteError(message)
                    return
                else:
                    self.failure = ProtocolError(f"the receiver sent {message.kind.name}; only FEEDBACK and "
                                                 "ERROR go that way", ErrorCode.STATE)
                    await _send_error(self.connection, ErrorCode.STATE, str(self.failure))
                    return

    async def _on_frame(self, codes: np.ndarray) -> None:
        estimate = self.rate.estimate(time.time() - self.start)
        plan = plan_frames(estimate, frame_duration=self.codec.frame_size / self.codec.sample_rate,
                           bits_per_token=self.width, max_levels=self.max_levels, utilization=self.utilization,
                           max_frames_per_message=self.max_batch)
        if plan != self.plan:
            await self._flush()  # frames waiting were planned under the old budget: they go as planned
            self.plan = plan
            self.plans.append((self.frames, estimate, plan))
            await self._send(Bandwidth(self.frames, min(0xFFFF_FFFF, round(estimate)), plan.level_count,
                                       plan.frames_per_message))
        self.pending.append(codes)
        self.frames += 1
        if len(self.pending) >= plan.frames_per_message:
            await self._flush()
        if self.on_progress is not None:
            self.on_progress(SenderStatus(self.frames, estimate, plan, self.feedback[-1] if self.feedback else None))

    async def _flush(self) -> None:
        if not self.pending or self.plan is None:
            return
        levels = self.plan.level_count
        codes = np.stack(self.pending, axis=1)[:levels]
        first = self.frames - len(self.pending)
        self.pending = []
        self.frame_levels.extend([levels] * codes.shape[1])
        await self._send(Frame(first, codes, self.width))

    async def _send(self, message: Message) -> None:
        data = message.encode()
        try:
            await self.connection.send(data)
        except _websockets().exceptions.ConnectionClosed as error:
            self._check_remote()
            raise StreamError(f"the receiver closed the connection: {error}") from None
        self.messages += 1
        self.bytes_sent += len(data)


# -- helpers ------------------------------------------------------------------------------------------------------
def _websockets() -> Any:
    try:
        import websockets
        import websockets.asyncio.client
        import websockets.asyncio.server
        import websockets.exceptions
    except ImportError:
        raise StreamError("streaming needs the websockets package: pip install 'websockets>=13'") from None
    return websockets


def check_listen_host(host: str, allow_remote: bool) -> None:
    """Refuse to listen beyond this machine (anything but loopback) unless `allow_remote`."""
    if allow_remote:
        return
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(f"refusing to listen on {host}: only loopback addresses (127.0.0.1, ::1, localhost) "
                         "unless remote listening is allowed explicitly (--allow-remote)")


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
