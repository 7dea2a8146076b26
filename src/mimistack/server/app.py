"""The FastAPI application behind `mimistack serve`: the single-page app, the ONNX graphs it runs, a server-side API.

Sits on `codec` (server-side encode/decode), `engine.onnx_cache` (the ONNX graphs the page runs with
onnxruntime-web), `tokens`/`mimifile` (`.mimi` bytes), `audio`, `weights` and `server.security`; started by
`cli.server`. The page's sources are in `web/` and
its build lands in `static/` next to this file.

Two ways to use the page:

* **browser mode** (default): the page downloads the ONNX graphs from `/models/` and encodes and decodes inside the
  browser; no audio is sent to this server.
* **server mode** (long files): the page uploads the audio to `POST /api/encode` and gets the token grid back, then
  sends the grid as a `.mimi` file to `POST /api/decode?levels=...` and gets a WAV back. One request at a time
  uses the model (a lock); uploads have a size limit and are checked to be audio before anything decodes them.

Security: every response carries a Content-Security-Policy that allows only this origin (plus
`'wasm-unsafe-eval'` so the page can compile WebAssembly), `nosniff`, no referrer, and (unless turned off)
Cross-Origin-Opener/Embedder-Policy headers, which make the page cross-origin isolated so onnxruntime-web can use
threads. Static paths are resolved inside their folder only. When bound to loopback, requests whose Host header is
not a loopback name are refused (DNS rebinding), and so are POSTs from another origin.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import logging
import re
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from .._version import __version__
from ..config import MimiConfig
from ..engine.base import EngineError
from ..engine.options import OnnxOptions, TorchOptions, torch_available
from ..errors import MimistackError
from .security import (
    NOT_BUILT_PAGE,
    SecurityMiddleware,
    _cache_control,
    _media_type,
    resolve_static,
)

if TYPE_CHECKING:
    from ..codec import Codec
    from ..tokens import TokenGrid

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"  # = engine.export.site.PAGE_DIR
DEFAULT_PORT = 8765
DEFAULT_MAX_UPLOAD_BYTES = 200 * 1024 * 1024
DEFAULT_MAX_AUDIO_SECONDS = 3 * 3600.0
RANDOM_WEIGHTS = ("random", "random-tiny")
WEB_BUNDLES = ("exact", "light")
"""The page's model bundles (`engine.export.web`), made from the export folder on first use and served under
`/models/<bundle>/`; `/models/bundles.json` lists them with their sizes."""


# Leading bytes of the audio containers the server accepts: (offset, bytes) pairs that must all match.
_AUDIO_SIGNATURES: tuple[tuple[str, tuple[tuple[int, bytes], ...]], ...] = (
    (".wav", ((0, b"RIFF"), (8, b"WAVE"))),
    (".wav", ((0, b"RF64"), (8, b"WAVE"))),
    (".w64", ((0, b"riff"),)),
    (".flac", ((0, b"fLaC"),)),
    (".ogg", ((0, b"OggS"),)),
    (".aiff", ((0, b"FORM"), (8, b"AIFF"))),
    (".aiff", ((0, b"FORM"), (8, b"AIFC"))),
    (".caf", ((0, b"caff"),)),
    (".mp3", ((0, b"ID3"),)),
    (".m4a", ((4, b"ftyp"),)),
    (".webm", ((0, b"\x1a\x45\xdf\xa3"),)),
)


class ApiError(MimistackError):
    """An error the page shows to the user: an HTTP status and a sentence."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """What `mimistack serve` was asked for."""

    weights: str = "kyutai/mimi"
    """Weights source given to `Codec.load` and to the ONNX export (a file, a hub id, 'random', 'random-tiny')."""
    onnx_dir: Path | None = None
    """A folder written by `export_onnx`; None exports on first use into the cache."""
    revision: str | None = None
    engine: str = "auto"
    """Engine of the server-side mode ('torch' or 'onnx')."""
    device: str = "cpu"
    num_threads: int | None = None
    static_dir: Path = STATIC_DIR
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_audio_seconds: float = DEFAULT_MAX_AUDIO_SECONDS
    cross_origin_isolation: bool = True
    """Send COOP/COEP so the page may use threaded WebAssembly."""
    loopback_only: bool = True
    """Refuse requests whose Host header is not a loopback name (DNS-rebinding defence)."""

    def __post_init__(self) -> None:
        if self.max_upload_bytes <= 0:
            raise ValueError(f"max_upload_bytes must be positive, got {self.max_upload_bytes}")
        if self.max_audio_seconds <= 0:
            raise ValueError(f"max_audio_seconds must be positive, got {self.max_audio_seconds}")


# -- models ---------------------------------------------------------------------------------------------------
class ModelService:
    """Loads the weights, the server-side codec and the exported ONNX folder lazily, each once.

    `model_lock` serialises every use of the codec: one encode or decode runs at a time, others wait.
    """

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.model_lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._export_lock = threading.Lock()
        self._codec: Codec | None = None
        self._onnx_dir: Path | None = settings.onnx_dir
        self._manifest: dict[str, Any] | None = None
        self._bundles: dict[str, tuple[Path, dict[str, Any]]] | None = None
        self._export_error: str | None = None
        self._export_thread: threading.Thread | None = None

    def prepare_graphs(self) -> None:
        """Find or export the ONNX graphs in the background (an export of the official model takes minutes), so
        that the page finds them ready; `graphs_status` reports progress."""
        if self._export_thread is None and self._onnx_dir is None:
            self._export_thread = threading.Thread(target=self._prepare, name="mimistack-export", daemon=True)
            self._export_thread.start()

    def _prepare(self) -> None:
        try:
            self.bundles()
        except ApiError as error:
            logger.error("%s", error.message)

    def graphs_status(self) -> dict[str, Any]:
        """{"ready": bool, "error": str | None}: whether the page can fetch the graphs now."""
        ready = self._bundles is not None
        exported = self._onnx_dir is not None and (self._onnx_dir / "manifest.json").is_file()
        if not exported and self._onnx_dir is not None and self._export_error is None:
            self._export_error = f"{self._onnx_dir} holds no manifest.json: not a folder written by export_onnx"
        if not ready and self._export_error is None:
            self.prepare_graphs()
        return {
            "ready": ready,
            "error": None if ready else self._export_error,
            "exporting": not ready and self._export_thread is not None and self._export_thread.is_alive(),
        }

    @property
    def random_weights(self) -> bool:
        return self.settings.weights in RANDOM_WEIGHTS

    def weights_path(self) -> Path:
        from ..codec import random_weights_path
        from ..weights import resolve_weights

        if self.random_weights:
            return random_weights_path(self.settings.weights)
        return resolve_weights(self.settings.weights, revision=self.settings.revision)

    def codec(self) -> Codec:
        with self._load_lock:
            if self._codec is None:
                from ..codec import Codec

                started = time.perf_counter()
                self._codec = Codec.load(
                    self.settings.weights, engine=self._engine_options(), revision=self.settings.revision
                )
                logger.info("loaded %r in %.1f s", self._codec, time.perf_counter() - started)
            return self._codec

    def _engine_options(self) -> TorchOptions | OnnxOptions:
        engine = self.settings.engine
        if engine == "auto":
            engine = "torch" if torch_available() else "onnx"
        if engine == "torch" and self.settings.onnx_dir is not None and not torch_available():
            engine = "onnx"  # a torch-free install serving exported graphs: run those on the server too
        if engine == "torch":
            return TorchOptions(device=self.settings.device, num_threads=self.settings.num_threads)
        return OnnxOptions(
            onnx_dir=self.settings.onnx_dir, device=self.settings.device, num_threads=self.settings.num_threads
        )

    def onnx_dir(self) -> Path:
        """The folder of exported graphs: `--onnx DIR`, or exported into the cache on first use."""
        with self._export_lock:
            if self._onnx_dir is None:
                try:
                    self._onnx_dir = export_to_cache(self.weights_path())
                except EngineError as error:
                    self._export_error = f"no ONNX graphs for the page: {error}"
                    raise ApiError(503, self._export_error) from error
                except Exception as error:
                    self._export_error = f"cannot export the ONNX graphs: {type(error).__name__}: {error}"
                    raise ApiError(503, self._export_error) from error
            if not (self._onnx_dir / "manifest.json").is_file():
                raise ApiError(503, f"{self._onnx_dir} holds no manifest.json: not a folder written by export_onnx")
            return self._onnx_dir

    def manifest(self) -> dict[str, Any]:
        if self._manifest is None:
            folder = self.onnx_dir()
            try:
                manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
            except (OSError, ValueError) as error:
                raise ApiError(503, f"cannot read {folder / 'manifest.json'}: {error}") from error
            if not isinstance(manifest, dict):
                raise ApiError(503, f"{folder / 'manifest.json'} is not a JSON object")
            self._manifest = manifest
        return self._manifest

    def bundles(self) -> dict[str, tuple[Path, dict[str, Any]]]:
        """The page's bundles ({name: (folder, manifest)}), made from the export folder on first use."""
        with self._export_lock:
            if self._bundles is not None:
                return self._bundles
        folder = self.onnx_dir()
        with self._export_lock:
            if self._bundles is None:
                from ..engine.export.site import cached_bundles

                try:
                    self._bundles = cached_bundles(folder, WEB_BUNDLES)
                except Exception as error:
                    self._export_error = f"cannot make the page's model bundles: {type(error).__name__}: {error}"
                    raise ApiError(503, self._export_error) from error
            return self._bundles

    def bundles_index(self) -> dict[str, Any]:
        from ..engine.export.web import bundles_index

        return bundles_index({name: manifest for name, (_, manifest) in self.bundles().items()}, server=True)

    def model_file(self, bundle: str, name: str) -> Path:
        """A file of a bundle by name, only if its manifest lists it (or it is the manifest)."""
        if bundle not in WEB_BUNDLES:
            raise ApiError(404, f"no model bundle {bundle!r}; the bundles are {', '.join(WEB_BUNDLES)}")
        folder, manifest = self.bundles()[bundle]
        if name != "manifest.json" and name not in manifest["files"]:
            raise ApiError(404, f"no model file {name!r} in the {bundle} bundle")
        path = (folder / name).resolve()
        if path.parent != folder.resolve() or not path.is_file():
            raise ApiError(404, f"model file {name!r} is not in the {bundle} bundle's folder")
        return path

    def config(self) -> MimiConfig:
        """The model's configuration, from the ONNX manifest when one is given, else from the weights."""
        if self.settings.onnx_dir is not None:
            data = self.manifest().get("config")
            if isinstance(data, dict):
                return MimiConfig.from_dict(data)
        config: MimiConfig = self.codec().config
        return config


def export_to_cache(weights_path: Path) -> Path:
    """The ONNX folder of `weights_path` in the engine's export cache, exported on first use (needs torch)."""
    from ..engine.onnx_cache import load_onnx_engine

    return load_onnx_engine(weights=weights_path).onnx_dir


# -- uploads ----------------------------------------------------------------------------------------------------
def sniff_audio(head: bytes) -> str | None:
    """The suffix of the audio container `head` starts with, or None when it is not one the server accepts."""
    for suffix, checks in _AUDIO_SIGNATURES:
        if all(head[offset : offset + len(magic)] == magic for offset, magic in checks):
            return suffix
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:  # MPEG audio frame sync (MP3 without ID3)
        return ".mp3"
    return None


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is larger than `limit` bytes (before reading it all)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, "the Content-Length header is not a number") from None
        if size > limit:
            raise ApiError(413, f"upload of {size} bytes is larger than the server's limit of {limit} bytes")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ApiError(413, f"upload is larger than the server's limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body:
        raise ApiError(400, "the request has no body: send the file's bytes")
    return body


# -- server-side encode and decode ------------------------------------------------------------------------------
def encode_upload(service: ModelService, body: bytes, name: str) -> TokenGrid:
    """Audio file bytes -> TokenGrid (all levels), with content and length checks."""
    from ..audio import AudioError, audio_info
    from ..codec import AudioTooLongError, CodecError

    suffix = sniff_audio(body[:16])
    if suffix is None:
        raise ApiError(
            415, "the upload is not an audio file the server recognises (WAV, FLAC, Ogg, AIFF, CAF, MP3, M4A or WebM)"
        )
    with tempfile.TemporaryDirectory(prefix="mimistack-upload-") as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(body)
        try:
            info = audio_info(path)
        except AudioError as error:
            raise ApiError(400, f"cannot read the audio: {error}") from error
        limit = service.settings.max_audio_seconds
        if info.duration is not None and info.duration > limit:
            raise ApiError(413, f"the audio is {info.duration:.1f} s long; the server accepts at most {limit:g} s")
        codec = service.codec()
        with service.model_lock:
            try:
                grid = codec.encode_file(path, max_seconds=limit)
            except AudioTooLongError as error:
                raise ApiError(413, f"the audio is longer than the server's limit of {limit:g} s") from error
            except (AudioError, CodecError) as error:
                raise ApiError(400, f"cannot decode the audio: {error}") from error
    if grid.num_samples == 0:
        raise ApiError(400, "the upload holds no audio samples")
    return grid.replace(metadata={"source": name, "mimistack_version": __version__})


def grid_json(grid: TokenGrid, elapsed: float) -> dict[str, Any]:
    """A TokenGrid as JSON for the page: `codes` is base64 of uint16 little-endian, level-major `[K, T]`."""
    return {
        "num_levels": grid.num_levels,
        "num_frames": grid.num_frames,
        "num_samples": grid.num_samples,
        "sample_rate": grid.sample_rate,
        "frame_rate": grid.frame_rate,
        "codebook_size": grid.codebook_size,
        "weights_sha256": grid.weights_sha256,
        "levels_present": list(grid.present),
        "codes": base64.b64encode(grid.codes.astype("<u2").tobytes()).decode("ascii"),
        "elapsed_seconds": round(elapsed, 4),
    }


def decode_upload(service: ModelService, body: bytes, levels_text: str | None) -> tuple[bytes, str, str | None]:
    """`.mimi` bytes + a level spec -> (float32 WAV bytes, the levels decoded, a truncation note or None)."""
    import soundfile

    from ..levels import LevelsError
    from ..mimifile import ContainerError, TruncatedFileWarning
    from ..tokens import TokenGridError, grid_from_bytes

    note = None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TruncatedFileWarning)
            grid = grid_from_bytes(body, source="the upload")
        for warning in caught:
            if issubclass(warning.category, TruncatedFileWarning):
                note = str(warning.message)
    except ContainerError as error:
        raise ApiError(400, f"not a valid .mimi file: {error}") from error
    codec = service.codec()
    if grid.num_levels != codec.num_levels or grid.codebook_size != codec.codebook_size:
        raise ApiError(
            400,
            f"the file holds {grid.num_levels} levels of {grid.codebook_size} tokens; this model "
            f"has {codec.num_levels} levels of {codec.codebook_size}",
        )
    if grid.duration > service.settings.max_audio_seconds:
        raise ApiError(
            413,
            f"the grid is {grid.duration:.1f} s long; the server accepts at most "
            f"{service.settings.max_audio_seconds:g} s",
        )
    try:
        levels = grid.check_levels(levels_text) if levels_text else grid.present
    except (LevelsError, TokenGridError) as error:
        raise ApiError(400, str(error)) from error
    with service.model_lock:
        pcm = codec.decode(grid, levels)
    buffer = io.BytesIO()
    soundfile.write(buffer, np.asarray(pcm, dtype=np.float32), codec.sample_rate, format="WAV", subtype="FLOAT")
    return buffer.getvalue(), str(levels), note


# -- the application --------------------------------------------------------------------------------------------
def create_app(settings: ServerSettings) -> FastAPI:
    """The FastAPI app: `/` and static files, `/models/*`, `/api/info`, `/api/encode`, `/api/decode`."""
    service = ModelService(settings)
    app = FastAPI(title="mimistack", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service

    @app.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError) -> JSONResponse:
        return JSONResponse({"error": error.message}, status_code=error.status)

    @app.get("/api/info")
    async def info() -> JSONResponse:
        try:
            config = await run_in_threadpool(service.config)
        except ApiError:
            raise
        except Exception as error:  # weights that cannot be loaded: tell the page why
            raise ApiError(503, f"cannot load the model {settings.weights!r}: {error}") from error
        return JSONResponse(
            {
                "version": __version__,
                "weights": Path(settings.weights).name if Path(settings.weights).is_file() else settings.weights,
                "random_weights": service.random_weights,
                "sample_rate": config.sample_rate,
                "frame_rate": config.frame_rate,
                "frame_size": config.frame_size,
                "num_levels": config.num_levels,
                "num_semantic": config.num_semantic,
                "codebook_size": config.codebook_size,
                "dimension": config.dimension,
                "max_upload_bytes": settings.max_upload_bytes,
                "max_audio_seconds": settings.max_audio_seconds,
                "server_engine": settings.engine,
                "cross_origin_isolation": settings.cross_origin_isolation,
            }
        )

    @app.get("/api/models")
    async def models() -> JSONResponse:
        """Whether the ONNX graphs are ready (the page waits on this while they are exported on first use)."""
        return JSONResponse(service.graphs_status())

    @app.get("/models/bundles.json")
    async def bundles() -> JSONResponse:
        return JSONResponse(await run_in_threadpool(service.bundles_index), headers={"cache-control": "no-cache"})

    @app.get("/models/{bundle}/{name}")
    async def model_file(bundle: str, name: str) -> FileResponse:
        try:
            path = await run_in_threadpool(service.model_file, bundle, name)
        except ApiError:
            raise
        except Exception as error:
            raise ApiError(503, f"cannot export the ONNX graphs: {type(error).__name__}: {error}") from error
        # The page keeps model files in its own cache, keyed by sha256; the manifest is checked on every visit.
        return FileResponse(path, media_type=_media_type(path), headers={"cache-control": "no-cache"})

    @app.post("/api/encode")
    async def encode(request: Request, format: str = "json", name: str = "upload") -> Response:
        if format not in ("json", "mimi"):
            raise ApiError(400, f"format must be 'json' or 'mimi', got {format!r}")
        body = await read_body(request, settings.max_upload_bytes)
        started = time.perf_counter()
        grid = await run_in_threadpool(encode_upload, service, body, name[:200])
        elapsed = time.perf_counter() - started
        if format == "mimi":
            from ..tokens import grid_to_bytes

            stem = Path(name).stem or "tokens"
            return Response(
                grid_to_bytes(grid),
                media_type="application/octet-stream",
                headers={"content-disposition": f'attachment; filename="{_ascii_name(stem)}.mimi"'},
            )
        return JSONResponse(grid_json(grid, elapsed))

    @app.post("/api/decode")
    async def decode(request: Request, levels: str | None = None) -> Response:
        body = await read_body(request, settings.max_upload_bytes)
        wav, decoded, note = await run_in_threadpool(decode_upload, service, body, levels)
        headers = {"x-mimistack-levels": decoded}
        if note:
            headers["x-mimistack-warning"] = note.encode("ascii", "replace").decode("ascii")
        return Response(wav, media_type="audio/wav", headers=headers)

    @app.get("/")
    async def index() -> Response:
        return _static_response(settings.static_dir, "index.html")

    @app.get("/{path:path}")
    async def static(path: str) -> Response:
        if path.startswith(("api/", "models/")):
            raise ApiError(404, f"no such endpoint /{path}")
        return _static_response(settings.static_dir, path)

    app.add_middleware(
        SecurityMiddleware, loopback_only=settings.loopback_only, cross_origin_isolation=settings.cross_origin_isolation
    )
    return app


def _static_response(root: Path, relative: str) -> Response:
    path = resolve_static(root, relative)
    if path is None:
        if relative == "index.html":
            return Response(NOT_BUILT_PAGE, status_code=503, media_type="text/html; charset=utf-8")
        return JSONResponse({"error": "not found"}, status_code=404)
    return FileResponse(path, media_type=_media_type(path), headers={"cache-control": _cache_control(relative)})


def _ascii_name(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", stem)[:100] or "tokens"


def serve(settings: ServerSettings, host: str = "127.0.0.1", port: int = DEFAULT_PORT, log_level: str = "info") -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    app = create_app(settings)
    app.state.service.prepare_graphs()  # the page's first visit then finds them ready (or nearly)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, server_header=False)
