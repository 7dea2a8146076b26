"""ONNX Runtime sessions: options, execution providers and the one process-wide thread pool.

Sits on `engine.base` and onnxruntime; used by `engine.onnx` (the engine) and `engine.export` (its checks), so
that the exporter needs nothing of the engine.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from .base import EngineError

logger = logging.getLogger(__name__)

DEFAULT_THREADS = 2

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


def shared_pool_preferred() -> bool:
    """Whether `prefer_shared_thread_pool()` asked engines made from now on to use the process-wide pool."""
    return _prefer_shared_pool


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
            logger.info(
                "ONNX Runtime's shared pool has %d threads; %d were asked for", _shared_pool_threads, num_threads
            )
        return _shared_pool_threads > 0


def session_options(
    num_threads: int | None = None, optimization: str = "all", spinning: bool = True, shared_pool: bool = False
) -> Any:
    """ONNX Runtime options: `num_threads` intra-op threads (default 2), sequential execution, and a graph
    optimisation level ("disable", "basic", "extended", "all"). `shared_pool`: run on the process-wide pool made
    by `shared_thread_pool` (the thread count is then that pool's)."""
    import onnxruntime as ort

    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
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
            raise EngineError(
                f"device {device!r} needs onnxruntime-gpu (CUDAExecutionProvider); this onnxruntime "
                f"offers {', '.join(ort.get_available_providers())}"
            )
        device_id = int(device.split(":", 1)[1]) if ":" in device else 0
        return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
    raise EngineError(f"unknown device {device!r} for the onnx engine; expected 'cpu', 'cuda' or 'cuda:N'")
