"""The ONNX graphs `parity` and `precision` compare: a folder of exported graphs holding every variant asked for.

The engine's own export cache (`engine.onnx_cache`) holds the fp32 graphs made on first use; the reduced-precision
variants are exported once more, beside it, under the cache root (`onnx-variants/<sha256>`), and reused after.
Sits on `engine.onnx_cache` and `engine.export` (imported when an export is needed, which needs torch once).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from .._files import cache_dir
from ..weights import WeightsRef

logger = logging.getLogger(__name__)

ALL_VARIANTS = ("fp32", "fp16", "int8")


def _has_variants(folder: Path, variants: Sequence[str]) -> bool:
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return False
    from ..engine.onnx_format import graph_file

    text = manifest.read_text()
    return all(f'"{graph_file(graph, v)}"' in text for v in variants for graph in ("encoder_stream", "decoder_stream"))


def onnx_variant_dir(weights: WeightsRef, variants: Sequence[str] = ALL_VARIANTS) -> Path:
    """A folder of exported graphs for `weights` with every one of `variants`: the engine's cached export when it
    has them all, else `onnx-variants/<sha256>` under the cache root (exported now if missing: minutes for the
    official architecture)."""
    from ..engine.onnx_cache import cached_export_dir

    cached = cached_export_dir(weights.sha256)
    if _has_variants(cached, variants):
        return cached
    target = cache_dir() / "onnx-variants" / weights.sha256
    if _has_variants(target, variants):
        return target
    from ..engine.export import export_onnx

    logger.warning(
        "exporting ONNX graphs %s for %s to %s (once; later runs reuse them)", list(variants), weights.source, target
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(
        weights.path, target, variants=tuple(variants), stream_modes=("window",), transformers_js=False, force=True
    )
    return target
