"""Looking at and editing `.mimi` files: `describe` (what `mimistack info` prints; `FileInfo.version` is the format
version), `truncate` (keep some levels) and `measure_coding` (bits per token of packing vs range coding).

Builds on `readwrite` (decode and write), `record` (`MimiRecord.with_levels`) and `rangecoding`; used by the CLI
and `mimistack.analysis` (through `mimistack.container` or this package). Sits on `mimistack.levels`.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ..levels import LevelsLike
from .errors import ContainerError, TruncatedFileWarning
from .packing import bits_per_token, packed_size
from .rangecoding import encode_levels, match_symbols
from .readwrite import decode, read_bytes, write_record
from .record import GridLike, JsonValue, to_record

__all__ = ["CodingMeasurement", "FileInfo", "LevelInfo", "SectionInfo", "describe", "measure_coding", "truncate"]


@dataclasses.dataclass(frozen=True)
class LevelInfo:
    """One stored level of a level-major file."""

    level: int
    coding: str
    """The coding of the section that holds it."""
    bytes: int
    """Its share of its section (the section's bytes split evenly over its levels; exact for v1 files)."""
    bitrate: float
    """bit/s of this level's share over the source duration."""
    complete: bool
    section: int = 0
    """Index of the section that holds it."""


@dataclasses.dataclass(frozen=True)
class SectionInfo:
    """One level-major section (v1: one level; v2: one or more consecutive stored levels)."""

    levels: tuple[int, ...]
    coding: str
    bytes: int
    bitrate: float
    complete: bool


@dataclasses.dataclass(frozen=True)
class FileInfo:
    """What `mimistack info` prints about a `.mimi` file."""

    path: Path
    version: int
    """The `.mimi` format version of the file (1 or 2)."""
    layout: str
    coding: str
    num_levels: int
    levels_present: tuple[int, ...]
    """Levels the file actually holds (complete sections; all stored levels for frame-major)."""
    num_frames: int
    num_samples: int
    sample_rate: int
    frame_rate: float
    codebook_size: int
    weights_sha256: str
    duration: float
    header_bytes: int
    payload_bytes: int
    total_bytes: int
    bitrate: float
    """bit/s of the whole file (header included) over the source duration."""
    levels: tuple[LevelInfo, ...]
    """Per stored level for level-major files; empty for frame-major (levels are interleaved per frame)."""
    truncated: bool
    metadata: dict[str, JsonValue]
    sections: tuple[SectionInfo, ...] = ()
    """Per section for level-major files; empty for frame-major."""


def describe(path: str | os.PathLike[str]) -> FileInfo:
    """Inspect a `.mimi` file of either version (truncated files are described, not refused)."""
    target = Path(path)
    decoded = decode(read_bytes(target), str(target))
    header, record = decoded.header, decoded.record
    duration = record.num_samples / record.sample_rate if record.num_samples else record.num_frames / record.frame_rate

    def rate(num_bytes: float) -> float:
        return num_bytes * 8 / duration if duration > 0 else 0.0

    sections = tuple(
        SectionInfo(s.levels, s.coding, s.length, rate(s.length), i < decoded.complete_sections)
        for i, s in enumerate(header.sections)
    )
    levels: list[LevelInfo] = []
    for index, section in enumerate(header.sections):
        count = len(section.levels)
        share, extra = divmod(section.length, count)
        for k, level in enumerate(section.levels):
            levels.append(
                LevelInfo(
                    level,
                    section.coding,
                    share + (extra if k == count - 1 else 0),
                    rate(section.length / count),
                    index < decoded.complete_sections,
                    index,
                )
            )
    return FileInfo(
        path=target,
        version=header.version,
        layout=header.layout,
        coding=header.coding,
        num_levels=header.num_levels,
        levels_present=record.levels_present,
        num_frames=record.num_frames,
        num_samples=record.num_samples,
        sample_rate=record.sample_rate,
        frame_rate=record.frame_rate,
        codebook_size=record.codebook_size,
        weights_sha256=record.weights_sha256,
        duration=duration,
        header_bytes=decoded.header_bytes,
        payload_bytes=decoded.total_bytes - decoded.header_bytes,
        total_bytes=decoded.total_bytes,
        bitrate=rate(decoded.total_bytes),
        levels=tuple(levels),
        truncated=decoded.truncation is not None,
        metadata=dict(header.metadata),
        sections=sections,
    )


def truncate(
    path_in: str | os.PathLike[str], levels: LevelsLike, path_out: str | os.PathLike[str], *, force: bool = False
) -> Path:
    """Write a valid `.mimi` file holding only `levels` of `path_in` (an int keeps that many leading levels; any
    subset works, the header says which are present). Keeps the input's version, layout and coding."""
    source = Path(path_in)
    decoded = decode(read_bytes(source), str(source))
    if decoded.truncation:
        warnings.warn(decoded.truncation, TruncatedFileWarning, stacklevel=2)
    record = decoded.record
    try:
        kept = record.with_levels(levels)
    except ValueError as exc:
        raise ContainerError(f"{source}: cannot keep levels {levels!r}: {exc}") from None
    header = decoded.header
    return write_record(kept, path_out, force=force, layout=header.layout, coding=header.coding, version=header.version)


@dataclasses.dataclass(frozen=True)
class CodingMeasurement:
    """Bits per token of each level under each coding, over a set of grids (one level per section, as v1)."""

    levels: tuple[int, ...]
    num_tokens: tuple[int, ...]
    """Tokens per level, summed over the grids."""
    packed_bits_per_token: float
    """Fixed width: ceil(log2(codebook_size)) (11 for Mimi)."""
    range_bits_per_token: tuple[float, ...]
    """What the adaptive range coder alone costs (may exceed the packed width on incompressible data)."""
    stored_bits_per_token: tuple[float, ...]
    """What a `coding="range"` file pays: per section the smaller of the two."""


def measure_coding(grids: Iterable[GridLike]) -> CodingMeasurement:
    """Measure per-level bits per token of packed and range coding over `grids` (all with the same num_levels and
    codebook_size; levels absent from any grid are left out)."""
    records = [to_record(g) for g in grids]
    if not records:
        raise ContainerError("measure_coding needs at least one grid")
    num_levels, codebook_size = records[0].num_levels, records[0].codebook_size
    if any(r.num_levels != num_levels or r.codebook_size != codebook_size for r in records):
        raise ContainerError("measure_coding needs grids with the same num_levels and codebook_size")
    levels = tuple(sorted(set.intersection(*(set(r.levels_present) for r in records))))
    width = bits_per_token(codebook_size)
    tokens = np.zeros(len(levels), dtype=np.int64)
    range_bits = np.zeros(len(levels))
    stored_bits = np.zeros(len(levels))
    for record in records:
        lower: NDArray[np.int8] | None = None
        for k, level in enumerate(levels):
            row = record.codes[level]
            packed = packed_size(row.shape[0], width) * 8
            coded = len(encode_levels([row], lower, codebook_size)) * 8 if row.shape[0] else 0
            lower = match_symbols(row)
            tokens[k] += row.shape[0]
            range_bits[k] += coded
            stored_bits[k] += coded if coded < packed else packed

    def per_token(bits: NDArray[np.float64]) -> tuple[float, ...]:
        return tuple(float(b / n) if n else 0.0 for b, n in zip(bits, tokens, strict=True))

    return CodingMeasurement(
        levels, tuple(int(n) for n in tokens), float(width), per_token(range_bits), per_token(stored_bits)
    )
