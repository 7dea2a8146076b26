"""The web page's engine as a `parity` implementation: onnxruntime-web (WebAssembly) in headless Chromium, running
the exact bundle with the page's own level sum.

Sits on `engine.export.site` (the static site: the built page and the exact bundle of the export folder); used by
`analysis.parity`. It needs a source checkout (the page's build, `web/node_modules` with playwright-core,
`web/tools/page-engine.mjs`), Node.js and Chromium; without one of them it says which and how to get it.

The site is served from a thread on 127.0.0.1 with cross-origin isolation headers (so the page runs threaded
WebAssembly as it does under `mimistack serve`); `page-engine.mjs` keeps one page open and answers one JSON line per
request, so every clip and level count goes through the same loaded engine.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import shutil
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..engine.export.site import PAGE_DIR, write_site
from ..errors import MimistackError

WEB_DIR = Path(__file__).resolve().parents[3] / "web"
DRIVER = WEB_DIR / "tools" / "page-engine.mjs"


class BrowserUnavailable(MimistackError):
    """Something the browser implementation needs is missing; the message says what and how to install it."""


def missing_pieces(chromium: str | None = None) -> list[str]:
    """What the browser implementation lacks here (empty when it can run)."""
    browser = chromium or os.environ.get("MIMISTACK_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    missing = []
    if not Path(browser).is_file():
        missing.append("Chromium (apt-get install chromium)")
    if shutil.which("node") is None:
        missing.append("Node.js 20")
    if not DRIVER.is_file() or not (WEB_DIR / "node_modules" / "playwright-core").is_dir():
        missing.append("a source checkout with web/node_modules (npm ci --prefix web)")
    if not (PAGE_DIR / "index.html").is_file():
        missing.append("the built page (npm run build --prefix web)")
    return missing


class _Quiet(SimpleHTTPRequestHandler):
    def end_headers(self) -> None:
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class BrowserRunner:
    """encode/decode through the page; `close()` stops Chromium and the file server."""

    def __init__(self, onnx_dir: Path, scratch: Path, threads: int = 2) -> None:
        missing = missing_pieces()
        if missing:
            raise BrowserUnavailable("the browser engine needs " + ", ".join(missing))
        site = write_site(onnx_dir, scratch / "site", bundles=("exact",)).out_dir
        handler = functools.partial(_Quiet, directory=str(site))
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self._server.serve_forever, name="mimistack-parity-site", daemon=True).start()
        url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        self._log = scratch / "page-engine.log"
        with open(self._log, "wb") as log:  # a file, not a pipe: Chromium's chatter must not fill a buffer
            self._process = subprocess.Popen(
                ["node", str(DRIVER), "--url", url, "--threads", str(threads)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        try:
            self.ready = self._read()["ready"]
        except Exception:
            self.close()
            raise

    def _read(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            error = self._log.read_text(errors="replace")
            raise BrowserUnavailable(f"the page engine stopped: {error.strip()[-2000:] or 'no output'}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise BrowserUnavailable(f"the page engine failed: {answer['error']}")
        return answer

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        assert self._process.stdin is not None
        self._process.stdin.write(json.dumps(request) + "\n")
        self._process.stdin.flush()
        return self._read()

    def encode(self, pcm: NDArray[np.float32], one_call: bool = False) -> NDArray[np.int64]:
        """Codes `[levels, frames]`; `one_call`: through the frame stream in one call (the page splits it)."""
        data = base64.b64encode(np.ascontiguousarray(pcm, dtype="<f4").tobytes()).decode("ascii")
        answer = self._ask({"op": "encode", "pcm": data, "oneCall": one_call})
        codes = np.frombuffer(base64.b64decode(answer["codes"]), dtype="<u2")
        return codes.reshape(-1, int(answer["numFrames"])).astype(np.int64)

    def decode(self, codes: NDArray[np.int64], one_call: bool = False) -> NDArray[np.float32]:
        """pcm of the given levels' codes `[levels, frames]`; `one_call` as for `encode`."""
        levels, frames = codes.shape
        data = base64.b64encode(np.ascontiguousarray(codes, dtype="<u2").tobytes()).decode("ascii")
        request = {"op": "decode", "codes": data, "numFrames": frames, "levels": levels, "oneCall": one_call}
        answer = self._ask(request)
        return np.frombuffer(base64.b64decode(answer["pcm"]), dtype="<f4").astype(np.float32)

    def close(self) -> None:
        if self._process.poll() is None:
            if self._process.stdin is not None:
                self._process.stdin.close()
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._server.shutdown()
        self._server.server_close()
