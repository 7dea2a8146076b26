"""The stream server: many real-time encode, decode and room streams batched through one stream pool.

`serve.wire` (the wire format, `ServerLimits`) < `serve.hub` (`StreamHub`, the core) < `serve.websocket` (the
`websockets` server that `mimistack stream serve` runs) | `serve.rayserve` (the same hub as a Ray Serve
deployment); `serve.client` is the small Python client. The protocol is `docs/protocol.md`, "The stream server".
"""

from __future__ import annotations

from .wire import ServeError, ServerLimits

__all__ = ["ServeError", "ServerLimits"]
