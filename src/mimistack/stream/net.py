"""What every WebSocket endpoint of the protocol shares: the optional `websockets` import, listening and connecting with
the protocol's limits, the loopback-only rule, ERROR replies, and a codec warmed up before its first real-time frame.

Sits on `protocol` (`MAX_MESSAGE_BYTES`, `StreamError`), `messages` (`ErrorMessage`), `levels` and `codec` (types only);
used by `receiver`, `sender` and `simulate`, and by `cli.stream` (`check_listen_host`). `websockets` is the `[stream]`
extra, imported only when a socket is opened, so the wire format and the sans-IO session need nothing beyond the core
install.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Self

import numpy as np

from ..levels import Levels
from .messages import ErrorMessage
from .protocol import MAX_MESSAGE_BYTES, StreamError

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection
    from websockets.asyncio.connection import Connection
    from websockets.asyncio.server import Server, ServerConnection
    from websockets.exceptions import ConnectionClosed

    from ..codec import Codec


def require_websockets() -> None:
    """Raise `StreamError` with the install command unless the `[stream]` extra is there."""
    try:
        import websockets.asyncio.client
        import websockets.asyncio.server
        import websockets.exceptions  # noqa: F401
    except ImportError:
        raise StreamError("streaming needs the websockets package: pip install 'websockets>=13'") from None


def connection_closed() -> type[ConnectionClosed]:
    """The exception a closed connection raises (for `except` and `contextlib.suppress`)."""
    require_websockets()
    from websockets.exceptions import ConnectionClosed

    return ConnectionClosed


def connect_errors() -> tuple[type[Exception], ...]:
    """What a connection attempt that fails raises: no route, no answer in time, or a refused handshake."""
    require_websockets()
    from websockets.exceptions import InvalidHandshake

    return (OSError, TimeoutError, InvalidHandshake)


async def serve(handler: Callable[[ServerConnection], Awaitable[None]], host: str, port: int) -> Server:
    """Start listening; stop with `server.close()`, then `await server.wait_closed()`."""
    require_websockets()
    from websockets.asyncio.server import serve as websockets_serve

    return await websockets_serve(handler, host, port, max_size=MAX_MESSAGE_BYTES, compression=None)


class Listening:
    """A WebSocket endpoint as an async context manager (`async with X(...) as x:`): it listens on `host`:`port`
    (port 0 picks a free one, read back on entry) and hands every connection to `_handle`."""

    host: str
    port: int
    _server: Server | None = None

    @property
    def uri(self) -> str:
        return f"ws://{uri_host(self.host)}:{self.port}"

    async def _handle(self, connection: ServerConnection) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        self._server = await serve(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def connect(uri: str, open_timeout: float | None = 10.0) -> ClientConnection:
    require_websockets()
    from websockets.asyncio.client import connect as websockets_connect

    return await websockets_connect(uri, max_size=MAX_MESSAGE_BYTES, compression=None, open_timeout=open_timeout)


async def send_error(connection: Connection, code: int, text: str) -> None:
    """Tell the peer why the session ends; a peer that is already gone is no further error."""
    with contextlib.suppress(Exception):
        await connection.send(ErrorMessage(int(code), text[:1000]).encode())


def check_listen_host(host: str, allow_remote: bool) -> None:
    """Refuse to listen beyond this machine (anything but loopback) unless `allow_remote`."""
    if allow_remote:
        return
    if host == "localhost":
        return
    try:
        loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"refusing to listen on {host}: only loopback addresses (127.0.0.1, ::1, localhost) "
            "unless remote listening is allowed explicitly (--allow-remote)"
        )


def uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def warm_up(codec: Codec) -> None:
    """One throwaway frame through a fresh encoder and decoder, so the first real frame is not slow."""
    frame = np.zeros(codec.frame_size, dtype=np.float32)
    codes = codec.stream_encoder().push(frame)
    codec.stream_decoder(Levels.prefix(1, codec.num_levels)).push(codes)
