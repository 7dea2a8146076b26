"""The rate rule: how many frames go in one FRAME message and how many levels each carries, for a bandwidth; and the
bandwidth estimates a sender plans with.

Sits on `messages` (`Feedback`, `FRAME_HEADER_BYTES`) and `protocol` (`RateControl`); used by `sender` (plans every
frame), `simulate` (the link follows a `BandwidthSchedule`), `cli.stream` (`--bitrate`, `--schedule`, `--feedback`) and
`bench/bench_stream.py`. `plan_frames` is mirrored by `planFrames` in `web/src/client/protocol.ts`.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Protocol

from .messages import FRAME_HEADER_BYTES, Feedback
from .protocol import RateControl


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the sender puts in each FRAME message: `frames_per_message` frames of `level_count` levels."""

    frames_per_message: int
    level_count: int


def plan_frames(
    bandwidth_bps: float,
    *,
    frame_duration: float = 0.08,
    bits_per_token: int = 11,
    max_levels: int = 32,
    utilization: float = 0.9,
    max_frames_per_message: int = 16,
    overhead_bytes: int = FRAME_HEADER_BYTES,
) -> Plan:
    """The most levels that fit the bandwidth, batching frames only when one frame cannot carry level 0.

    Bits available per frame are `bandwidth * utilization * frame_duration`; a message of n frames of L levels
    costs `8 * overhead_bytes + n * L * bits_per_token`. The smallest n (1..max_frames_per_message) that fits at
    least one level is chosen, then the largest L (capped at max_levels). When even the largest batch cannot
    carry level 0, level 0 is sent anyway in the largest batch (the link is then oversubscribed). Mirrored by
    `planFrames` in web/src/client/protocol.ts, operation for operation, so both give the same plan.
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

    name: RateControl

    def estimate(self, elapsed: float) -> float: ...

    def on_feedback(self, feedback: Feedback, elapsed: float) -> None: ...

    def limit(self, max_bps: float) -> None:
        """The most bandwidth the sender can use (every level): an adaptive estimate need not grow beyond it."""


class FixedRate:
    """A bandwidth the user states (`--bitrate`)."""

    name: RateControl = "fixed"

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

    name: RateControl = "schedule"

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

    name: RateControl = "feedback"

    def __init__(
        self,
        initial_bps: float = 1000.0,
        *,
        min_bps: float = 100.0,
        max_bps: float = 20_000.0,
        low_delay: float = 0.1,
        high_delay: float = 0.3,
        growth: float = 1.25,
        backoff: float = 0.85,
        hold: float = 0.5,
    ) -> None:
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
