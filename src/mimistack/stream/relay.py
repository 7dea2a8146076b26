"""A relay that both ends of a stream connect to (`StreamRelay`, `mimistack stream relay`): a sender at `/send/NAME`,
its receiver at `/receive/NAME`, downstream messages dropped and paced as by `LossyRelay`.

The protocol's receiver is a WebSocket server, but a browser can only be a WebSocket client, so a page cannot be
sent to directly; through the relay, both ends are clients. Sits on `simulate` (`SimulatedLink`, `RelayStats`), `net`
(listening, the loopback rule, ERROR replies), `messages` (`Hello`), `rate` (`BandwidthSchedule`) and `protocol`; used
by `cli.stream` (`mimistack stream relay`), `tests/test_relay.py` and `tests/test_web_progressive.py`. The rules are in
docs/protocol.md ("The relay").
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import math
import random
import re
import struct
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .messages import FRAME_HEADER_BYTES, Hello
from .net import Listening, check_listen_host, connection_closed, send_error
from .protocol import ErrorCode, MessageKind, ProtocolError
from .rate import BandwidthSchedule
from .simulate import RelayStats, SimulatedLink

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection
    from websockets.typing import Data

_PATH = re.compile(r"^/(send|receive)/([A-Za-z0-9._-]{1,64})$")
USAGE = "the relay serves /send/NAME (one sender) and /receive/NAME (one receiver); NAME is 1-64 of A-Z a-z 0-9 . _ -"


@dataclasses.dataclass
class RelaySession:
    """One stream through the relay: what it dropped and delivered (`stats`), and how it ended."""

    name: str
    stats: RelayStats = dataclasses.field(default_factory=RelayStats)
    held_messages: int = 0
    """Messages the sender sent before the receiver joined (held, then delivered)."""
    upstream_messages: int = 0
    """Messages from the receiver (FEEDBACK, ERROR) forwarded to the sender."""
    error: str | None = None
    """Why the relay ended the session early (no receiver or no sender in time, too much held), or None."""


class _Channel:
    """The relay's state for one NAME: the two connections, the downstream queue and the simulated link."""

    def __init__(self, name: str, seed: int) -> None:
        self.session = RelaySession(name)
        self.random = random.Random(seed)
        self.sender: ServerConnection | None = None
        self.receiver: ServerConnection | None = None
        self.sender_joined = asyncio.Event()
        self.receiver_joined = asyncio.Event()
        self.queue: asyncio.Queue[tuple[float, Data] | None] = asyncio.Queue()
        self.held_bytes = 0
        self.link: SimulatedLink | None = None
        self.last_delivery = -math.inf
        self.ends = 0


class StreamRelay(Listening):
    """A WebSocket relay on 127.0.0.1 (unless `allow_remote`) that senders and receivers both connect to.

    A sender connects to `/send/NAME` and speaks the protocol as to a receiver; one receiver connects to
    `/receive/NAME` and reads what a receiver reads, answering FEEDBACK. Downstream, every FRAME message is dropped
    with probability `loss` (a `random.Random(seed)` per stream, so a stream's drops depend only on the seed and its
    messages), and the rest are paced through a `SimulatedLink` following `schedule` (None: no bottleneck), then
    delayed by `delay` seconds; a FRAME that would wait more than `max_queue_delay` seconds is dropped. Control
    messages are never dropped and keep their place. Upstream messages go to the sender at once.

    The first to arrive waits for the other, `hold` seconds at most: a sender's messages go through the loss and
    the link as they arrive and are held (up to `max_held_bytes`) until the receiver joins, then delivered at
    once in order. A second sender or a second receiver for a NAME is refused with ERROR(STATE); once both ends of a
    stream have gone, the NAME is free again. Browsers' connections are accepted only from pages on loopback origins
    unless `allow_remote`. Finished streams are listed in `sessions`::

        async with StreamRelay(schedule=BandwidthSchedule.parse("0:200,2:4400"), loss=0.1) as relay:
            await send_stream(relay.uri + "/send/demo", codec, source, rate)  # the receiver reads /receive/demo
    """

    def __init__(
        self,
        *,
        schedule: BandwidthSchedule | None = None,
        loss: float = 0.0,
        seed: int = 0,
        delay: float = 0.0,
        max_queue_delay: float = 2.0,
        hold: float = 60.0,
        max_held_bytes: int = 8 << 20,
        host: str = "127.0.0.1",
        port: int = 0,
        allow_remote: bool = False,
        on_session_end: Callable[[RelaySession], None] | None = None,
    ) -> None:
        if not 0 <= loss < 1:
            raise ValueError(f"loss must lie in [0, 1), got {loss}")
        for name, value in (("delay", delay), ("max_queue_delay", max_queue_delay)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be 0 or more seconds, got {value}")
        if not (math.isfinite(hold) and hold > 0):
            raise ValueError(f"hold must be a positive number of seconds, got {hold}")
        if max_held_bytes < 1:
            raise ValueError(f"max_held_bytes must be positive, got {max_held_bytes}")
        check_listen_host(host, allow_remote)
        self.schedule, self.loss, self.seed, self.delay = schedule, loss, seed, delay
        self.max_queue_delay, self.hold, self.max_held_bytes = max_queue_delay, hold, max_held_bytes
        self.host, self.port, self.allow_remote = host, port, allow_remote
        self.on_session_end = on_session_end
        self.channels: dict[str, _Channel] = {}
        self.sessions: list[RelaySession] = []
        self._changed = asyncio.Condition()

    async def wait_receiver(self, name: str, timeout: float | None = None) -> None:
        """Return once a receiver is connected to /receive/`name` (for tests: start the sender after it)."""

        def joined() -> bool:
            channel = self.channels.get(name)
            return channel is not None and channel.receiver is not None

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(joined), timeout)

    async def wait_session(self, name: str, timeout: float | None = None) -> RelaySession:
        """The first finished session for `name` (waiting for it to finish)."""

        def found() -> RelaySession | None:
            return next((s for s in self.sessions if s.name == name), None)

        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: found() is not None), timeout)
        session = found()
        assert session is not None
        return session

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- connections ----------------------------------------------------------------------------------------------
    async def _handle(self, connection: ServerConnection) -> None:
        request = connection.request
        path = urlsplit(request.path if request else "/").path
        origin = request.headers.get("Origin") if request else None
        if origin is not None and not self.allow_remote and not _loopback_origin(origin):
            await _refuse(connection, ErrorCode.STATE, f"refused: a page from {origin} (only loopback pages)")
            return
        match = _PATH.match(path)
        if match is None:
            await _refuse(connection, ErrorCode.PROTOCOL, f"no such path {path!r}: {USAGE}")
            return
        role, name = match.groups()
        channel = self.channels.get(name)
        if channel is None:
            channel = self.channels[name] = _Channel(name, self.seed)
        if role == "send":
            if channel.sender is not None:
                await _refuse(connection, ErrorCode.STATE, f"stream {name!r} already has a sender")
                return
            channel.sender = connection
            channel.sender_joined.set()
            await self._notify()
            await self._run_sender(channel, connection)
        else:
            if channel.receiver is not None:
                await _refuse(
                    connection,
                    ErrorCode.STATE,
                    f"stream {name!r} already has a receiver (one per stream: its FEEDBACK steers the sender)",
                )
                return
            channel.receiver = connection
            channel.receiver_joined.set()
            await self._notify()
            await self._run_receiver(channel, connection)
        await self._end(channel)

    async def _end(self, channel: _Channel) -> None:
        """Each side calls this when its connection is done; the session ends with the last side that joined."""
        channel.ends += 1
        if channel.ends < (channel.sender is not None) + (channel.receiver is not None):
            return
        if self.channels.get(channel.session.name) is channel:
            del self.channels[channel.session.name]
        self.sessions.append(channel.session)
        if self.on_session_end is not None:
            self.on_session_end(channel.session)
        await self._notify()

    async def _run_sender(self, channel: _Channel, connection: ServerConnection) -> None:
        delivery = asyncio.create_task(self._deliver(channel))
        closed = connection_closed()
        try:
            with contextlib.suppress(closed):
                async for data in connection:
                    if not channel.receiver_joined.is_set():
                        channel.session.held_messages += 1
                        channel.held_bytes += len(data)
                        if channel.held_bytes > self.max_held_bytes:
                            self._fail(channel, f"held {channel.held_bytes} bytes and no receiver joined")
                            await send_error(connection, ErrorCode.STATE, f"{channel.session.error}: {_hint(channel)}")
                            delivery.cancel()
                            break
                    self._admit(channel, data, time.time())
        finally:
            channel.queue.put_nowait(None)
        with contextlib.suppress(asyncio.CancelledError):
            await delivery
        await connection.close()
        if delivery.cancelled() and channel.receiver is not None:
            await channel.receiver.close()

    async def _run_receiver(self, channel: _Channel, connection: ServerConnection) -> None:
        if not channel.sender_joined.is_set():
            waiting = asyncio.ensure_future(channel.sender_joined.wait())
            gone = asyncio.ensure_future(connection.wait_closed())
            await asyncio.wait((waiting, gone), timeout=self.hold, return_when=asyncio.FIRST_COMPLETED)
            hung_up = gone.done()
            waiting.cancel()
            gone.cancel()
            if not channel.sender_joined.is_set():
                if not hung_up:
                    self._fail(channel, f"no sender connected to /send/{channel.session.name} within {self.hold:g} s")
                    await _refuse(connection, ErrorCode.STATE, channel.session.error or "")
                return
        with contextlib.suppress(connection_closed()):
            async for data in connection:
                channel.session.upstream_messages += 1
                sender = channel.sender
                if sender is not None:
                    with contextlib.suppress(connection_closed()):
                        await sender.send(data)
        if channel.sender is not None:  # the receiver hung up (after END, or early): the sender's session is over
            await channel.sender.close()

    # -- downstream -----------------------------------------------------------------------------------------------
    def _admit(self, channel: _Channel, data: Data, now: float) -> None:
        """Queue one message from the sender with its delivery time, or drop it (a FRAME only)."""
        raw = data if isinstance(data, bytes) else b""  # text is not protocol: relayed as it is
        kind = raw[0] if raw else None
        if kind == MessageKind.HELLO and channel.link is None and self.schedule is not None:
            with contextlib.suppress(ProtocolError):
                channel.link = SimulatedLink(self.schedule, Hello.decode(raw).stream_start_us / 1e6)
        if kind == MessageKind.FRAME and len(raw) >= FRAME_HEADER_BYTES:
            stats = channel.session.stats
            stats.frame_messages += 1
            first, count = struct.unpack_from("<IB", raw, 2)
            frames = range(first, first + count)
            if channel.random.random() < self.loss:
                stats.dropped_frames.extend(frames)
                return
            at = now + self.delay
            if self.schedule is not None:
                link = channel.link
                if link is None:
                    link = channel.link = SimulatedLink(self.schedule, now)
                if max(now, link.busy_until) - now > self.max_queue_delay:
                    stats.queue_dropped_frames.extend(frames)
                    return
                at = link.transmit(8 * len(raw), now) + self.delay
            channel.last_delivery = max(channel.last_delivery, at)
        else:
            channel.last_delivery = max(channel.last_delivery, now + self.delay)
        channel.queue.put_nowait((channel.last_delivery, data))

    async def _deliver(self, channel: _Channel) -> None:
        """Wait for the receiver (`hold` seconds at most), then send it every queued message at its time."""
        try:
            await asyncio.wait_for(channel.receiver_joined.wait(), self.hold)
        except TimeoutError:
            self._fail(channel, f"no receiver connected to /receive/{channel.session.name} within {self.hold:g} s")
            if channel.sender is not None:
                await send_error(channel.sender, ErrorCode.STATE, channel.session.error or "")
                await channel.sender.close()
            return
        receiver = channel.receiver
        assert receiver is not None
        closed = connection_closed()
        stats = channel.session.stats
        while (item := await channel.queue.get()) is not None:
            at, data = item
            wait = at - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                await receiver.send(data)
            except closed:
                break
            stats.delivered_messages += 1
            stats.delivered_bytes += len(data)
        else:  # the sender went away and everything it sent was delivered: the receiver's stream is over too
            await receiver.close()

    def _fail(self, channel: _Channel, error: str) -> None:
        """Record why the session ends early; the NAME is free for a new stream at once."""
        if channel.session.error is None:
            channel.session.error = error
        if self.channels.get(channel.session.name) is channel:
            del self.channels[channel.session.name]


def _hint(channel: _Channel) -> str:
    return f"connect a receiver to /receive/{channel.session.name} before sending"


async def _refuse(connection: ServerConnection, code: int, text: str) -> None:
    await send_error(connection, code, text)
    await connection.close(1008, text[:120])


def _loopback_origin(origin: str) -> bool:
    """A page served from this machine (http://127.0.0.1:8765, http://localhost, ...), or a non-web origin."""
    if origin == "null":
        return False
    host = urlsplit(origin).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
