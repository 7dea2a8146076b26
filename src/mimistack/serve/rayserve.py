"""The stream server as a Ray Serve deployment: each replica runs its own `StreamHub` (its own pool, batching
its own streams), and each WebSocket connection lives on one replica from its first message to its last.

Sits on `serve.hub` and `codec`; used by `mimistack stream serve --ray-replicas N` and the tests. Needs the
`[serve-ray]` extra (`pip install 'mimistack[serve-ray]'`). A replica admits at most `limits.max_streams`
connections (`max_ongoing_requests`), so Ray Serve's router sends the next one to another replica instead of
overloading a full one; the endpoints and messages are those of `serve.websocket` (`docs/protocol.md`).
"""

# No `from __future__ import annotations` here: FastAPI reads the handlers' annotations at run time, and
# `WebSocket` is imported inside `deployment` (fastapi is an optional dependency).
import contextlib
import signal
import threading
from collections.abc import Callable
from typing import Any

from ..engine.base import CacheMode
from ..engine.options import EngineName, EngineOptions
from .hub import Disconnected, StreamHub
from .wire import ServeError, ServerLimits

DEPLOYMENT = "mimistack-streams"


def require_ray_serve() -> None:
    try:
        import fastapi  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        raise ServeError(
            "internal", "Ray Serve deployment needs ray[serve] and fastapi: pip install 'mimistack[serve-ray]'"
        ) from None


class _StarletteTransport:
    """`hub.Transport` over a Starlette/FastAPI WebSocket (what Ray Serve hands a replica)."""

    def __init__(self, websocket: Any) -> None:
        self.websocket = websocket

    async def recv(self) -> bytes | str:
        message = await self.websocket.receive()
        if message["type"] == "websocket.disconnect":
            raise Disconnected
        data = message.get("bytes")
        if data is not None:
            return bytes(data)
        return str(message.get("text") or "")

    async def send(self, data: bytes | str) -> None:
        try:
            if isinstance(data, bytes):
                await self.websocket.send_bytes(data)
            else:
                await self.websocket.send_text(data)
        except Exception as error:  # starlette raises WebSocketDisconnect or RuntimeError once closed
            raise Disconnected from error

    async def close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self.websocket.close(code, reason)


def deployment(
    weights: str,
    engine: EngineOptions | EngineName = "auto",
    limits: ServerLimits | None = None,
    mode: CacheMode = "window",
    replicas: int = 2,
    num_gpus: float = 0.0,
) -> Any:
    """The bound Ray Serve application (pass it to `serve.run`); `num_gpus`: GPUs per replica (1 for one replica
    per GPU with `TorchOptions(device="cuda")`)."""
    require_ray_serve()
    from fastapi import FastAPI, WebSocket
    from ray import serve

    chosen = limits or ServerLimits()
    app = FastAPI()

    @serve.deployment(
        name=DEPLOYMENT,
        num_replicas=replicas,
        max_ongoing_requests=chosen.max_streams,
        ray_actor_options={"num_cpus": 0, "num_gpus": num_gpus},
    )
    @serve.ingress(app)
    class MimiStreams:
        def __init__(self) -> None:
            from ..codec import Codec

            self.codec = Codec.load(weights, engine=engine)
            context = serve.get_replica_context()
            self.name = str(getattr(context.replica_id, "unique_id", context.replica_id))
            self.hub: StreamHub | None = None

        async def _hub(self) -> StreamHub:
            if self.hub is None:
                self.hub = StreamHub(self.codec, chosen, mode, name=self.name)
                await self.hub.start()
            return self.hub

        @app.get("/stats")
        async def stats(self) -> dict[str, Any]:
            return (await self._hub()).stats()

        @app.websocket("/{path:path}")
        async def stream(self, websocket: WebSocket, path: str) -> None:
            await websocket.accept()
            hub = await self._hub()
            query = websocket.url.query
            await hub.handle(_StarletteTransport(websocket), "/" + path + ("?" + query if query else ""))

    return MimiStreams.bind()  # type: ignore[attr-defined]


def run_ray_server(
    weights: str,
    engine: EngineOptions | EngineName = "auto",
    *,
    replicas: int = 2,
    host: str = "127.0.0.1",
    port: int = 8765,
    limits: ServerLimits | None = None,
    mode: CacheMode = "window",
    address: str | None = None,
    num_gpus: float = 0.0,
    on_ready: Callable[[str], Any] | None = None,
) -> None:
    """Start (or join, with `address`) a Ray cluster, deploy `replicas` replicas behind Ray Serve's proxy on
    host:port, and serve until SIGINT/SIGTERM."""
    require_ray_serve()
    import ray
    from ray import serve

    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    serve.start(http_options={"host": host, "port": port})
    app = deployment(weights, engine, limits, mode, replicas, num_gpus)
    serve.run(app, name=DEPLOYMENT, route_prefix="/")
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    if on_ready is not None:
        on_ready(f"ws://{host}:{port}")
    try:
        stop.wait()
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
