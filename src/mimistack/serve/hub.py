"""The stream server's core: one stream pool for every connection, stepped as soon as frames wait, and rooms.

Sits on `serve.wire` (the wire format), `pool` (through `Codec.stream_pool`), `stream.messages` (the progressive
protocol, for token listeners) and `codec`; used by `serve.websocket` (a `websockets` server) and
`serve.rayserve` (a Ray Serve deployment), each of which adapts its connections to `Transport`.

Batching: the engine runs in one worker thread. A step starts as soon as a frame waits and the previous step is
done, and takes every frame that arrived in the meantime, so under load each step batches every active stream
(one weight read for all of them), and at low load a frame waits for nothing. Each connection has its own sender
task and a bounded outbox, so a slow reader never holds up a step or another stream. A connection that goes away
at any point loses its slot (its state rows leave at the next step) and nothing else.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import numpy as np

from ..codec import Codec
from ..engine.base import CacheMode
from ..levels import Levels, LevelsError
from ..mimifile import bits_per_token
from ..pool import PoolError, PoolFullError, StepResult
from ..stream.messages import End, Frame, Hello
from .wire import (
    SERVER_PROTOCOL,
    Kind,
    ServeError,
    ServerLimits,
    control,
    frame_message,
    parse_client_message,
    parse_control,
)

logger = logging.getLogger(__name__)

FORMATS = ("pcm", "opus", "tokens")
OUTBOX_LIMIT = 500
"""Messages a connection may have waiting to be sent (40 s of frames) before it is closed as a slow reader."""
GATHER_S = 0.04
"""How long a step waits for encode and decode streams that have not sent their next frame yet (half a frame), so
that one step takes every stream: real-time clients send at their own phases, and a step of all rows costs far
less than a step of most of them plus one of the rest (the rows left out are taken out and put back)."""


class Disconnected(Exception):
    """The peer is gone (raised by a `Transport`)."""


class Transport(Protocol):
    """One WebSocket connection, whatever server library carries it."""

    async def recv(self) -> bytes | str: ...

    async def send(self, data: bytes | str) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


@dataclasses.dataclass(eq=False)
class _Stream:
    """One connection: its role, its pool slot (None for producers and token listeners) and its outbox."""

    role: str
    transport: Transport
    slot: int | None = None
    format: str = "pcm"
    room: _Room | None = None
    outbox: asyncio.Queue[bytes | str | None] = dataclasses.field(default_factory=asyncio.Queue)
    frames_in: float = 0.0
    frames_out: int = 0
    started: float = dataclasses.field(default_factory=time.monotonic)
    ending: bool = False
    ended: bool = False
    token_levels: int = 0
    opus: Any = None
    failed: ServeError | None = None

    def put(self, message: bytes | str | None) -> None:
        if self.ended:
            return
        if self.outbox.qsize() >= OUTBOX_LIMIT:
            self.fail(ServeError("too_slow", f"more than {OUTBOX_LIMIT} messages wait for this client to read them"))
            return
        self.outbox.put_nowait(message)

    def fail(self, error: ServeError) -> None:
        if self.failed is None and not self.ended:
            self.failed = error
            self.ended = True
            self.outbox.put_nowait(None)


@dataclasses.dataclass(eq=False)
class _Room:
    name: str
    producer: _Stream
    started_us: int
    listeners: set[_Stream] = dataclasses.field(default_factory=set)
    frames: int = 0


class StreamHub:
    """Serves encode, decode and room streams from one `Codec` through one stream pool of `limits.max_streams`
    slots. `start()` inside the event loop that serves the connections, then `handle(transport, path)` for each
    connection; `stop()` at the end. `name` labels this hub in "ready" messages (a Ray Serve replica's id)."""

    def __init__(
        self,
        codec: Codec,
        limits: ServerLimits | None = None,
        mode: CacheMode = "window",
        name: str = "",
        gather_s: float = GATHER_S,
    ) -> None:
        self.codec = codec
        self.gather_s = gather_s
        self.limits = limits or ServerLimits()
        self.mode: CacheMode = mode
        self.name = name
        pending = max(self.limits.burst_frames * 2, 50)
        self.pool = codec.stream_pool(
            self.limits.max_streams, "both", mode, max_pending_frames=pending, keep_outputs=False
        )
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mimistack-steps")
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._streams: dict[int, _Stream] = {}
        self._connections: set[_Stream] = set()
        self.rooms: dict[str, _Room] = {}
        self.step_times: collections.deque[tuple[float, int, int]] = collections.deque(maxlen=10_000)
        self.steps = 0
        self.refused = 0

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="mimistack-stream-steps")

    async def stop(self) -> None:
        for stream in list(self._connections):
            stream.fail(ServeError("shutdown", "the server is shutting down"))
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    def stats(self) -> dict[str, Any]:
        """Streams open, slots free, steps taken, and step times (ms) over the recent steps."""
        times = np.array([t for t, _, _ in self.step_times]) * 1e3 if self.step_times else np.zeros(1)
        return {
            "protocol": SERVER_PROTOCOL,
            "name": self.name,
            "connections": len(self._connections),
            "slots_open": len(self.pool),
            "slots_free": self.pool.free,
            "rows": list(self.pool.rows()),
            "rooms": len(self.rooms),
            "steps": self.steps,
            "refused": self.refused,
            "step_ms_p50": float(np.percentile(times, 50)),
            "step_ms_p99": float(np.percentile(times, 99)),
        }

    # -- stepping -------------------------------------------------------------------------------------------
    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while True:
                await self._gather()
                try:
                    result = await loop.run_in_executor(self._executor, self.pool.step)
                except Exception:  # an engine failure must not stop every stream: log it and tell them
                    logger.exception("stream step failed")
                    for stream in list(self._connections):
                        stream.fail(ServeError("internal", "the engine failed; see the server log"))
                    break
                self.steps += 1
                if not result.idle:
                    self.step_times.append((result.seconds, result.encode_rows, result.decode_rows))
                self._dispatch(result)
                if result.idle:
                    break

    async def _gather(self) -> None:
        """Wait up to `gather_s` while some encode or decode stream has no whole frame waiting (one that is ending
        is not waited for, nor are room listeners, whose frames come from the producer)."""
        if self.gather_s <= 0:
            return
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.gather_s
        while self._missing() and (remaining := deadline - loop.time()) > 0:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)

    def _missing(self) -> bool:
        for slot, stream in self._streams.items():
            if stream.ending or stream.ended or stream.role not in ("encode", "decode"):
                continue
            with contextlib.suppress(PoolError):
                pcm_frames, code_frames = self.pool.pending(slot)
                if (pcm_frames if stream.role == "encode" else code_frames) == 0:
                    return True
        return False

    def _dispatch(self, result: StepResult) -> None:
        for slot, codes in result.codes.items():
            stream = self._streams.get(slot)
            if stream is not None:
                stream.put(frame_message(Kind.CODES, stream.frames_out, codes.astype("<u2").tobytes()))
                stream.frames_out += 1
        for slot, pcm in result.pcm.items():
            stream = self._streams.get(slot)
            if stream is not None:
                try:
                    self._send_audio(stream, pcm)
                except Exception as error:  # one listener's encoder fails: that stream ends, no other
                    logger.exception("audio output failed")
                    stream.fail(ServeError("internal", f"audio output failed: {type(error).__name__}"))
        for stream in list(self._streams.values()):
            if stream.ending and not stream.ended and stream.slot is not None:
                with contextlib.suppress(PoolError):
                    codes_waiting = self.pool.pending(stream.slot)[1]
                    if stream.role == "encode" and self.pool.done(stream.slot):
                        self._end(stream)
                    elif stream.role != "encode" and codes_waiting == 0:
                        self._end(stream)

    def _send_audio(self, stream: _Stream, pcm: np.ndarray) -> None:
        if stream.format == "opus":
            data = stream.opus.append_pcm(pcm)
            if data:
                stream.put(frame_message(Kind.OPUS, stream.frames_out, data))
        else:
            stream.put(frame_message(Kind.PCM, stream.frames_out, pcm.astype("<f4").tobytes()))
        stream.frames_out += 1

    def _end(self, stream: _Stream) -> None:
        stream.put(control("end", frames=stream.frames_out))
        stream.ended = True
        stream.outbox.put_nowait(None)

    # -- connections ----------------------------------------------------------------------------------------
    async def handle(self, transport: Transport, path: str) -> None:
        """Serve one connection until it ends; `path` is the request target (path and query)."""
        parts = urlsplit(path)
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        segments = [s for s in parts.path.split("/") if s]
        try:
            stream = self._admit(segments, query, transport)
        except ServeError as error:
            await _refuse(transport, error)
            return
        self._connections.add(stream)
        sender = asyncio.create_task(self._send_loop(stream))
        try:
            try:
                await self._receive_loop(stream)
            except ServeError as error:
                stream.fail(error)
            except Disconnected:
                stream.fail(ServeError("state", "the client went away"))
            with contextlib.suppress(TimeoutError, Disconnected):
                await asyncio.wait_for(asyncio.shield(sender), timeout=10.0)
        finally:
            self._release(stream)
            if not sender.done():
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Disconnected):
                    await sender

    def _admit(self, segments: list[str], query: dict[str, str], transport: Transport) -> _Stream:
        if segments[:1] == ["v1"]:
            segments = segments[1:]
        role = segments[0] if segments else ""
        if role in ("encode", "decode") and len(segments) == 1:
            levels = self._levels(query.get("levels"))
            stream = _Stream(role, transport)
            stream.format = self._format(query, allow_tokens=False) if role == "decode" else "codes"
            stream.slot = self._open_slot(levels, role)
            self._streams[stream.slot] = stream
            self._ready(stream, levels=levels)
            return stream
        if role == "rooms" and len(segments) == 3 and segments[2] in ("produce", "listen"):
            name = segments[1]
            if segments[2] == "produce":
                return self._produce(name, transport)
            return self._listen(name, query, transport)
        raise ServeError("not_found", f"no endpoint {'/'.join(segments)!r}: use /encode, /decode or /rooms/NAME/...")

    def _open_slot(self, levels: Levels, role: str) -> int:
        try:
            return self.pool.open(levels, sides=("encode",) if role == "encode" else ("decode",))
        except PoolFullError as error:
            self.refused += 1
            raise ServeError("capacity", f"{error} (this server holds {self.limits.max_streams} streams)") from None

    def _levels(self, spec: str | None) -> Levels:
        try:
            return Levels.parse(spec, self.codec.num_levels)
        except LevelsError as error:
            raise ServeError("invalid", f"levels: {error}") from None

    @staticmethod
    def _format(query: dict[str, str], allow_tokens: bool) -> str:
        chosen = query.get("format", "pcm")
        allowed = FORMATS if allow_tokens else FORMATS[:2]
        if chosen not in allowed:
            raise ServeError("invalid", f"format must be one of {', '.join(allowed)}, got {chosen!r}")
        return chosen

    def _ready(self, stream: _Stream, **fields: Any) -> None:
        info: dict[str, Any] = {
            "protocol": SERVER_PROTOCOL,
            "role": stream.role,
            "server": self.name,
            "sample_rate": self.codec.sample_rate,
            "frame_size": self.codec.frame_size,
            "num_levels": self.codec.num_levels,
            "codebook_size": self.codec.codebook_size,
            "weights_sha256": self.codec.weights_sha256,
            "cache_mode": self.mode,
        }
        for key, value in fields.items():
            info[key] = str(value) if isinstance(value, Levels) else value
        stream.put(control("ready", **info))

    def _produce(self, name: str, transport: Transport) -> _Stream:
        if name in self.rooms:
            raise ServeError("state", f"room {name!r} already has a producer")
        if len(self.rooms) >= self.limits.max_rooms:
            self.refused += 1
            raise ServeError("capacity", f"this server holds at most {self.limits.max_rooms} rooms")
        stream = _Stream("produce", transport)
        stream.room = self.rooms[name] = _Room(name, stream, time.time_ns() // 1000)
        self._ready(stream, room=name)
        return stream

    def _listen(self, name: str, query: dict[str, str], transport: Transport) -> _Stream:
        room = self.rooms.get(name)
        if room is None:
            raise ServeError("not_found", f"no room {name!r} (a producer opens it)")
        if sum(len(r.listeners) for r in self.rooms.values()) >= self.limits.max_listeners:
            self.refused += 1
            raise ServeError("capacity", f"this server holds at most {self.limits.max_listeners} listeners")
        stream = _Stream("listen", transport, room=room)
        stream.format = self._format(query, allow_tokens=True)
        if stream.format == "tokens":
            count = self._token_levels(query)
            stream.token_levels = count
            self._ready(stream, room=name, format="tokens", levels=count)
            stream.put(self._hello(room, count).encode())
        else:
            levels = self._levels(query.get("levels"))
            if stream.format == "opus":
                stream.opus = _opus_writer(self.codec.sample_rate)
            stream.slot = self._open_slot(levels, "listen")
            self._streams[stream.slot] = stream
            self._ready(stream, room=name, format=stream.format, levels=levels, first_frame=room.frames)
        room.listeners.add(stream)
        return stream

    def _token_levels(self, query: dict[str, str]) -> int:
        """A token listener's level count: `levels=N` (a prefix), `bandwidth=BITS_PER_S` or all."""
        total = self.codec.num_levels
        usage = "a token listener gives levels=N (a prefix of N levels) or bandwidth=BITS_PER_S"
        if "bandwidth" in query:
            try:
                bits = float(query["bandwidth"])
            except ValueError:
                raise ServeError("invalid", usage) from None
            per_level = self.codec.config.frame_rate * int(np.ceil(np.log2(self.codec.codebook_size)))
            if not bits >= per_level:
                raise ServeError("invalid", f"bandwidth {query['bandwidth']} is below one level ({per_level:g} bit/s)")
            return int(min(total, bits // per_level))
        spec = query.get("levels", str(total))
        if not spec.isdigit() or not 1 <= int(spec) <= total:
            raise ServeError("invalid", f"{usage}; levels must be 1..{total}, got {spec!r}")
        return int(spec)

    def _hello(self, room: _Room, levels: int) -> Hello:
        return Hello(
            num_levels=self.codec.num_levels,
            max_levels=levels,
            sample_rate=self.codec.sample_rate,
            frame_size=self.codec.frame_size,
            codebook_size=self.codec.codebook_size,
            weights_sha256=self.codec.weights_sha256,
            stream_start_us=room.started_us,
            cache_mode=self.mode,
        )

    async def _send_loop(self, stream: _Stream) -> None:
        try:
            while True:
                message = await stream.outbox.get()
                if message is None:
                    break
                await stream.transport.send(message)
        except Disconnected:
            return
        error = stream.failed
        if error is not None:
            await _refuse(stream.transport, error)
        else:
            with contextlib.suppress(Disconnected):
                await stream.transport.close(1000, "end of stream")

    async def _receive_loop(self, stream: _Stream) -> None:
        timeout = self.limits.idle_timeout_s if stream.role != "listen" else None
        while not stream.ended:
            try:
                message = await asyncio.wait_for(stream.transport.recv(), timeout)
            except TimeoutError:
                raise ServeError("idle", f"nothing received for {self.limits.idle_timeout_s:g} s") from None
            if stream.ended:
                break
            if len(message) > self.limits.max_message_bytes:
                raise ServeError(
                    "too_big", f"a message of {len(message)} bytes (at most {self.limits.max_message_bytes})"
                )
            if isinstance(message, str):
                self._on_control(stream, parse_control(message))
            else:
                self._on_data(stream, message)

    def _on_control(self, stream: _Stream, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "end" and stream.role in ("encode", "decode", "produce"):
            if stream.ending:
                raise ServeError("state", "the stream was already ended")
            stream.ending = True
            if stream.role == "produce":
                self._close_room(stream)
            else:
                assert stream.slot is not None
                if stream.role == "encode":
                    self.pool.finish(stream.slot)
                self._poke()
        elif kind == "levels" and stream.slot is not None and stream.role in ("decode", "listen"):
            self.pool.set_levels(stream.slot, self._levels(str(message.get("levels"))))
        else:
            raise ServeError("state", f"a {stream.role} stream takes no {kind!r} message")

    def _on_data(self, stream: _Stream, data: bytes) -> None:
        if stream.ending:
            raise ServeError("state", "data after the stream's end")
        kind, value = parse_client_message(data, self.codec.num_levels)
        expected = {"encode": Kind.PCM, "decode": Kind.CODES, "produce": Kind.CODES}.get(stream.role)
        if kind != expected:
            what = expected.name if expected is not None else "no data"
            raise ServeError("malformed", f"a {stream.role} stream takes {what} messages, not {kind.name}")
        frames = value.size / self.codec.frame_size if kind == Kind.PCM else value.shape[1]
        stream.frames_in += frames
        allowed = self.limits.burst_frames + self.limits.rate_factor * (time.monotonic() - stream.started) * (
            self.codec.config.frame_rate
        )
        if stream.frames_in > allowed:
            raise ServeError(
                "too_fast",
                f"{stream.frames_in:.0f} frames received after {time.monotonic() - stream.started:.2f} s: more than "
                f"{self.limits.burst_frames} frames ahead of real time",
            )
        if kind == Kind.CODES and value.size and int(value.max()) >= self.codec.codebook_size:
            raise ServeError("invalid", f"tokens must lie in 0..{self.codec.codebook_size - 1}")
        try:
            if stream.role == "encode":
                assert stream.slot is not None
                self.pool.push_pcm(stream.slot, value)
            elif stream.role == "decode":
                assert stream.slot is not None
                self.pool.push_codes(stream.slot, value)
            else:
                self._broadcast(stream, value)
        except PoolError as error:
            raise ServeError("too_fast", str(error)) from None
        self._poke()

    def _broadcast(self, producer: _Stream, codes: np.ndarray) -> None:
        room = producer.room
        assert room is not None
        for listener in list(room.listeners):
            if listener.ended:
                continue
            if listener.format == "tokens":
                frame = Frame(room.frames, codes[: listener.token_levels], bits_per_token(self.codec.codebook_size))
                listener.put(frame.encode())
            else:
                assert listener.slot is not None
                try:
                    self.pool.push_codes(listener.slot, codes)
                except PoolError as error:  # this listener's decode fell behind: it goes, the room goes on
                    listener.fail(ServeError("too_slow", str(error)))
        room.frames += codes.shape[1]

    def _close_room(self, producer: _Stream) -> None:
        room = producer.room
        if room is None or self.rooms.get(room.name) is not room:
            return
        del self.rooms[room.name]
        for listener in room.listeners:
            if listener.format == "tokens":
                listener.put(End(room.frames, room.frames * self.codec.frame_size).encode())
                self._end(listener)
            else:
                listener.ending = True
        self._end(producer)
        self._poke()

    def _release(self, stream: _Stream) -> None:
        """Whatever happened, the connection's slot, room and listener entry go."""
        self._connections.discard(stream)
        stream.ended = True
        if stream.slot is not None:
            self._streams.pop(stream.slot, None)
            with contextlib.suppress(PoolError):
                self.pool.close(stream.slot)
            stream.slot = None
            self._poke()  # the next step drops the slot's state rows
        if stream.room is not None:
            if stream.role == "produce":
                self._close_room(stream)
            else:
                stream.room.listeners.discard(stream)


async def _refuse(transport: Transport, error: ServeError) -> None:
    with contextlib.suppress(Disconnected, Exception):
        await transport.send(control("error", error=error.error, message=str(error)))
    with contextlib.suppress(Disconnected, Exception):
        await transport.close(error.close_code, error.error)


def _opus_writer(sample_rate: int) -> Any:
    try:
        import sphn
    except ImportError:
        raise ServeError("invalid", "format=opus needs sphn on the server: pip install sphn") from None
    return sphn.OpusStreamWriter(sample_rate)
