"""The receiving end of one stream, without any I/O (`ReceiverSession`): messages and their arrival times in,
decoded audio and replies out, lost and late frames concealed.

Sits on `messages`, `protocol` (errors), `report` (what it records), `levels` and `codec`
(`Codec.stream_decoder()`, types only); used by
`receiver` (which serves a session on a WebSocket and writes its `.mimi`), `cli.stream` and the tests, which drive
it with crafted messages and a fake clock. The concealment rules are specified in `docs/protocol.md`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypedDict

import numpy as np
from numpy.typing import NDArray

from ..levels import Levels
from .messages import Bandwidth, End, ErrorMessage, Feedback, Frame, Hello, RemoteError, decode_message
from .protocol import ErrorCode, ProtocolError
from .report import FrameRecord, ReceiverReport

if TYPE_CHECKING:
    from ..codec import Codec, StreamDecoder

logger = logging.getLogger(__name__)


class SessionOptions(TypedDict, total=False):
    """`ReceiverSession`'s keyword options, as `StreamReceiver` passes them on."""

    max_delay: float
    feedback_interval: float
    rate_window: float
    max_gap_frames: int
    on_audio: Callable[[NDArray[np.float32]], None] | None
    on_progress: Callable[[Feedback], None] | None
    clock: Callable[[], float]


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

    def __init__(
        self,
        codec: Codec,
        *,
        max_delay: float = 3.0,
        feedback_interval: float = 0.25,
        rate_window: float = 1.0,
        max_gap_frames: int = 1000,
        on_audio: Callable[[NDArray[np.float32]], None] | None = None,
        on_progress: Callable[[Feedback], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
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
        self.tokens: list[NDArray[np.uint16]] = []
        """Per output frame: the uint16 `[num_levels]` tokens decoded (received levels, or the concealment's)."""
        self.samples_written = 0
        self.bytes_received = 0
        self.feedback_sent = 0
        self._decoder: StreamDecoder | None = None
        self._arrivals: deque[tuple[float, int]] = deque()
        self._unwritten: list[NDArray[np.float32]] = []
        self._offset = math.inf
        self._queue_delay = 0.0
        self._last_arrived = -1
        self._batch = 1
        self._last_tokens: NDArray[np.uint16] | None = None
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

    def handle(self, data: bytes | bytearray | memoryview | str, arrival: float) -> list[bytes]:
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
            logger.info(
                "sender plan from frame %d: %d bit/s, %d levels, %d frames per message",
                message.from_frame,
                message.estimate_bps,
                message.level_count,
                message.frames_per_message,
            )
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
        return ReceiverReport(
            self.hello,
            list(self.records),
            self.samples_written,
            self.ended,
            self.bytes_received,
            list(self.bandwidth_messages),
            self.feedback_sent,
            error,
        )

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
        logger.info(
            "stream from %s: %d Hz, %d-sample frames, up to %d of %d levels, rate control %s",
            hello.weights_sha256[:12],
            hello.sample_rate,
            hello.frame_size,
            hello.max_levels,
            hello.num_levels,
            hello.rate_control,
        )

    @property
    def _session_hello(self) -> Hello:
        if self.hello is None:
            raise ProtocolError("no HELLO yet", ErrorCode.STATE)
        return self.hello

    def _frames_covering(self, num_samples: int) -> int:
        # HELLO's frame size equals the codec's (check_compatible), so the codec's config counts the frames.
        return self.codec.config.num_frames(num_samples)

    def _deadline(self, index: int) -> float:
        return self._session_hello.capture_time(index) + self._offset + self.max_delay

    def _on_frame(self, frame: Frame, arrival: float) -> None:
        hello = self._session_hello
        if frame.bits_per_token != hello.bits_per_token:
            raise ProtocolError(
                f"FRAME packs {frame.bits_per_token}-bit tokens, the session's codebook of "
                f"{hello.codebook_size} needs {hello.bits_per_token}"
            )
        if frame.level_count > hello.max_levels:
            raise ProtocolError(f"FRAME holds {frame.level_count} levels, HELLO allows at most {hello.max_levels}")
        if int(frame.codes.max()) >= hello.codebook_size:
            raise ProtocolError(
                f"FRAME holds token {int(frame.codes.max())}, outside the codebook of {hello.codebook_size}"
            )
        if hello.num_samples is not None and frame.last_frame >= self._frames_covering(hello.num_samples):
            raise ProtocolError(f"FRAME {frame.last_frame} lies past the {hello.num_samples} samples HELLO announced")
        gap = frame.first_frame - self.next_frame
        if gap > self.max_gap_frames:
            raise ProtocolError(
                f"FRAME index jumps from {self.next_frame} to {frame.first_frame} "
                f"(more than {self.max_gap_frames} frames missing)"
            )
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
        covering = self._frames_covering(end.num_samples)
        if end.num_frames != covering:
            raise ProtocolError(
                f"END states {end.num_frames} frames for {end.num_samples} samples; {covering} frames cover them"
            )
        if hello.num_samples is not None and end.num_samples != hello.num_samples:
            raise ProtocolError(f"END states {end.num_samples} samples, HELLO announced {hello.num_samples}")
        if end.num_frames - self.next_frame > self.max_gap_frames:
            raise ProtocolError(f"END states {end.num_frames} frames, only {self.next_frame} arrived")
        while self.next_frame < end.num_frames:
            self._conceal("lost")
        extra = self.next_frame - end.num_frames  # concealed at their deadline, but the stream had ended
        if any(not r.concealed for r in self.records[end.num_frames :]):
            raise ProtocolError(f"END states {end.num_frames} frames, but frame {self.next_frame - 1} arrived")
        if extra:
            del self.records[end.num_frames :], self.tokens[end.num_frames :], self._unwritten[-extra:]
        self.end = end
        if self.records:  # a last, partial frame was complete when the source ended, before its nominal time
            last = self.records[-1]
            source_end = hello.stream_start_us / 1e6 + end.num_samples / hello.sample_rate
            last.capture_time = min(last.capture_time, source_end)
        held = np.concatenate(self._unwritten) if self._unwritten else np.zeros(0, dtype=np.float32)
        self._write([held[: max(0, end.num_samples - self.samples_written)]])
        self._unwritten = []
        logger.info("stream ended: %s", self.report().summary())

    # -- decoding and concealment ---------------------------------------------------------------------------------
    def _decode_received(self, codes: NDArray[np.uint16], index: int) -> None:
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

    def _decode(self, tokens: NDArray[np.uint16], levels: int) -> NDArray[np.float32]:
        if self._decoder is None:
            raise ProtocolError("no HELLO yet", ErrorCode.STATE)
        selected = Levels.prefix(levels, self._session_hello.num_levels)
        return self._decoder.push(tokens[:, None], levels=selected)

    @property
    def _frame_limit(self) -> float:
        """Frames in the stream when HELLO stated its length, else infinity."""
        hello = self._session_hello
        return math.inf if hello.num_samples is None else self._frames_covering(hello.num_samples)

    def _conceal_overdue(self, now: float) -> None:
        while self.next_frame < self._frame_limit and self._deadline(self.next_frame) < now:
            self._conceal("deadline")

    def _write(self, parts: Iterable[NDArray[np.float32]]) -> None:
        for pcm in parts:
            if pcm.size:
                if self.on_audio is not None:
                    self.on_audio(pcm)
                self.samples_written += pcm.size

    # -- feedback -------------------------------------------------------------------------------------------------
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
        recent = (
            [
                r
                for r in self.records[-int(self.rate_window * self.hello.frame_rate) - 1 :]
                if r.output_time > now - self.rate_window
            ]
            if self.hello
            else []
        )
        loss = round(1000 * sum(1 for r in recent if r.concealed) / len(recent)) if recent else 0
        received = next((r for r in reversed(self.records) if not r.concealed), None)
        feedback = Feedback(
            sequence=self.feedback_sent,
            frames_played=self.next_frame,
            frames_concealed=sum(1 for r in self.records if r.concealed),
            level_count=self._last_levels,
            delivered_bps=min(0xFFFF_FFFF, round(delivered)),
            loss_permille=loss,
            latency_us=0 if received is None else min(0xFFFF_FFFF, max(0, round(received.latency * 1e6))),
            queue_delay_us=min(0xFFFF_FFFF, round(self._current_queue_delay(now) * 1e6)),
        )
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


def _ramp(pcm: NDArray[np.float32], start: float, stop: float) -> NDArray[np.float32]:
    """Multiply by a gain going linearly from `start` to `stop` across the frame (no jump between frames)."""
    if start == stop == 1.0:
        return pcm
    return (pcm * np.linspace(start, stop, pcm.size, endpoint=False, dtype=np.float32)).astype(np.float32)


def check_compatible(hello: Hello, codec: Codec) -> None:
    """Raise `ProtocolError(INCOMPATIBLE)` unless `codec` can decode what HELLO describes."""
    problems = []
    for name, theirs, ours in (
        ("sample_rate", hello.sample_rate, codec.sample_rate),
        ("frame_size", hello.frame_size, codec.frame_size),
        ("num_levels", hello.num_levels, codec.num_levels),
        ("codebook_size", hello.codebook_size, codec.codebook_size),
    ):
        if theirs != ours:
            problems.append(f"{name} {theirs} (this receiver's codec has {ours})")
    if hello.weights_sha256 != codec.weights_sha256:
        problems.append(
            f"weights sha256 {hello.weights_sha256[:16]}… (this receiver decodes with "
            f"{codec.weights_sha256[:16]}…; start it with the sender's --weights)"
        )
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
