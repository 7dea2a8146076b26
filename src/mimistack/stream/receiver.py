"""The WebSocket receiver: one `ReceiverSession` served at ws://host:port (`StreamReceiver`), and the `.mimi` file of
what it decoded (`write_received_mimi`).

Sits on `session` (the sans-IO receiving end), `net` (sockets, the loopback rule, ERROR replies, warm-up), `protocol`,
`report` and `container` (`FrameStreamWriter`); used by `cli.stream` (`mimistack stream receive`), the tests and
`bench/bench_stream.py`. Messages are stamped with their arrival time by a reader task while the session decodes in a
worker thread, so a slow decode never shifts the arrival times the concealment deadlines are measured from.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, Unpack

import numpy as np

from ..levels import Levels
from ..mimifile import FrameStreamWriter
from .net import check_listen_host, connection_closed, require_websockets, send_error, serve, uri_host, warm_up
from .protocol import PROTOCOL_VERSION, ErrorCode, ProtocolError, StreamError
from .report import ReceiverReport
from .session import ReceiverSession, SessionOptions

if TYPE_CHECKING:
    from websockets.asyncio.server import Server, ServerConnection
    from websockets.typing import Data

    from ..codec import Codec

logger = logging.getLogger(__name__)

_Value = TypeVar("_Value")


class StreamReceiver:
    """Serves one `ReceiverSession` on a WebSocket at ws://host:port (127.0.0.1 unless `allow_remote`).

    Audio goes to `on_audio`; `wait()` returns the `ReceiverReport` once the session ends (END, the sender
    closing, an error, or `idle_timeout` seconds without a message). A second connection while a session runs is
    refused with ERROR(STATE). `session_options` go to `ReceiverSession` (`max_delay`, `on_audio`, ...)::

        async with StreamReceiver(codec, port=0, on_audio=writer.write) as receiver:
            ...  # tell the sender receiver.uri
            report = await receiver.wait()
    """

    def __init__(
        self,
        codec: Codec,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        allow_remote: bool = False,
        idle_timeout: float = 30.0,
        warmup: bool = True,
        **session_options: Unpack[SessionOptions],
    ) -> None:
        check_listen_host(host, allow_remote)
        self.codec = codec
        self.host, self.port = host, port
        self.idle_timeout = idle_timeout
        self.warmup = warmup
        self.session_options = session_options
        self.session: ReceiverSession | None = None
        self._server: Server | None = None
        self._done: asyncio.Future[ReceiverReport] | None = None

    @property
    def uri(self) -> str:
        return f"ws://{uri_host(self.host)}:{self.port}"

    async def __aenter__(self) -> StreamReceiver:
        require_websockets()
        if self.warmup:
            await asyncio.to_thread(warm_up, self.codec)
        self._done = asyncio.get_running_loop().create_future()
        self._server = await serve(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("listening on %s", self.uri)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def wait(self, timeout: float | None = None) -> ReceiverReport:
        if self._done is None:
            raise StreamError("use StreamReceiver as an async context manager ('async with') before wait()")
        return await asyncio.wait_for(asyncio.shield(self._done), timeout)

    async def _serve(self, connection: ServerConnection) -> None:
        if self._done is None:
            return
        if self.session is not None:
            await send_error(connection, ErrorCode.STATE, "this receiver is already serving a stream")
            return
        session = self.session = ReceiverSession(self.codec, **self.session_options)
        error: str | None = None
        try:
            await self._run(session, connection)
        except ProtocolError as problem:
            error = str(problem)
            logger.error("closing the stream: %s", problem)
            await send_error(connection, problem.code, str(problem))
        except (StreamError, TimeoutError) as problem:
            error = str(problem) or "no message for too long"
            logger.error("stream failed: %s", error)
        except Exception as problem:
            error = f"{type(problem).__name__}: {problem}"
            await send_error(connection, ErrorCode.INTERNAL, error)
            if not self._done.done():
                self._done.set_exception(problem)
            raise
        finally:
            session.finish()
            await connection.close()
        if not self._done.done():
            self._done.set_result(session.report(error))

    async def _run(self, session: ReceiverSession, connection: ServerConnection) -> None:
        closed = connection_closed()
        queue: asyncio.Queue[tuple[Data, float] | None] = asyncio.Queue()
        reader = asyncio.create_task(_read_into(connection, queue))
        last_message = time.time()
        try:
            while not session.ended:
                wakeup = session.next_wakeup()
                timeout = self.idle_timeout if wakeup is None else wakeup - time.time()
                try:  # messages first: a wakeup already due must not starve them
                    item = (
                        queue.get_nowait()
                        if not queue.empty()
                        else await asyncio.wait_for(queue.get(), min(max(timeout, 0.001), self.idle_timeout))
                    )
                except TimeoutError:
                    if time.time() - last_message >= self.idle_timeout:
                        raise StreamError(f"no message from the sender for {self.idle_timeout:g} s") from None
                    replies = await asyncio.to_thread(session.tick, time.time())
                else:
                    if item is None:
                        if session.hello is None:
                            raise StreamError("the sender closed the connection before HELLO")
                        raise StreamError("the sender closed the connection before END")
                    data, arrival = item
                    last_message = arrival
                    replies = await asyncio.to_thread(session.handle, data, arrival)
                for reply in replies:
                    with contextlib.suppress(closed):
                        await connection.send(reply)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def _read_into(connection: ServerConnection, queue: asyncio.Queue[tuple[Data, float] | None]) -> None:
    """Stamp each message with its arrival time as it comes off the socket (decoding may lag behind)."""
    with contextlib.suppress(connection_closed()):
        async for data in connection:
            queue.put_nowait((data, time.time()))
    queue.put_nowait(None)


def write_received_mimi(session: ReceiverSession, path: str | Path, *, force: bool = False) -> Path | None:
    """Write what a session decoded as a frame-major `.mimi` (atomically; None when no frame was received).

    The levels stored are the largest prefix that every received frame carried (level 0 at least). Concealed
    frames hold the tokens the receiver decoded in their place (the last received frame's, repeated); the header's
    metadata lists them under `stream.concealed_frames` as [first, count] runs, and the levels each received frame
    carried under `stream.levels_received` as [first, count, levels] runs (0 for concealed frames).
    """
    hello = session.hello
    received = [r.levels_received for r in session.records if not r.concealed]
    if hello is None or not received:
        return None
    levels = min(received)
    counts = [r.levels_received for r in session.records]
    concealed = [r.concealed is not None for r in session.records]
    num_samples = session.end.num_samples if session.end else session.samples_written
    with FrameStreamWriter(
        path,
        num_levels=hello.num_levels,
        levels_present=Levels.prefix(levels, hello.num_levels),
        sample_rate=hello.sample_rate,
        frame_rate=hello.frame_rate,
        codebook_size=hello.codebook_size,
        weights_sha256=hello.weights_sha256,
        metadata={
            "stream": {
                "source": "mimistack stream receive",
                "protocol_version": PROTOCOL_VERSION,
                "concealment": "repeat the last received frame's tokens",
                "concealed_frames": [[start, count] for start, count, value in _runs(concealed) if value],
                "levels_received": [list(run) for run in _runs(counts)],
            }
        },
        force=force,
    ) as writer:
        if session.tokens:
            writer.append(np.stack(session.tokens, axis=1))
        writer.close(num_samples)
    return Path(path)


def _runs(values: Sequence[_Value]) -> list[tuple[int, int, _Value]]:
    """Run-length encoding: [(first index, count, value), ...]."""
    runs: list[tuple[int, int, _Value]] = []
    for index, value in enumerate(values):
        if runs and runs[-1][2] == value:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1, value)
        else:
            runs.append((index, 1, value))
    return runs
