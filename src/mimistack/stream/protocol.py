"""The protocol's vocabulary (spec: `docs/protocol.md`): its version and limits, message kinds, error codes, and
the errors a session can end with.

The bottom of `stream/`: sits on `errors` and `engine.base` (`CacheMode`); used by every other module of the
package (`messages` first) and by `cli.stream`. Mirrored for the browser by `web/src/client/protocol.ts`.
"""

from __future__ import annotations

import enum
from typing import Literal

from ..engine.base import CacheMode
from ..errors import MimistackError

RateControl = Literal["fixed", "schedule", "feedback"]

PROTOCOL_VERSION = 1
MAX_SAFE_INTEGER = (1 << 53) - 1
"""u64 fields carry at most 2^53 - 1, so that JavaScript numbers hold them exactly."""
UNKNOWN_SAMPLES = (1 << 64) - 1
"""HELLO's num_samples when the source length is not known in advance (a microphone)."""
MAX_MESSAGE_BYTES = 1 << 18
"""Largest message of any kind (a FRAME of 255 frames x 255 levels at 16 bits is 130 059 bytes)."""
CACHE_MODES: tuple[CacheMode, ...] = ("window", "moshi")
RATE_CONTROLS: tuple[RateControl, ...] = ("fixed", "schedule", "feedback")


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


class StreamError(MimistackError, RuntimeError):
    """A streaming session that failed: the peer went away, timed out, or could not be reached."""


class ProtocolError(MimistackError, ValueError):
    """Bytes that are not a valid message, or a message that breaks the session rules. `code` says which."""

    def __init__(self, message: str, code: int = ErrorCode.PROTOCOL) -> None:
        super().__init__(message)
        self.code = int(code)
