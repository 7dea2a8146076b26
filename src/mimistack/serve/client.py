"""A small Python client of the stream server: encode, decode, produce into a room, listen to a room.

Sits on `serve.wire` and `stream.messages` (token listeners receive the progressive protocol); used by the
tests and `bench/bench_streams.py`. Each call is a coroutine (`asyncio.run(encode(...))` from plain code). With
`realtime=True` input is sent one frame per 80 ms, as a live source would; the result holds each frame's latency
(from sending a frame's last input to receiving its output).

    from mimistack.serve.client import encode
    result = asyncio.run(encode("ws://127.0.0.1:8765", pcm))
    result.codes  # int64 [32, frames]
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import numpy as np
from numpy.typing import NDArray

from ..stream.messages import End, Frame, Hello, decode_message
from ..stream.net import require_websockets
from .wire import Kind, ServeError, codes_message, control, parse_server_message, pcm_message

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection


@dataclasses.dataclass
class Result:
    """What a stream gave back: `ready` (the server's first message), `codes` (int64 `[num_levels, n]`, from
    encode and token listeners), `pcm` (float32, from decode and audio listeners), `opus` (Ogg Opus bytes),
    per-frame `latencies` in seconds, and `end` (the server's last message)."""

    ready: dict[str, Any]
    codes: NDArray[np.int64] | None = None
    pcm: NDArray[np.float32] | None = None
    opus: bytes = b""
    latencies: list[float] = dataclasses.field(default_factory=list)
    end: dict[str, Any] = dataclasses.field(default_factory=dict)
    first_frame: int = 0


class ServerClosed(ServeError):
    """The server ended the stream with an error: `error` names it, `close_code` is the WebSocket close code."""

    def __init__(self, error: str, message: str, code: int | None) -> None:
        super().__init__(error, message)
        self.code = code


async def connect(uri: str, path: str, **query: Any) -> ClientConnection:
    """Open `uri/path?query` with the server's message-size limit."""
    require_websockets()
    from websockets.asyncio.client import connect as websockets_connect

    params = {key: str(value) for key, value in query.items() if value is not None}
    target = uri.rstrip("/") + path + ("?" + urlencode(params) if params else "")
    return await websockets_connect(target, max_size=1 << 22, compression=None, open_timeout=20)


async def ready(connection: ClientConnection) -> dict[str, Any]:
    """The server's "ready" message (or its refusal, raised as `ServerClosed`)."""
    return await _expect(connection, "ready")


async def encode(uri: str, pcm: NDArray[Any], *, realtime: bool = True, frames_per_message: int = 1) -> Result:
    """Send mono pcm at the codec's rate; receive its codes frame by frame."""
    connection = await connect(uri, "/encode")
    async with _closing(connection):
        info = await ready(connection)
        size = int(info["frame_size"])
        samples = np.asarray(pcm, dtype=np.float32).reshape(-1)
        chunk = size * frames_per_message
        sent: list[float] = []

        async def send() -> None:
            start = time.monotonic()
            for index, offset in enumerate(range(0, len(samples), chunk)):
                if realtime:
                    await _sleep_until(start + (index + 1) * chunk / info["sample_rate"])
                await connection.send(pcm_message(samples[offset : offset + chunk]))
                now = time.monotonic()
                sent.extend([now] * max(1, -(-len(samples[offset : offset + chunk]) // size)))
            await connection.send(control("end"))

        frames: list[NDArray[np.int64]] = []

        def take(kind: Kind, payload: bytes) -> None:
            if kind != Kind.CODES:
                raise ServeError("malformed", f"an encode stream got a {kind.name} message")
            frames.append(np.frombuffer(payload, dtype="<u2").astype(np.int64))

        result = await _exchange(connection, Result(info), send(), sent, take)
        levels = int(info["num_levels"])
        result.codes = np.stack(frames, axis=1) if frames else np.zeros((levels, 0), np.int64)
        return result


async def decode(uri: str, codes: NDArray[Any], levels: str | None = None, *, realtime: bool = True) -> Result:
    """Send codes `[num_levels, n]`; receive the pcm of the selected levels frame by frame."""
    connection = await connect(uri, "/decode", levels=levels)
    async with _closing(connection):
        info = await ready(connection)
        array = np.asarray(codes)
        sent: list[float] = []

        async def send() -> None:
            start = time.monotonic()
            for index in range(array.shape[1]):
                if realtime:
                    await _sleep_until(start + (index + 1) * info["frame_size"] / info["sample_rate"])
                await connection.send(codes_message(array[:, index]))
                sent.append(time.monotonic())
            await connection.send(control("end"))

        chunks: list[NDArray[np.float32]] = []

        def take(kind: Kind, payload: bytes) -> None:
            if kind != Kind.PCM:
                raise ServeError("malformed", f"a decode stream got a {kind.name} message")
            chunks.append(np.frombuffer(payload, dtype="<f4").astype(np.float32))

        result = await _exchange(connection, Result(info), send(), sent, take)
        result.pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        return result


async def produce(
    uri: str, room: str, codes: NDArray[Any], *, realtime: bool = True, start: asyncio.Event | None = None
) -> Result:
    """Open room `room` and send codes `[num_levels, n]` into it (after `start` is set, when given)."""
    connection = await connect(uri, f"/rooms/{quote(room, safe='')}/produce")
    async with _closing(connection):
        info = await ready(connection)
        result = Result(info)
        if start is not None:
            await start.wait()
        array = np.asarray(codes)
        began = time.monotonic()
        for index in range(array.shape[1]):
            if realtime:
                await _sleep_until(began + (index + 1) * info["frame_size"] / info["sample_rate"])
            await connection.send(codes_message(array[:, index]))
        await connection.send(control("end"))
        async for _ in _messages(connection, result):
            pass
        return result


async def listen(
    uri: str,
    room: str,
    *,
    levels: str | None = None,
    format: str = "pcm",
    bandwidth: float | None = None,
    joined: asyncio.Event | None = None,
) -> Result:
    """Receive a room's stream: audio at `levels` (format "pcm" or "opus"), or tokens (format "tokens", a prefix
    of `levels` levels or what `bandwidth` bit/s carries). `joined` is set once the server admitted us."""
    connection = await connect(
        uri, f"/rooms/{quote(room, safe='')}/listen", levels=levels, format=format, bandwidth=bandwidth
    )
    async with _closing(connection):
        info = await ready(connection)
        if joined is not None:
            joined.set()
        result = Result(info, first_frame=int(info.get("first_frame", 0)))
        chunks: list[NDArray[Any]] = []
        async for message in _messages(connection, result):
            if format == "tokens":
                decoded = decode_message(message)
                if isinstance(decoded, Frame):
                    if not chunks:
                        result.first_frame = decoded.first_frame
                    chunks.append(decoded.codes.astype(np.int64))
                elif not isinstance(decoded, (Hello, End)):
                    raise ServeError("malformed", f"a token listener got {type(decoded).__name__}")
                continue
            kind, _, payload = parse_server_message(message)
            if kind == Kind.OPUS:
                result.opus += payload
            else:
                chunks.append(np.frombuffer(payload, dtype="<f4").astype(np.float32))
        if format == "tokens":
            width = int(info["levels"])
            result.codes = np.concatenate(chunks, axis=1) if chunks else np.zeros((width, 0), np.int64)
        elif format == "pcm":
            result.pcm = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        return result


# -- plumbing -------------------------------------------------------------------------------------------------
async def _exchange(
    connection: ClientConnection,
    result: Result,
    send: Coroutine[Any, Any, None],
    sent: list[float],
    take: Callable[[Kind, bytes], None],
) -> Result:
    """Send (a task) while receiving every frame until the server's end; each frame's latency is measured from
    the time its input was sent (`sent[index]`)."""
    sender = asyncio.create_task(send)
    try:
        async for message in _messages(connection, result):
            kind, index, payload = parse_server_message(message)
            take(kind, payload)
            if index < len(sent):
                result.latencies.append(time.monotonic() - sent[index])
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender
    return result


@contextlib.asynccontextmanager
async def _closing(connection: ClientConnection) -> Any:
    try:
        yield connection
    finally:
        with contextlib.suppress(Exception):
            await connection.close()


async def _sleep_until(deadline: float) -> None:
    delay = deadline - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def _expect(connection: ClientConnection, kind: str) -> dict[str, Any]:
    from websockets.exceptions import ConnectionClosed

    try:
        message = await connection.recv()
    except ConnectionClosed as closed:
        raise _closed(closed, None) from None
    if not isinstance(message, str):
        raise ServeError("malformed", f"expected a {kind!r} message first, got binary data")
    parsed = json.loads(message)
    if parsed.get("type") == "error":
        code = await _close_code(connection)
        raise ServerClosed(parsed.get("error", "?"), parsed.get("message", ""), code)
    if parsed.get("type") != kind:
        raise ServeError("malformed", f"expected a {kind!r} message, got {parsed.get('type')!r}")
    return dict(parsed)


async def _messages(connection: ClientConnection, result: Result) -> Any:
    """Binary messages until the server's "end"; an "error" is raised as `ServerClosed`."""
    from websockets.exceptions import ConnectionClosed

    while True:
        try:
            message = await connection.recv()
        except ConnectionClosed as closed:
            raise _closed(closed, "the server closed the stream before its end") from None
        if isinstance(message, str):
            parsed = json.loads(message)
            if parsed.get("type") == "end":
                result.end = parsed
                return
            if parsed.get("type") == "error":
                code = await _close_code(connection)
                raise ServerClosed(parsed.get("error", "?"), parsed.get("message", ""), code)
            continue
        yield message


async def _close_code(connection: ClientConnection) -> int | None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(connection.wait_closed(), 5)
    return connection.close_code


def _closed(closed: Exception, text: str | None) -> ServerClosed:
    code = getattr(getattr(closed, "rcvd", None), "code", None)
    reason = getattr(getattr(closed, "rcvd", None), "reason", "") or ""
    return ServerClosed(reason or "closed", text or f"the server closed the connection ({code} {reason})", code)
