"""The `.mimi` token file format, versions 1 (read; written on request) and 2 (the default): `docs/format.md`.

One concept per module, bottom to top:

* `errors`: `ContainerError`, `TruncatedFileWarning`;
* `packing`: fixed-width token packing (also the streaming protocol's, `mimistack.stream`);
* `rangecoding`: the adaptive range coder (`constriction`);
* `record`: `MimiRecord`, what a file holds (this package never imports `mimistack.tokens`: `TokenGrid.save`/`load`
  convert), and the shared names and limits;
* `header`: the shared header records and the v2 compact binary header; `header_v1`: the v1 JSON header;
* `level_major`: sections of levels (progressive: any prefix ending on a section boundary decodes);
* `frame_major`: per-frame records and `FrameStreamWriter` (live streams);
* `readwrite`: bytes and files (all writes through `mimistack._files`);
* `inspect`: `describe`, `truncate`, `measure_coding`.

Here `read_grid`/`grid_from_bytes` return a `MimiRecord`; `mimistack.tokens` (and the 0.1 shim
`mimistack.container`) have the ones that return a `TokenGrid`. Writers take either. Sits on `mimistack.config`,
`mimistack.levels`, `mimistack.errors` and `mimistack._files`.
"""

from __future__ import annotations

from .errors import ContainerError, TruncatedFileWarning
from .frame_major import FrameStreamWriter
from .header import Header, Section
from .inspect import CodingMeasurement, FileInfo, LevelInfo, SectionInfo, describe, measure_coding, truncate
from .level_major import MIN_SECTION_BYTES
from .packing import bits_per_token, pack_tokens, packed_size, unpack_tokens
from .readwrite import (
    decode,
    grid_from_bytes,
    grid_to_bytes,
    read_grid,
    read_record,
    record_from_bytes,
    record_to_bytes,
    write_grid,
    write_record,
)
from .record import (
    CODINGS,
    DEFAULT_MAX_TOKENS,
    FORMAT_VERSION,
    LAYOUTS,
    MAGIC,
    READ_VERSIONS,
    Coding,
    GridLike,
    Layout,
    MimiRecord,
    to_record,
)

__all__ = [
    "CODINGS",
    "DEFAULT_MAX_TOKENS",
    "FORMAT_VERSION",
    "LAYOUTS",
    "MAGIC",
    "MIN_SECTION_BYTES",
    "READ_VERSIONS",
    "Coding",
    "CodingMeasurement",
    "ContainerError",
    "FileInfo",
    "FrameStreamWriter",
    "GridLike",
    "Header",
    "Layout",
    "LevelInfo",
    "MimiRecord",
    "Section",
    "SectionInfo",
    "TruncatedFileWarning",
    "bits_per_token",
    "decode",
    "describe",
    "grid_from_bytes",
    "grid_to_bytes",
    "measure_coding",
    "pack_tokens",
    "packed_size",
    "read_grid",
    "read_record",
    "record_from_bytes",
    "record_to_bytes",
    "to_record",
    "truncate",
    "unpack_tokens",
    "write_grid",
    "write_record",
]
