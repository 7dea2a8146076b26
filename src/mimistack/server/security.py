"""What the server sends besides the API: static files resolved safely inside their folder, their media types and
caching, and the security middleware (Host and Origin checks, the security headers on every response).

Sits on the standard library and starlette; used by `server.app`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self' 'wasm-unsafe-eval'",
        "worker-src 'self'",
        # ws:/wss: for progressive streams (a relay, a stream server's rooms); https: for ?model=URL bundles.
        "connect-src 'self' https: ws: wss:",
        "img-src 'self' data: blob:",
        "media-src 'self' blob:",
        "style-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)

MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
    ".wav": "audio/wav",
    ".onnx": "application/octet-stream",
    ".data": "application/octet-stream",
    ".safetensors": "application/octet-stream",
    ".woff2": "font/woff2",
}


# -- static files -----------------------------------------------------------------------------------------------
def resolve_static(root: Path, relative: str) -> Path | None:
    """The file `relative` names inside `root`, or None: no `..`, no hidden names, no escape through links."""
    if not relative or "\\" in relative or "\x00" in relative or relative.startswith("/"):
        return None
    parts = relative.split("/")
    if any(part in ("", ".", "..") or part.startswith(".") for part in parts):
        return None
    base = root.resolve()
    candidate = (base / relative).resolve()
    if not candidate.is_relative_to(base) or not candidate.is_file():
        return None
    return candidate


def _media_type(path: Path) -> str:
    return MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")


def _cache_control(relative: str) -> str:
    if relative.startswith("assets/"):
        return "public, max-age=31536000, immutable"  # Vite names these by content hash
    return "no-cache"


NOT_BUILT_PAGE = """<!doctype html><meta charset="utf-8"><title>mimistack: page not built</title>
<h1>The mimistack page has not been built</h1>
<p>Build it once from the repository: <code>npm ci --prefix web &amp;&amp; npm run build --prefix web</code>,
then restart <code>mimistack serve</code>. The API under <code>/api/</code> works without it.</p>
"""


# -- security ---------------------------------------------------------------------------------------------------
def is_loopback_host(host: str) -> bool:
    """True for names and addresses that stay on this machine (127.0.0.0/8, ::1, localhost)."""
    name = host.strip().lower().strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """'127.0.0.1:8765' -> '127.0.0.1'; '[::1]:8765' -> '::1'."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class SecurityMiddleware:
    """Pure ASGI middleware: refuses foreign Host headers and cross-origin POSTs, adds the security headers."""

    def __init__(self, app: Any, loopback_only: bool, cross_origin_isolation: bool) -> None:
        self.app = app
        self.loopback_only = loopback_only
        headers = [
            ("content-security-policy", CONTENT_SECURITY_POLICY),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
            ("x-frame-options", "DENY"),
            ("permissions-policy", "microphone=(self), camera=(), geolocation=()"),
            ("cross-origin-resource-policy", "same-origin"),
        ]
        if cross_origin_isolation:
            headers += [("cross-origin-opener-policy", "same-origin"), ("cross-origin-embedder-policy", "require-corp")]
        self.headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = request_headers.get("host", "")
        problem = None
        if self.loopback_only and not is_loopback_host(_host_name(host)):
            problem = f"refused: Host {host!r} is not this machine (the server only answers loopback names)"
        origin = request_headers.get("origin")
        if problem is None and origin and (scope["type"] == "websocket" or scope.get("method") not in ("GET", "HEAD")):
            if urlsplit(origin).netloc != host:
                problem = f"refused: a request from origin {origin!r} to {host!r}"
        if problem is not None:
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await JSONResponse({"error": problem}, status_code=403)(scope, receive, self._wrap(send))
            return
        await self.app(scope, receive, self._wrap(send))

    def _wrap(self, send: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        async def wrapped(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = dict(message)
                present = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k, v) for k, v in self.headers if k not in present
                ]
            await send(message)

        return wrapped
