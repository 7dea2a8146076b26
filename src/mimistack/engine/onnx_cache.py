"""Load-or-export: the ONNX engine for an export folder, or for weights through the export cache.

Above both `engine.onnx` (the engine) and `engine.export` (the writer, imported only when an export must be
made, since it needs torch), so that neither of them imports the other. The cache lives in
`$MIMISTACK_CACHE/onnx/<weights sha256>/` (`_files.cache_dir()`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .._files import cache_dir
from ..weights import WeightsRef
from .base import EngineError
from .onnx import OnnxEngine
from .onnx_format import FORMAT_VERSION, MANIFEST_NAME, OnnxDirError
from .options import OnnxVariant

logger = logging.getLogger(__name__)


def cache_root() -> Path:
    """Where exports made on first use are kept: `cache_dir()/onnx`."""
    return cache_dir() / "onnx"


def cached_export_dir(weights_sha256: str) -> Path:
    """The cache folder of the graphs exported from the weights with this sha256."""
    return cache_root() / weights_sha256


def load_onnx_engine(
    weights: str | os.PathLike[str] | WeightsRef | None = None,
    onnx_dir: str | os.PathLike[str] | None = None,
    revision: str | None = None,
    device: str = "cpu",
    num_threads: int | None = None,
    variant: OnnxVariant = "fp32",
    optimization: str = "all",
) -> OnnxEngine:
    """The ONNX engine for an export folder (`onnx_dir`), or for `weights` through the export cache.

    With `weights` only, the graphs come from `cached_export_dir(sha256 of the weights file)`; on first use they are
    exported there when torch is installed (a few minutes for the official model), otherwise this raises an error
    that says how to export elsewhere. With both, the folder must have been exported from those weights.
    """
    if onnx_dir is not None:
        engine = OnnxEngine(
            onnx_dir, device=device, num_threads=num_threads, variant=variant, optimization=optimization
        )
        if weights is not None:
            ref = WeightsRef.resolve(weights, revision)
            if ref.sha256 != engine.weights_sha256:
                raise OnnxDirError(
                    f"{onnx_dir} was exported from weights with sha256 {engine.weights_sha256[:16]}…, "
                    f"but {ref.source!r} has sha256 {ref.sha256[:16]}…; pass the matching weights "
                    "or export these ones"
                )
        return engine
    if weights is None:
        raise EngineError("the onnx engine needs exported graphs (onnx_dir / --onnx DIR) or weights to export from")
    ref = WeightsRef.resolve(weights, revision)
    folder = cached_export_dir(ref.sha256)
    if not (folder / MANIFEST_NAME).is_file():
        export_to_cache(ref, folder)
    elif _stale(folder):
        export_to_cache(ref, folder, replace=True)
    engine = OnnxEngine(folder, device=device, num_threads=num_threads, variant=variant, optimization=optimization)
    if engine.weights_sha256 != ref.sha256:
        raise OnnxDirError(
            f"the cached export {folder} says it comes from weights {engine.weights_sha256[:16]}…, "
            f"not {ref.sha256[:16]}…; delete that folder so that it is exported again"
        )
    return engine


def _stale(folder: Path) -> bool:
    """Whether a cached export was made in an older format this version still reads (it is exported again, to get
    the current graphs: format 2's stream graphs update their KV caches in place)."""
    try:
        version = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8")).get("format_version")
    except (OSError, ValueError, AttributeError):
        return False  # unreadable: OnnxEngine says what is wrong with it
    return isinstance(version, int) and version < FORMAT_VERSION


def export_to_cache(ref: WeightsRef, folder: Path | None = None, *, replace: bool = False) -> Path:
    """Export the graphs of `ref` into the cache (once; a concurrent exporter that wins is fine). `replace`: an
    export of an older format there is replaced."""
    folder = folder or cached_export_dir(ref.sha256)
    if (folder / MANIFEST_NAME).is_file() and not (replace and _stale(folder)):
        return folder
    from .export import ExportDependencyError, export_onnx, require_export_dependencies  # torch only when run

    try:
        require_export_dependencies()
        logger.warning(
            "exporting ONNX graphs for %s to %s (first use of these weights with the onnx engine; this "
            "takes a while, later loads reuse them)",
            ref.source,
            folder,
        )
        folder.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(ref.path, folder, transformers_js=False, force=replace)
    except ExportDependencyError as error:
        raise OnnxDirError(
            f"no exported ONNX graphs for weights {ref.source!r} (sha256 {ref.sha256[:16]}…) in {folder}, and "
            f"exporting them needs torch ({error}). On a machine with torch run\n"
            f"    mimistack export-onnx --weights {ref.source} -o mimi-onnx\n"
            f"then copy the folder here and pass --onnx mimi-onnx (Codec.load(..., "
            "engine=OnnxOptions(onnx_dir='mimi-onnx')))"
        ) from error
    except FileExistsError:
        if not (folder / MANIFEST_NAME).is_file():
            raise
        logger.info("another process exported %s first", folder)
    return folder
