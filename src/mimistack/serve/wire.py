"""The stream server's wire format (spec: `docs/protocol.md`, "The stream server"): endpoints, binary messages,
JSON control messages, close codes and limits.

The bottom of `serve/`: sits on `errors` only; used by `hub` (the server side) and `client`. Binary messages are a
kind byte followed by a payload, little-endian:

    client -> server   0x01 PCM    float32 mono samples at the codec's rate, any count
                       0x02 CODES  uint16 tokens, frame-major: n frames of num_levels each
    server -> client   0x01 PCM    u32 frame index, float32 [frame_size] samples of one decoded frame
                       0x02 CODES  u32 frame index, uint16 [num_levels] tokens of one encoded frame
                       0x03 OPUS   u32 frame index, Ogg Opus bytes (a listener that asked for format=opus)

Text messages are JSON objects with a "type": the server's first message is "ready"; a client ends its input with
"end" and may send "levels" (decode and listen); the server says "end" when the last output was sent, and
"error" (with an "error" name and a "message") before it closes a connection for a reason.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import struct
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import MimistackError

SERVER_PROTOCOL = "mimistack-streams/1"


class Kind(enum.IntEnum):
    PCM = 1
    CODES = 2
    OPUS = 3


class Close(enum.IntEnum):
    """WebSocket close codes the server uses (RFC 6455 section 7.4, plus 4004 for "not found")."""

    NORMAL = 1000
    GOING_AWAY = 1001
    UNSUPPORTED = 1003
    INVALID = 1007
    POLICY = 1008
    TOO_BIG = 1009
    INTERNAL = 1011
    TRY_LATER = 1013
    NOT_FOUND = 4004


ERROR_CLOSE: dict[str, Close] = {
    "malformed": Close.UNSUPPORTED,
    "invalid": Close.INVALID,
    "state": Close.POLICY,
    "too_fast": Close.POLICY,
    "too_slow": Close.POLICY,
    "idle": Close.POLICY,
    "too_big": Close.TOO_BIG,
    "capacity": Close.TRY_LATER,
    "not_found": Close.NOT_FOUND,
    "internal": Close.INTERNAL,
    "shutdown": Close.GOING_AWAY,
}
"""Each error name and the close code that follows it."""

_HEADER = struct.Struct("<BI")


class ServeError(MimistackError, RuntimeError):
    """A stream-server request that failed; `error` is one of `ERROR_CLOSE`'s names."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error = error

    @property
    def close_code(self) -> int:
        return int(ERROR_CLOSE.get(self.error, Close.INTERNAL))


@dataclasses.dataclass(frozen=True)
class ServerLimits:
    """What one server admits. `max_streams`: engine slots (an encode stream, a decode stream or an audio
    listener takes one; token listeners and producers take none). `burst_frames` and `rate_factor`: a client
    may send `burst_frames` frames ahead of real time, then at most `rate_factor` times real time.
    `idle_timeout_s`: a sending client that sends nothing for this long is closed. `max_message_bytes`: the
    largest message (bigger ones close with 1009)."""

    max_streams: int = 8
    max_message_bytes: int = 1 << 18
    burst_frames: int = 25
    rate_factor: float = 1.25
    idle_timeout_s: float = 30.0
    max_rooms: int = 64
    max_listeners: int = 256

    def __post_init__(self) -> None:
        for name in ("max_streams", "max_message_bytes", "burst_frames", "max_rooms", "max_listeners"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not self.rate_factor >= 1.0:
            raise ValueError(f"rate_factor must be at least 1.0, got {self.rate_factor!r}")
        if not self.idle_timeout_s > 0:
            raise ValueError(f"idle_timeout_s must be positive, got {self.idle_timeout_s!r}")


# -- binary messages ------------------------------------------------------------------------------------------
def pcm_message(samples: NDArray[np.float32]) -> bytes:
    """Client -> server: pcm to encode."""
    return bytes([Kind.PCM]) + np.ascontiguousarray(samples, dtype="<f4").tobytes()


def codes_message(codes: NDArray[Any]) -> bytes:
    """Client -> server: codes `[num_levels, n]` to decode (or to broadcast, from a room's producer)."""
    array = np.asarray(codes)
    if array.ndim == 1:
        array = array[:, None]
    return bytes([Kind.CODES]) + np.ascontiguousarray(array.T, dtype="<u2").tobytes()


def frame_message(kind: Kind, index: int, payload: bytes) -> bytes:
    """Server -> client: one frame of output."""
    return _HEADER.pack(int(kind), index) + payload


def parse_client_message(data: bytes, num_levels: int) -> tuple[Kind, NDArray[Any]]:
    """A client's binary message -> (kind, samples float32 `[n]` or codes int64 `[num_levels, n]`)."""
    if not data:
        raise ServeError("malformed", "empty binary message")
    try:
        kind = Kind(data[0])
    except ValueError:
        raise ServeError("malformed", f"unknown message kind {data[0]}") from None
    body = data[1:]
    if kind == Kind.PCM:
        if len(body) % 4:
            raise ServeError(
                "malformed", f"a PCM message holds float32 samples: {len(body)} bytes is not a multiple of 4"
            )
        samples = np.frombuffer(body, dtype="<f4").astype(np.float32)
        if not np.isfinite(samples).all():
            raise ServeError("invalid", "pcm holds NaN or infinite samples")
        return kind, samples
    if kind == Kind.CODES:
        width = 2 * num_levels
        if len(body) % width:
            raise ServeError("malformed", f"a CODES message holds frames of {num_levels} uint16: {len(body)} bytes")
        codes = np.frombuffer(body, dtype="<u2").reshape(-1, num_levels).T.astype(np.int64)
        return kind, codes
    raise ServeError("malformed", "clients send PCM or CODES messages, not OPUS")


def parse_server_message(data: bytes) -> tuple[Kind, int, bytes]:
    """A server's binary message -> (kind, frame index, payload)."""
    if len(data) < _HEADER.size:
        raise ServeError("malformed", f"a server message is at least {_HEADER.size} bytes, got {len(data)}")
    kind, index = _HEADER.unpack_from(data)
    return Kind(kind), int(index), data[_HEADER.size :]


# -- text messages ----------------------------------------------------------------------------------------------
def control(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, **fields}, separators=(",", ":"))


def parse_control(text: str) -> dict[str, Any]:
    try:
        message = json.loads(text)
    except json.JSONDecodeError as error:
        raise ServeError("malformed", f"a text message must be a JSON object: {error}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ServeError("malformed", 'a text message must be a JSON object with a "type"')
    return message
