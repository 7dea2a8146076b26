"""The ONNX Runtime engine: exported Mimi graphs behind the `Engine` interface, on onnxruntime and numpy only.

Sits on `engine.base` (the interface), `levels` (codebook tables and the latent sum of any level subset),
`config` and `weights` (finding a checkpoint and its sha256, torch-free); driven by `mimistack.codec.Codec`. Reads
the folders that `engine.export` writes; never imports torch, so `pip install mimistack` without the `[torch]`
extra runs it from exported graphs.

An export folder (see `engine.export` for how each graph is made):

    manifest.json          format, config, weights sha256, opset, files with sha256 and size, stream states
    encoder_stream.onnx    pcm float32 [B, 1, N*frame_size] + state_in_i -> codes int64 [B, K, N] + state_out_i
    decoder_stream.onnx    latent float32 [B, dimension, N] + state_in_i -> pcm float32 [B, 1, N*frame_size] + ...
    codebooks.safetensors  the quantizer tables (`levels.CodebookTables`)
    encoder.onnx, decoder.onnx, embed.onnx, transformers.js/   for other clients (browser, transformers.js)

The engine runs everything through the stream graphs: their state starts as zeros, and streaming from zero state
is batch mode's arithmetic, so batch calls, chunked batch calls and streams share one graph per direction. Decoding
any level subset goes through the one decoder graph: the latent comes from `levels.latent_from_codes`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import MimiConfig
from ..levels import CodebookTables, Levels, latent_from_codes
from .base import CacheMode, EngineError

logger = logging.getLogger(__name__)

FORMAT = "mimistack-onnx"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
CODEBOOKS_NAME = "codebooks.safetensors"
TRANSFORMERS_JS_DIR = "transformers.js"
VARIANTS = ("fp32", "fp16", "int8")
DEFAULT_THREADS = 2
STREAM_GRAPHS: dict[tuple[str, CacheMode], str] = {
    ("encoder", "window"): "encoder_stream",
    ("decoder", "window"): "decoder_stream",
    ("encoder", "moshi"): "encoder_stream_moshi",
    ("decoder", "moshi"): "decoder_stream_moshi",
}
"""Stream graph per (direction, cache mode). "moshi" graphs keep Kyutai's ring-cache arithmetic (opt-in export)."""
CODEBOOK_FIELDS = tuple(f.name for f in dataclasses.fields(CodebookTables))


class OnnxDirError(EngineError):
    """An export folder that is missing, incomplete, corrupt or made for other weights."""


def graph_file(name: str, variant: str = "fp32") -> str:
    """File name of graph `name` ("encoder", "decoder_stream", ...) in `variant` ("fp32", "fp16", "int8")."""
    if variant not in VARIANTS:
        raise EngineError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    return f"{name}.onnx" if variant == "fp32" else f"{name}.{variant}.onnx"


def cache_root() -> Path:
    """Where exports made on first use are kept: `$MIMISTACK_CACHE/onnx` (default `~/.cache/mimistack/onnx`)."""
    return Path(os.environ.get("MIMISTACK_CACHE") or Path.home() / ".cache" / "mimistack") / "onnx"


def cached_export_dir(weights_sha256: str) -> Path:
    """The cache folder of the graphs exported from the weights with this sha256."""
    return cache_root() / weights_sha256


# -- the folder -----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StateSpec:
    """One state tensor of a stream graph. `shape` holds "batch" where the batch size goes; every state starts as
    zeros."""

    input: str
    output: str
    shape: tuple[int | str, ...]
    dtype: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StateSpec:
        return cls(input=data["name"], output=data["output"], shape=tuple(data["shape"]), dtype=data["dtype"])

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.input, "output": self.output, "shape": list(self.shape), "dtype": self.dtype,
                "initial": 0}

    def zeros(self, batch_size: int) -> np.ndarray:
        shape = tuple(batch_size if dim == "batch" else int(dim) for dim in self.shape)
        return np.zeros(shape, dtype=np.dtype(self.dtype))


def read_manifest(onnx_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of an export folder, checked for format and version (files are checked by `check_files`)."""
    folder = Path(onnx_dir)
    hint = f"export one with `mimistack export-onnx --weights W -o {folder}` (needs torch) and pass --onnx {folder}"
    if not folder.exists():
        raise OnnxDirError(f"ONNX folder {folder} does not exist; {hint}")
    if not folder.is_dir():
        raise OnnxDirError(f"{folder} is a file, not an ONNX export folder; {hint}")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise OnnxDirError(f"{folder} holds no {MANIFEST_NAME}, so it is not a mimistack ONNX export; {hint}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise OnnxDirError(f"{path} is corrupt ({error}); re-export with `mimistack export-onnx --force`") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise OnnxDirError(f"{path} is not a mimistack ONNX manifest (format {found!r}, expected {FORMAT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise OnnxDirError(f"{path} has format version {manifest.get('format_version')!r}; this mimistack reads "
                           f"version {FORMAT_VERSION}: re-export with this version (`mimistack export-onnx --force`)")
    missing = [key for key in ("config", "weights_sha256", "files", "streams", "opset") if key not in manifest]
    if missing:
        raise OnnxDirError(f"{path} lacks {', '.join(missing)}; re-export with `mimistack export-onnx --force`")
    return manifest


def check_files(onnx_dir: str | os.PathLike[str], manifest: dict[str, Any], names: Sequence[str],
                verify_sha256: bool = False) -> None:
    """Every file in `names` is listed, present and of the recorded size (and sha256 when asked)."""
    from ..weights import file_sha256

    folder = Path(onnx_dir)
    files = manifest["files"]
    for name in names:
        entry = files.get(name)
        if entry is None:
            raise OnnxDirError(f"{folder / MANIFEST_NAME} does not list {name}; re-export with "
                               "`mimistack export-onnx --force` (and the variant or stream mode you need)")
        path = folder / name
        if not path.is_file():
            raise OnnxDirError(f"{path} is missing from the export; re-export with `mimistack export-onnx --force`")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise OnnxDirError(f"{path} is {size} bytes, the manifest says {entry['bytes']}: the export is corrupt "
                               "or was changed; re-export with `mimistack export-onnx --force`")
        if verify_sha256 and file_sha256(path) != entry["sha256"]:
            raise OnnxDirError(f"{path} does not match its sha256 in the manifest: the export is corrupt; re-export "
                               "with `mimistack export-onnx --force`")


def load_codebooks(path: str | os.PathLike[str]) -> CodebookTables:
    """The codebook tables saved beside the graphs (safetensors, numpy)."""
    from safetensors.numpy import load_file

    try:
        arrays = load_file(str(path))
    except Exception as error:
        raise OnnxDirError(f"{path} is not a readable safetensors file ({error}); re-export with "
                           "`mimistack export-onnx --force`") from error
    missing = [name for name in CODEBOOK_FIELDS if name not in arrays]
    if missing:
        raise OnnxDirError(f"{path} lacks {', '.join(missing)}; re-export with `mimistack export-onnx --force`")
    return CodebookTables(**{name: np.ascontiguousarray(arrays[name], dtype=np.float32) for name in CODEBOOK_FIELDS})


# -- sessions -------------------------------------------------------------------------------------------------
_shared_pool_threads: int | None = None  # size of the process-wide pool mimistack created, -1: could not
_shared_pool_lock = threading.Lock()
_prefer_shared_pool = os.environ.get("MIMISTACK_ORT_SHARED_POOL", "") == "1"


def prefer_shared_thread_pool(enabled: bool = True) -> None:
    """Let engines made with `thread_pool="auto"` (the default) run on one process-wide ONNX Runtime thread pool.

    Why: each session otherwise owns a pool whose threads spin for a while after every run; a stream alternates the
    encoder, embed and decoder sessions, so on a 2-core machine one session's spinning threads steal the core the
    next one needs (measured: 66 + 57 ms per streamed frame with per-session pools, 28 + 24 ms with one shared
    pool; BENCHMARKS.md). The catch: once ONNX Runtime has a global pool, every other session in the process must
    be created with `use_per_session_threads = False`, or ONNX Runtime refuses it. So it is opt-in for library
    users (this call, or MIMISTACK_ORT_SHARED_POOL=1); the `mimistack` program turns it on for itself.
    """
    global _prefer_shared_pool
    _prefer_shared_pool = enabled


def shared_pool_threads() -> int | None:
    """Threads of the process-wide pool if mimistack created one, else None."""
    return _shared_pool_threads if _shared_pool_threads and _shared_pool_threads > 0 else None


def shared_thread_pool(num_threads: int) -> bool:
    """Create the process-wide pool with `num_threads` threads if there is none yet; whether there is one now.

    Once it exists, ONNX Runtime runs every later session on it (it refuses private pools), whatever thread count
    that session asked for."""
    global _shared_pool_threads
    import onnxruntime as ort

    with _shared_pool_lock:
        if _shared_pool_threads is None:
            try:
                ort.set_global_thread_pool_sizes(num_threads, 1)
                _shared_pool_threads = num_threads
            except Exception as error:  # an onnxruntime without it
                logger.info("no shared ONNX Runtime thread pool (%s); sessions get their own", error)
                _shared_pool_threads = -1
        if _shared_pool_threads > 0 and _shared_pool_threads != num_threads:
            logger.info("ONNX Runtime's shared pool has %d threads; %d were asked for", _shared_pool_threads,
                        num_threads)
        return _shared_pool_threads > 0


def session_options(num_threads: int | None = None, optimization: str = "all", spinning: bool = True,
                    shared_pool: bool = False) -> Any:
    """ONNX Runtime options: `num_threads` intra-op threads (default 2), sequential execution, and a graph
    optimisation level ("disable", "basic", "extended", "all"). `shared_pool`: run on the process-wide pool made
    by `shared_thread_pool` (the thread count is then that pool's)."""
    import onnxruntime as ort

    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    if optimization not in levels:
        raise EngineError(f"unknown optimization level {optimization!r}; expected one of {', '.join(levels)}")
    threads = DEFAULT_THREADS if num_threads is None else num_threads
    if threads < 1:
        raise EngineError(f"num_threads must be at least 1, got {threads}")
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[optimization]
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # ORT's warnings about unused initializers etc. are noise to a user
    if shared_pool:
        options.use_per_session_threads = False
        return options
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def providers_for(device: str) -> list[Any]:
    import onnxruntime as ort

    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda" or device.startswith("cuda:"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise EngineError(f"device {device!r} needs onnxruntime-gpu (CUDAExecutionProvider); this onnxruntime "
                              f"offers {', '.join(ort.get_available_providers())}")
        device_id = int(device.split(":", 1)[1]) if ":" in device else 0
        return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
    raise EngineError(f"unknown device {device!r} for the onnx engine; expected 'cpu', 'cuda' or 'cuda:N'")


@dataclasses.dataclass
class OnnxStreamState:
    """The state of one stream graph between calls: `arrays` in the order of the graph's `state_in_i` inputs."""

    graph: str
    batch_size: int
    arrays: list[np.ndarray]


class OnnxEngine:
    """Mimi on ONNX Runtime from an export folder. `variant`: "fp32" (exact), "fp16" or "int8" (if exported; their
    measured error is in the manifest). `optimization`: ONNX Runtime graph optimisation level. `thread_pool`:
    "session" (a pool per session; `spinning`: whether its idle threads spin), "shared" (ONNX Runtime's
    process-wide pool, much faster when streaming: see `prefer_shared_thread_pool` for the catch) or "auto"
    (the default: "shared" when `prefer_shared_thread_pool()` was called, else "session")."""

    name = "onnx"

    def __init__(self, onnx_dir: str | os.PathLike[str], *, device: str = "cpu", num_threads: int | None = None,
                 variant: str = "fp32", optimization: str = "all", verify_sha256: bool = False,
                 spinning: bool = True, thread_pool: str = "auto") -> None:
        try:
            import onnxruntime
        except ImportError as error:  # pragma: no cover - a core dependency
            raise EngineError("the onnx engine needs onnxruntime: pip install onnxruntime") from error
        self.ort = onnxruntime
        self.onnx_dir = Path(onnx_dir)
        self.manifest = read_manifest(self.onnx_dir)
        try:
            self.config = MimiConfig.from_dict(self.manifest["config"])
        except (TypeError, ValueError) as error:
            raise OnnxDirError(f"{self.onnx_dir / MANIFEST_NAME} holds an invalid config: {error}") from error
        self.weights_sha256: str = self.manifest["weights_sha256"]
        self.variant = variant
        graph_file("encoder", variant)  # validates the variant name
        needed = [CODEBOOKS_NAME, graph_file("encoder_stream", variant), graph_file("decoder_stream", variant)]
        check_files(self.onnx_dir, self.manifest, needed, verify_sha256)
        self.tables: CodebookTables = load_codebooks(self.onnx_dir / CODEBOOKS_NAME)
        if self.tables.num_levels != self.config.num_levels:
            raise OnnxDirError(f"{self.onnx_dir / CODEBOOKS_NAME} has {self.tables.num_levels} levels, the config "
                               f"{self.config.num_levels}")
        self.device = device
        self._providers = providers_for(device)
        if thread_pool not in ("auto", "shared", "session"):
            raise EngineError(f"unknown thread_pool {thread_pool!r}; expected 'auto', 'shared' or 'session'")
        threads = DEFAULT_THREADS if num_threads is None else num_threads
        if threads < 1:
            raise EngineError(f"num_threads must be at least 1, got {threads}")
        wants_shared = thread_pool == "shared" or (thread_pool == "auto" and _prefer_shared_pool)
        shared = (wants_shared and device == "cpu" and shared_thread_pool(threads)) or shared_pool_threads() is not None
        self.thread_pool = "shared" if shared else "session"
        self._threads, self._optimization = threads, optimization
        self.session_options = session_options(threads, optimization, spinning, shared_pool=shared)
        self._verify_sha256 = verify_sha256
        self._sessions: dict[str, Any] = {}
        self._states = {name: [StateSpec.from_dict(s) for s in spec["states"]]
                        for name, spec in self.manifest["streams"].items()}

    def __repr__(self) -> str:
        return f"OnnxEngine({str(self.onnx_dir)!r}, variant={self.variant!r}, device={self.device!r})"

    # -- sessions -------------------------------------------------------------------------------------------
    def session(self, graph: str) -> Any:
        """The ONNX Runtime session of graph `graph` (created on first use)."""
        if graph not in self._sessions:
            name = graph_file(graph, self.variant)
            check_files(self.onnx_dir, self.manifest, [name], self._verify_sha256)
            path = self.onnx_dir / name
            options = self.session_options
            if self.thread_pool == "session" and shared_pool_threads() is not None:
                # A shared pool appeared since this engine was made: ONNX Runtime refuses private pools now.
                self.thread_pool = "shared"
                options = self.session_options = session_options(self._threads, self._optimization, shared_pool=True)
            try:
                self._sessions[graph] = self.ort.InferenceSession(str(path), sess_options=options,
                                                                  providers=self._providers)
            except Exception as error:
                raise OnnxDirError(f"ONNX Runtime cannot load {path} ({type(error).__name__}: {error}); the export "
                                   "is corrupt or too new for this onnxruntime: re-export with "
                                   "`mimistack export-onnx --force`") from error
        return self._sessions[graph]

    def warm_up(self) -> None:
        """Create the encoder and decoder sessions now (they are otherwise made on first use)."""
        self.session(STREAM_GRAPHS["encoder", "window"])
        self.session(STREAM_GRAPHS["decoder", "window"])

    def _stream_graph(self, direction: str, mode: CacheMode) -> str:
        if (direction, mode) not in STREAM_GRAPHS:
            raise EngineError(f"unknown cache mode {mode!r}; expected 'window' or 'moshi'")
        graph = STREAM_GRAPHS[direction, mode]
        if graph not in self.manifest["streams"]:
            raise EngineError(f"{self.onnx_dir} has no {graph}.onnx: cache mode {mode!r} needs an export made with "
                              "`mimistack export-onnx --moshi-stream` (or use mode 'window')")
        return graph

    def _initial(self, graph: str, batch_size: int) -> OnnxStreamState:
        return OnnxStreamState(graph, batch_size, [spec.zeros(batch_size) for spec in self._states[graph]])

    def _run(self, graph: str, main: str, output: str, value: np.ndarray,
             state: OnnxStreamState | None) -> tuple[np.ndarray, OnnxStreamState]:
        batch_size = value.shape[0]
        if state is None:
            state = self._initial(graph, batch_size)
        elif not isinstance(state, OnnxStreamState) or state.graph != graph:
            raise EngineError(f"this state does not belong to {graph} (a state from another engine, direction or "
                              "cache mode)")
        elif state.batch_size != batch_size:
            raise EngineError(f"state is for batch size {state.batch_size}, input has {batch_size}")
        specs = self._states[graph]
        feeds = {main: value, **{spec.input: array for spec, array in zip(specs, state.arrays)}}
        outputs = self.session(graph).run([output, *(spec.output for spec in specs)], feeds)
        return outputs[0], OnnxStreamState(graph, batch_size, outputs[1:])

    # -- Engine ---------------------------------------------------------------------------------------------
    def encode(self, pcm: np.ndarray, state: Any | None, mode: CacheMode) -> tuple[np.ndarray, Any]:
        """pcm `[B, 1, N*frame_size]` -> codes int64 `[B, num_levels, N]` and the next state."""
        graph = self._stream_graph("encoder", mode)
        pcm = np.ascontiguousarray(pcm, dtype=np.float32)
        frame_size = self.config.frame_size
        if pcm.ndim != 3 or pcm.shape[1] != 1 or pcm.shape[2] % frame_size:
            raise EngineError(f"pcm must be [B, 1, N*{frame_size}], got shape {pcm.shape}")
        if pcm.shape[2] == 0:
            empty = np.zeros((pcm.shape[0], self.config.num_levels, 0), dtype=np.int64)
            return empty, state if state is not None else self._initial(graph, pcm.shape[0])
        return self._run(graph, "pcm", "codes", pcm, state)

    def decode(self, codes: np.ndarray, levels: Levels, state: Any | None,
               mode: CacheMode) -> tuple[np.ndarray, Any]:
        """codes `[B, num_levels, N]` + levels -> pcm float32 `[B, 1, N*frame_size]` and the next state."""
        graph = self._stream_graph("decoder", mode)
        latent = latent_from_codes(self.tables, np.asarray(codes), levels)
        return self.decode_latent(latent, state, graph)

    def decode_latent(self, latent: np.ndarray, state: Any | None,
                      graph: str = STREAM_GRAPHS["decoder", "window"]) -> tuple[np.ndarray, Any]:
        """latent float32 `[B, dimension, N]` -> pcm `[B, 1, N*frame_size]` (for clients with their own latent)."""
        latent = np.ascontiguousarray(latent, dtype=np.float32)
        if latent.ndim != 3 or latent.shape[1] != self.config.dimension:
            raise EngineError(f"latent must be [B, {self.config.dimension}, N], got shape {latent.shape}")
        if latent.shape[2] == 0:
            empty = np.zeros((latent.shape[0], 1, 0), dtype=np.float32)
            return empty, state if state is not None else self._initial(graph, latent.shape[0])
        return self._run(graph, "latent", "pcm", latent, state)

    def init_encoder_state(self, batch_size: int, mode: CacheMode) -> Any | None:
        return self._initial(self._stream_graph("encoder", mode), batch_size)

    def init_decoder_state(self, batch_size: int, mode: CacheMode) -> Any | None:
        return self._initial(self._stream_graph("decoder", mode), batch_size)


# -- loading --------------------------------------------------------------------------------------------------
def load_onnx_engine(weights: str | os.PathLike[str] | None = None, onnx_dir: str | os.PathLike[str] | None = None,
                     revision: str | None = None, device: str = "cpu", num_threads: int | None = None,
                     variant: str = "fp32", optimization: str = "all") -> OnnxEngine:
    """The ONNX engine for an export folder (`onnx_dir`), or for `weights` through the export cache.

    With `weights` only, the graphs come from `cached_export_dir(sha256 of the weights file)`; on first use they are
    exported there when torch is installed (a few minutes for the official model), otherwise this raises an error
    that says how to export elsewhere. With both, the folder must have been exported from those weights.
    """
    options: dict[str, Any] = {"device": device, "num_threads": num_threads, "variant": variant,
                               "optimization": optimization}
    if onnx_dir is not None:
        engine = OnnxEngine(onnx_dir, **options)
        if weights is not None:
            sha256 = _weights_sha256(weights, revision)
            if sha256 != engine.weights_sha256:
                raise OnnxDirError(f"{onnx_dir} was exported from weights with sha256 {engine.weights_sha256[:16]}…, "
                                   f"but {os.fspath(weights)!r} has sha256 {sha256[:16]}…; pass the matching weights "
                                   "or export these ones")
        return engine
    if weights is None:
        raise EngineError("the onnx engine needs exported graphs (onnx_dir / --onnx DIR) or weights to export from")
    sha256 = _weights_sha256(weights, revision)
    folder = cached_export_dir(sha256)
    if not (folder / MANIFEST_NAME).is_file():
        _export_to_cache(weights, revision, folder, sha256)
    engine = OnnxEngine(folder, **options)
    if engine.weights_sha256 != sha256:
        raise OnnxDirError(f"the cached export {folder} says it comes from weights {engine.weights_sha256[:16]}…, "
                           f"not {sha256[:16]}…; delete that folder so that it is exported again")
    return engine


def _weights_sha256(weights: str | os.PathLike[str], revision: str | None) -> str:
    from ..weights import file_sha256, resolve_weights

    return file_sha256(resolve_weights(weights, revision))


def _export_to_cache(weights: str | os.PathLike[str], revision: str | None, folder: Path, sha256: str) -> None:
    from .export import ExportDependencyError, export_onnx, require_export_dependencies  # torch only when run

    try:
        require_export_dependencies()
        logger.warning("exporting ONNX graphs for %s to %s (first use of these weights with the onnx engine; this "
                       "takes a while, later loads reuse them)", os.fspath(weights), folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(weights, folder, revision=revision, transformers_js=False)
    except ExportDependencyError as error:
        raise OnnxDirError(
            f"no exported ONNX graphs for weights {os.fspath(weights)!r} (sha256 {sha256[:16]}…) in {folder}, and "
            f"exporting them needs torch ({error}). On a machine with torch run\n"
            f"    mimistack export-onnx --weights {os.fspath(weights)} -o mimi-onnx\n"
            f"then copy the folder here and pass --onnx mimi-onnx (Codec.load(..., engine='onnx', "
            "onnx_dir='mimi-onnx'))") from error
    except FileExistsError:
        if not (folder / MANIFEST_NAME).is_file():
            raise
        logger.info("another process exported %s first", folder)
