"""Errors, constants and the result type shared by the export modules.

Part of `engine.export` (see its package docstring for the folder it writes).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from ..base import EngineError

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18
"""Opset 18: what onnxruntime-web, onnxruntime-node and ONNX Runtime >= 1.14 all run."""
STREAM_MODES = ("window", "moshi")
CHECK_FRAMES = (1, 3)
"""Frame counts every graph is run at against the torch model after export (a graph with a frozen length fails)."""
VARIANT_SIGNAL_SECONDS = 4.0


class ExportError(EngineError):
    """An export that cannot be made or that does not reproduce the torch model."""


class ExportDependencyError(ExportError):
    """torch or onnx is not installed (the `[export]` extra)."""


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What `export_onnx` wrote: the folder, its manifest, the files (relative paths) and seconds per step."""

    out_dir: Path
    manifest: dict[str, Any]
    files: tuple[str, ...]
    seconds: dict[str, float]

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())
