"""The stream server on the `websockets` library: `run_server` (what `mimistack stream serve` runs) and
`start_server` (for tests and programs that own an event loop).

Sits on `serve.hub` (the core) and `serve.wire`; used by `cli.stream`. Besides the WebSocket endpoints
(`/encode`, `/decode`, `/rooms/NAME/produce`, `/rooms/NAME/listen`), plain HTTP GET `/stats` answers the hub's
counters as JSON (`/stats?reset=1` also starts a new window of step times) and `/health` answers "ok".
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
from collections.abc import AsyncIterator, Callable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from ..codec import Codec
from ..engine.base import CacheMode
from ..stream.net import check_listen_host, require_websockets, warm_up
from .hub import GATHER_S, Disconnected, StreamHub
from .wire import ServerLimits

if TYPE_CHECKING:
    from websockets.asyncio.server import Server, ServerConnection
    from websockets.http11 import Request, Response


class _Connection:
    """`hub.Transport` over a `websockets` server connection."""

    def __init__(self, connection: ServerConnection) -> None:
        from websockets.exceptions import ConnectionClosed

        self.connection = connection
        self._closed = ConnectionClosed

    async def recv(self) -> bytes | str:
        try:
            return await self.connection.recv()
        except self._closed:
            raise Disconnected from None

    async def send(self, data: bytes | str) -> None:
        try:
            await self.connection.send(data)
        except self._closed:
            raise Disconnected from None

    async def close(self, code: int, reason: str) -> None:
        await self.connection.close(code, reason)


@dataclasses.dataclass
class RunningServer:
    hub: StreamHub
    server: Server
    host: str
    port: int

    @property
    def uri(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"


@contextlib.asynccontextmanager
async def start_server(
    codec: Codec,
    host: str = "127.0.0.1",
    port: int = 0,
    limits: ServerLimits | None = None,
    mode: CacheMode = "window",
    *,
    allow_remote: bool = False,
    gather_s: float = GATHER_S,
) -> AsyncIterator[RunningServer]:
    """Serve until the block ends (port 0: any free port; see `RunningServer.uri`). `gather_s`: how long a step
    waits for streams that have not sent their frame yet (`hub.GATHER_S`; 0: step at once)."""
    require_websockets()
    from websockets.asyncio.server import serve

    check_listen_host(host, allow_remote)
    hub = StreamHub(codec, limits, mode, gather_s=gather_s)
    await hub.start()

    async def handler(connection: ServerConnection) -> None:
        await hub.handle(_Connection(connection), connection.request.path if connection.request else "/")

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/health":
            return connection.respond(HTTPStatus.OK, "ok\n")
        if path == "/stats":
            body = json.dumps(hub.stats()) + "\n"
            if "reset=1" in request.path:  # start a new measurement window (bench/bench_streams.py)
                hub.step_times.clear()
            return connection.respond(HTTPStatus.OK, body)
        return None

    server = await serve(
        handler,
        host,
        port,
        max_size=hub.limits.max_message_bytes,
        compression=None,
        process_request=process_request,
        ping_interval=20,
        ping_timeout=20,
    )
    try:
        bound = next(iter(server.sockets)).getsockname()
        yield RunningServer(hub, server, host, int(bound[1]))
    finally:
        server.close()
        await hub.stop()
        await server.wait_closed()


def run_server(
    codec: Codec,
    host: str = "127.0.0.1",
    port: int = 8765,
    limits: ServerLimits | None = None,
    mode: CacheMode = "window",
    *,
    allow_remote: bool = False,
    on_ready: Callable[[RunningServer], Any] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM (what `mimistack stream serve` runs)."""
    warm_up(codec)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(signum, stop.set)
        async with start_server(codec, host, port, limits, mode, allow_remote=allow_remote) as running:
            if on_ready is not None:
                on_ready(running)
            await stop.wait()

    asyncio.run(main())
