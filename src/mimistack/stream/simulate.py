"""The loopback network simulator: a paced bottleneck link following a bandwidth schedule (`SimulatedLink`) inside a
WebSocket relay that drops FRAME messages at random, seeded (`LossyRelay`).

Sits on `protocol` (message kinds), `messages` (`Hello`), `rate` (`BandwidthSchedule`) and `net` (sockets, the loopback
rule); used by `tests/test_stream.py` and `bench/bench_stream.py` between a `sender` and a `receiver`. It reads only the
header bytes it needs, so it relays what it cannot parse unchanged, as a network would.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import random
import struct
import time
from typing import TYPE_CHECKING

from .messages import FRAME_HEADER_BYTES, Hello
from .net import Listening, check_listen_host, connect, connection_closed
from .protocol import MessageKind, ProtocolError, StreamError
from .rate import BandwidthSchedule

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection
    from websockets.asyncio.connection import Connection
    from websockets.asyncio.server import ServerConnection
    from websockets.typing import Data


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


class LossyRelay(Listening):
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

    def __init__(
        self,
        target_uri: str,
        schedule: BandwidthSchedule,
        *,
        loss: float = 0.1,
        seed: int = 0,
        delay: float = 0.0,
        max_queue_delay: float = 2.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
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

    async def _handle(self, incoming: ServerConnection) -> None:
        closed = connection_closed()
        async with await connect(self.target_uri) as outgoing:
            queue: asyncio.Queue[tuple[float, Data] | None] = asyncio.Queue()
            deliver = asyncio.create_task(self._deliver(queue, outgoing))
            upstream = asyncio.create_task(_pipe(outgoing, incoming, close=True))
            link: SimulatedLink | None = None
            last_delivery = -math.inf
            with contextlib.suppress(closed):
                async for data in incoming:
                    now = time.time()
                    raw = data if isinstance(data, bytes) else b""  # text is not protocol: relayed as it is
                    kind = raw[0] if raw else None
                    if kind == MessageKind.HELLO and link is None:
                        with contextlib.suppress(ProtocolError):
                            link = SimulatedLink(self.schedule, Hello.decode(raw).stream_start_us / 1e6)
                    if kind == MessageKind.FRAME and len(raw) >= FRAME_HEADER_BYTES:
                        at = self._admit(raw, now, link or SimulatedLink(self.schedule, now))
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

    async def _deliver(self, queue: asyncio.Queue[tuple[float, Data] | None], outgoing: ClientConnection) -> None:
        closed = connection_closed()
        while (item := await queue.get()) is not None:
            at, data = item
            wait = at - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                await outgoing.send(data)
            except closed:
                return
            self.stats.delivered_messages += 1
            self.stats.delivered_bytes += len(data)


async def _pipe(source: Connection, target: Connection, *, close: bool = False) -> None:
    """Forward every message from `source` to `target`; then, if `close`, hang up on `target` too."""
    with contextlib.suppress(connection_closed()):
        async for data in source:
            await target.send(data)
    if close:
        await target.close()
