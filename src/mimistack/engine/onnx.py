"""The ONNX Runtime engine: exported Mimi graphs behind the `Engine` interface, on onnxruntime and numpy only.

Sits on `engine.base` (the interface), `engine.onnx_format` (the export folder's schema), `engine.ort_session`
(ONNX Runtime sessions and the shared thread pool), `levels` (codebook tables and the latent sum of any level
subset) and `config`; made by `engine.onnx_cache.load_onnx_engine` and driven by `mimistack.codec.Codec`. Reads the
folders that `engine.export` writes; never imports torch, so `pip install mimistack` without the `[torch]` extra
runs it from exported graphs.

An export folder (the contract is `docs/onnx.md`; see `engine.export` for how each graph is made):

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
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import MimiConfig
from ..levels import CodebookTables, Levels, latent_from_codes
from .base import CacheMode, Direction, Engine, EngineError, check_cache_mode
from .onnx_format import (
    CODEBOOKS_NAME,
    MANIFEST_NAME,
    STREAM_GRAPHS,
    OnnxDirError,
    StateSpec,
    check_files,
    graph_file,
    load_codebooks,
    read_manifest,
    ring_frames,
    ring_slots,
)
from .ort_session import (
    DEFAULT_THREADS,
    prefer_shared_thread_pool,
    providers_for,
    session_options,
    shared_pool_preferred,
    shared_pool_threads,
    shared_thread_pool,
)

__all__ = ["OnnxEngine", "OnnxStreamState", "prefer_shared_thread_pool", "shared_pool_threads"]

logger = logging.getLogger(__name__)


STREAM_RING_FRAMES = 125
"""Frames per call a single stream's ring KV caches are sized for (`Codec`'s chunk, 10 s); longer calls are split."""
POOL_RING_FRAMES = 1
"""Frames per call a pool's rings are sized for: a pool step advances each row by one frame."""


@dataclasses.dataclass
class OnnxStreamState:
    """The state of one stream graph between calls: `arrays` in the order of the graph's `state_in_i` inputs.

    `ring`: the slot count of the graph's ring KV caches (None for graphs without a ring). `owned`: a stream pool's
    state (`pool_state`, `take_rows`, `join_rows`): a call updates its KV caches in place and returns it in a new
    object; the object given is then `spent`, and using it again is an error. Other states are never changed."""

    graph: str
    batch_size: int
    arrays: list[np.ndarray]
    ring: int | None = None
    owned: bool = False
    spent: bool = False


class OnnxEngine(Engine):
    """Mimi on ONNX Runtime from an export folder. `variant`: "fp32" (exact), "fp16" or "int8" (if exported; their
    measured error is in the manifest). `optimization`: ONNX Runtime graph optimisation level. `thread_pool`:
    "session" (a pool per session; `spinning`: whether its idle threads spin), "shared" (ONNX Runtime's
    process-wide pool, much faster when streaming: see `prefer_shared_thread_pool` for the catch) or "auto"
    (the default: "shared" when `prefer_shared_thread_pool()` was called, else "session")."""

    name = "onnx"

    def __init__(
        self,
        onnx_dir: str | os.PathLike[str],
        *,
        device: str = "cpu",
        num_threads: int | None = None,
        variant: str = "fp32",
        optimization: str = "all",
        verify_sha256: bool = False,
        spinning: bool = True,
        thread_pool: str = "auto",
    ) -> None:
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
            raise OnnxDirError(
                f"{self.onnx_dir / CODEBOOKS_NAME} has {self.tables.num_levels} levels, the config "
                f"{self.config.num_levels}"
            )
        self.device = device
        self._providers = providers_for(device)
        if thread_pool not in ("auto", "shared", "session"):
            raise EngineError(f"unknown thread_pool {thread_pool!r}; expected 'auto', 'shared' or 'session'")
        threads = DEFAULT_THREADS if num_threads is None else num_threads
        if threads < 1:
            raise EngineError(f"num_threads must be at least 1, got {threads}")
        wants_shared = thread_pool == "shared" or (thread_pool == "auto" and shared_pool_preferred())
        shared = (wants_shared and device == "cpu" and shared_thread_pool(threads)) or shared_pool_threads() is not None
        self.thread_pool = "shared" if shared else "session"
        self._threads, self._optimization = threads, optimization
        self.session_options = session_options(threads, optimization, spinning, shared_pool=shared)
        self._verify_sha256 = verify_sha256
        self._sessions: dict[str, Any] = {}
        self._states = {
            name: [StateSpec.from_dict(s) for s in spec["states"]] for name, spec in self.manifest["streams"].items()
        }
        in_place = self.manifest.get("variants", {}).get(variant, {}).get("in_place", {})
        self._in_place: dict[str, frozenset[str]] = {name: frozenset(in_place.get(name, ())) for name in self._states}

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
                self._sessions[graph] = self.ort.InferenceSession(
                    str(path), sess_options=options, providers=self._providers
                )
            except Exception as error:
                raise OnnxDirError(
                    f"ONNX Runtime cannot load {path} ({type(error).__name__}: {error}); the export "
                    "is corrupt or too new for this onnxruntime: re-export with "
                    "`mimistack export-onnx --force`"
                ) from error
        return self._sessions[graph]

    def warm_up(self) -> None:
        """Create the encoder and decoder sessions now (they are otherwise made on first use)."""
        self.session(STREAM_GRAPHS["encoder", "window"])
        self.session(STREAM_GRAPHS["decoder", "window"])

    def _stream_graph(self, direction: str, mode: CacheMode) -> str:
        check_cache_mode(mode)
        graph = STREAM_GRAPHS[direction, mode]
        if graph not in self.manifest["streams"]:
            raise EngineError(
                f"{self.onnx_dir} has no {graph}.onnx: cache mode {mode!r} needs an export made with "
                "`mimistack export-onnx --moshi-stream` (or use mode 'window')"
            )
        return graph

    def _initial(
        self, graph: str, batch_size: int, frames: int = STREAM_RING_FRAMES, owned: bool = False
    ) -> OnnxStreamState:
        ring = self.manifest["streams"][graph].get("ring")
        slots = ring_slots(ring, frames) if ring is not None else None
        arrays = [spec.zeros(batch_size, slots) for spec in self._states[graph]]
        return OnnxStreamState(graph, batch_size, arrays, slots, owned)

    def _run(
        self, graph: str, main: str, output: str, value: np.ndarray, state: OnnxStreamState | None
    ) -> tuple[np.ndarray, OnnxStreamState]:
        batch_size = value.shape[0]
        if state is None:
            state = self._initial(graph, batch_size)
        elif not isinstance(state, OnnxStreamState) or state.graph != graph:
            raise EngineError(
                f"this state does not belong to {graph} (a state from another engine, direction or cache mode)"
            )
        elif state.batch_size != batch_size:
            raise EngineError(f"state is for batch size {state.batch_size}, input has {batch_size}")
        scale = self.config.frame_size if main == "pcm" else 1
        frames = value.shape[2] // scale
        ring = self.manifest["streams"][graph].get("ring")
        limit = ring_frames(ring, state.ring) if ring is not None and state.ring is not None else frames
        if frames <= limit:
            return self._call(graph, main, output, value, state)
        parts = []  # the ring holds `limit` frames' steps beyond the context: longer inputs go in pieces
        for start in range(0, frames, limit):
            piece = np.ascontiguousarray(value[..., start * scale : (start + limit) * scale])
            part, state = self._call(graph, main, output, piece, state)
            parts.append(part)
        return np.concatenate(parts, axis=-1), state

    def _call(
        self, graph: str, main: str, output: str, value: np.ndarray, state: OnnxStreamState
    ) -> tuple[np.ndarray, OnnxStreamState]:
        """One graph call. A pool's state has its KV caches updated in place (input and output bound to one
        buffer: no copy of the caches); any other state is left as it is."""
        if state.spent:
            raise EngineError(
                "this stream pool state was already advanced (a pool's state is updated in place): use the state "
                "the call returned"
            )
        specs = self._states[graph]
        session = self.session(graph)
        in_place = self._in_place[graph] if state.owned else frozenset()
        if not in_place:
            feeds = {main: value, **{spec.input: array for spec, array in zip(specs, state.arrays)}}
            outputs = session.run([output, *(spec.output for spec in specs)], feeds)
            return outputs[0], OnnxStreamState(graph, state.batch_size, outputs[1:], state.ring, state.owned)
        binding = session.io_binding()
        binding.bind_cpu_input(main, value)
        if main == "pcm":
            result = np.empty(
                (value.shape[0], self.config.num_levels, value.shape[2] // self.config.frame_size), np.int64
            )
        else:
            result = np.empty((value.shape[0], 1, value.shape[2] * self.config.frame_size), np.float32)
        _bind(binding, "output", output, result)
        arrays = []
        for spec, array in zip(specs, state.arrays):
            if not (array.flags.c_contiguous and array.flags.writeable):
                array = np.array(array, order="C")
            _bind(binding, "input", spec.input, array)
            target = array if spec.input in in_place else np.empty_like(array)
            _bind(binding, "output", spec.output, target)
            arrays.append(target)
        session.run_with_iobinding(binding)
        state.spent = True
        return result, OnnxStreamState(graph, state.batch_size, arrays, state.ring, owned=True)

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

    def decode(self, codes: np.ndarray, levels: Levels, state: Any | None, mode: CacheMode) -> tuple[np.ndarray, Any]:
        """codes `[B, num_levels, N]` + levels -> pcm float32 `[B, 1, N*frame_size]` and the next state."""
        latent = latent_from_codes(self.tables, np.asarray(codes), levels)
        return self.decode_latent(latent, state, mode)

    def decode_latent(
        self, latent: np.ndarray, state: Any | None, mode: CacheMode = "window"
    ) -> tuple[np.ndarray, Any]:
        """latent float32 `[B, dimension, N]` -> pcm `[B, 1, N*frame_size]` (for clients with their own latent)."""
        graph = self._stream_graph("decoder", mode)
        latent = np.ascontiguousarray(latent, dtype=np.float32)
        if latent.ndim != 3 or latent.shape[1] != self.config.dimension:
            raise EngineError(f"latent must be [B, {self.config.dimension}, N], got shape {latent.shape}")
        if latent.shape[2] == 0:
            empty = np.zeros((latent.shape[0], 1, 0), dtype=np.float32)
            return empty, state if state is not None else self._initial(graph, latent.shape[0])
        return self._run(graph, "latent", "pcm", latent, state)

    # -- stream pools: every state array carries the batch on dim 0 -------------------------------------------
    @property
    def supports_pools(self) -> bool:  # type: ignore[override]
        """Whether every stream state is per row (exports of mimistack >= 0.3 keep one position per row)."""
        return all(spec.shape[:1] == ("batch",) for specs in self._states.values() for spec in specs)

    def pool_state(self, direction: Direction, batch_size: int, mode: CacheMode) -> OnnxStreamState:
        graph = self._stream_graph(direction, mode)
        if not self.supports_pools:
            unbatched = [s.input for specs in self._states.values() for s in specs if s.shape[:1] != ("batch",)]
            raise EngineError(
                f"{self.onnx_dir} was exported before stream pools (state {unbatched[0]} is shared by all rows); "
                "re-export it with `mimistack export-onnx --force` (or delete it from the cache)"
            )
        return self._initial(graph, batch_size, POOL_RING_FRAMES, owned=True)

    def take_rows(self, state: OnnxStreamState, rows: Sequence[int]) -> OnnxStreamState:
        index = np.asarray(rows, dtype=np.intp)
        arrays = [array[index] for array in state.arrays]
        return OnnxStreamState(state.graph, len(index), arrays, state.ring, owned=True)

    def join_rows(self, states: Sequence[OnnxStreamState]) -> OnnxStreamState:
        graphs = {state.graph for state in states}
        if len(graphs) != 1:
            raise EngineError(f"cannot join states of different graphs: {sorted(graphs)}")
        rings = {state.ring for state in states}
        if len(rings) != 1:
            raise EngineError(f"cannot join states whose KV cache rings differ in size: {sorted(map(str, rings))}")
        arrays = [np.concatenate(parts, axis=0) for parts in zip(*(state.arrays for state in states), strict=True)]
        total = sum(state.batch_size for state in states)
        return OnnxStreamState(states[0].graph, total, arrays, rings.pop(), owned=True)

    def put_rows(self, state: OnnxStreamState, rows: Sequence[int], part: OnnxStreamState) -> OnnxStreamState:
        index = np.asarray(rows, dtype=np.intp)
        arrays = []
        for array, replacement in zip(state.arrays, part.arrays, strict=True):
            if not array.flags.writeable:
                array = array.copy()
            array[index] = replacement
            arrays.append(array)
        return OnnxStreamState(state.graph, state.batch_size, arrays, state.ring, owned=True)

    def init_encoder_state(self, batch_size: int, mode: CacheMode) -> Any | None:
        return self._initial(self._stream_graph("encoder", mode), batch_size)

    def init_decoder_state(self, batch_size: int, mode: CacheMode) -> Any | None:
        return self._initial(self._stream_graph("decoder", mode), batch_size)


def _bind(binding: Any, kind: str, name: str, array: np.ndarray) -> None:
    """Bind `array`'s memory (C-contiguous, kept alive by the caller) as graph input or output `name`."""
    bind = binding.bind_input if kind == "input" else binding.bind_output
    bind(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
