"""The sender: encode a real-time source frame by frame and stream it to a receiver, level 0 first plus as many
levels as the bandwidth estimate allows (`send_stream`).

Sits on `messages` and `protocol`, `rate` (`plan_frames`, `RateController`), `sources` (`AudioSource`), `net`
(connecting, ERROR replies, warm-up), `container` (`bits_per_token`) and `codec` (`Codec.stream_encoder()`, types
only); used by `cli.stream` (`mimistack stream send`), the tests and `bench/bench_stream.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from ..engine.base import CacheMode
from ..mimifile import bits_per_token
from .messages import (
    FRAME_HEADER_BYTES,
    Bandwidth,
    End,
    ErrorMessage,
    Feedback,
    Frame,
    Hello,
    Message,
    RemoteError,
    decode_message,
)
from .net import connect, connect_errors, connection_closed, require_websockets, send_error, warm_up
from .protocol import ErrorCode, ProtocolError, StreamError
from .rate import Plan, RateController, plan_frames
from .sources import AudioSource

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

    from ..codec import Codec


@dataclasses.dataclass
class SenderReport:
    """What a sender session did."""

    hello: Hello
    num_frames: int
    num_samples: int
    codes: NDArray[np.uint16]
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


async def send_stream(
    uri: str,
    codec: Codec,
    source: AudioSource,
    rate: RateController,
    *,
    max_levels: int | None = None,
    utilization: float = 0.9,
    max_frames_per_message: int = 16,
    mode: CacheMode = "window",
    open_timeout: float = 10.0,
    close_timeout: float = 30.0,
    warmup: bool = True,
    on_progress: Callable[[SenderStatus], None] | None = None,
) -> SenderReport:
    """Encode `source` frame by frame and stream it to the receiver at `uri`, level 0 first plus as many levels
    as `rate`'s estimate allows (`plan_frames`). Returns once the receiver has processed END and closed."""
    require_websockets()
    levels_cap = codec.num_levels if max_levels is None else max_levels
    if not 1 <= levels_cap <= codec.num_levels:
        raise ValueError(f"max_levels must lie in 1-{codec.num_levels}, got {max_levels}")
    if warmup:
        await asyncio.to_thread(warm_up, codec)
    try:
        connection = await connect(uri, open_timeout)
    except connect_errors() as error:
        raise StreamError(f"cannot connect to the receiver at {uri}: {error}") from None
    async with connection:
        sender = _Sender(connection, codec, rate, levels_cap, utilization, max_frames_per_message, mode)
        sender.on_progress = on_progress
        return await sender.run(source, close_timeout)


class _Sender:
    def __init__(
        self,
        connection: ClientConnection,
        codec: Codec,
        rate: RateController,
        max_levels: int,
        utilization: float,
        max_frames_per_message: int,
        mode: CacheMode,
    ) -> None:
        self.connection, self.codec, self.rate = connection, codec, rate
        self.max_levels, self.utilization, self.max_batch = max_levels, utilization, max_frames_per_message
        self.mode = mode
        self.width = bits_per_token(codec.codebook_size)
        frame_duration = codec.frame_size / codec.sample_rate
        every_level = (8 * FRAME_HEADER_BYTES + max_levels * self.width) / frame_duration / utilization
        rate.limit(1.25 * every_level)
        self.pending: list[NDArray[np.uint16]] = []
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
        hello = Hello(
            num_levels=self.codec.num_levels,
            max_levels=self.max_levels,
            sample_rate=self.codec.sample_rate,
            frame_size=self.codec.frame_size,
            codebook_size=self.codec.codebook_size,
            weights_sha256=self.codec.weights_sha256,
            stream_start_us=round(self.start * 1e6),
            num_samples=source.num_samples,
            cache_mode=self.mode,
            rate_control=self.rate.name,
            codec_config=self.codec.config.to_json(),
        )
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
        return SenderReport(
            hello,
            self.frames,
            num_samples,
            encoder.grid().codes,
            self.frame_levels,
            self.plans,
            self.messages,
            self.bytes_sent,
            self.feedback,
        )

    def _check_remote(self) -> None:
        if self.failure is not None:
            raise self.failure

    async def _listen(self) -> None:
        """Read FEEDBACK (and ERROR) until the receiver closes the connection."""
        with contextlib.suppress(connection_closed()):
            async for data in self.connection:
                try:
                    message = decode_message(data)
                except ProtocolError as error:
                    self.failure = error
                    await send_error(self.connection, error.code, str(error))
                    return
                if isinstance(message, Feedback):
                    self.feedback.append(message)
                    self.rate.on_feedback(message, time.time() - self.start)
                elif isinstance(message, ErrorMessage):
                    self.failure = RemoteError(message)
                    return
                else:
                    self.failure = ProtocolError(
                        f"the receiver sent {message.kind.name}; only FEEDBACK and ERROR go that way", ErrorCode.STATE
                    )
                    await send_error(self.connection, ErrorCode.STATE, str(self.failure))
                    return

    async def _on_frame(self, codes: NDArray[np.uint16]) -> None:
        estimate = self.rate.estimate(time.time() - self.start)
        plan = plan_frames(
            estimate,
            frame_duration=self.codec.frame_size / self.codec.sample_rate,
            bits_per_token=self.width,
            max_levels=self.max_levels,
            utilization=self.utilization,
            max_frames_per_message=self.max_batch,
        )
        if plan != self.plan:
            await self._flush()  # frames waiting were planned under the old budget: they go as planned
            self.plan = plan
            self.plans.append((self.frames, estimate, plan))
            bandwidth = Bandwidth(
                self.frames, min(0xFFFF_FFFF, round(estimate)), plan.level_count, plan.frames_per_message
            )
            await self._send(bandwidth)
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
        except connection_closed() as error:
            self._check_remote()
            raise StreamError(f"the receiver closed the connection: {error}") from None
        self.messages += 1
        self.bytes_sent += len(data)
