"""The 0.1 import path of the `.mimi` format, kept so that `from mimistack.container import ...` keeps working.

The format lives in `mimistack.mimifile` (see its docstring and `docs/format.md`). As in 0.1, the readers here
return `TokenGrid`s: they are `mimistack.tokens`' helpers. New code should import from those two modules.
"""

# isort: skip_file
# fmt: off
from __future__ import annotations

from .mimifile import (
    CODINGS, FORMAT_VERSION, LAYOUTS, MAGIC, CodingMeasurement, ContainerError, FileInfo, FrameStreamWriter,
    LevelInfo, TruncatedFileWarning, bits_per_token, describe, measure_coding, pack_tokens, truncate, unpack_tokens,
)
from .tokens import grid_from_bytes, grid_to_bytes, read_grid, write_grid

__all__ = [
    "CODINGS", "FORMAT_VERSION", "LAYOUTS", "MAGIC", "CodingMeasurement", "ContainerError", "FileInfo",
    "FrameStreamWriter", "LevelInfo", "TruncatedFileWarning", "bits_per_token", "describe", "grid_from_bytes",
    "grid_to_bytes", "measure_coding", "pack_tokens", "read_grid", "truncate", "unpack_tokens", "write_grid",
]
