"""The local web app's server (`mimistack serve`): the built page, the ONNX graphs it runs, and an encode/decode API.

`app.py` holds the FastAPI application, `security.py` static files and the security middleware; `static/` receives
the page built from `web/` (`npm run build --prefix web`, not committed). Needs the `[server]` extra (fastapi, uvicorn).
"""

from __future__ import annotations

from .app import ServerSettings, create_app, serve
from .security import is_loopback_host

__all__ = ["ServerSettings", "create_app", "is_loopback_host", "serve"]
