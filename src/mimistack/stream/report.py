"""What a receiver session measured: one `FrameRecord` per output frame and the session's `ReceiverReport`.

Sits on `messages` (`Hello`, `Bandwidth`); produced by `session` (`ReceiverSession.report()`), returned by
`receiver` (`StreamReceiver.wait()`), and read by `cli.stream`, the tests and `bench/bench_stream.py`.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from numpy.typing import NDArray

from .messages import Bandwidth, Hello


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

    def latencies(self, received_only: bool = True) -> NDArray[np.float64]:
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
        return (
            f"{frames} frames ({self.num_samples} samples), {frames - lost - deadline} received with "
            f"{self.mean_levels:.1f} levels on average ({token_rate:.0f} bit/s of tokens), {lost} lost and "
            f"{deadline} late frames concealed; latency p50 {_ms(self.latency_percentile(50))}, "
            f"p99 {_ms(self.latency_percentile(99))}" + ("" if self.complete else "; INCOMPLETE: no END")
        )


def _ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.0f} ms"
