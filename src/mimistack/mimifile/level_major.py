"""The level-major payload: sections of consecutive stored levels, back to back (the default layout).

Each section has its own CRC32 in the header's table, so a prefix of the file that ends on a section boundary
decodes to the levels before it (`TruncatedFileWarning`). v1 writes one level per section; v2 groups levels so
that a section holds at least `MIN_SECTION_BYTES` packed bytes (per-level sections for clips of ~7 s and more).
`header`/`header_v1` describe the sections, `packing`/`rangecoding` code them, `readwrite` calls in here, and
`frame_major` is the other layout. Sits on `errors`, `record`, `header`, `packing`, `rangecoding`.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
from numpy.typing import NDArray

from ..levels import Levels, format_levels
from .errors import ContainerError
from .header import Header, Section
from .packing import bits_per_token, pack_tokens, packed_size, unpack_tokens
from .rangecoding import decode_levels, encode_levels, match_symbols
from .record import Coding, MimiRecord

__all__ = ["MIN_SECTION_BYTES", "Decoded", "decode_level_major", "encode_sections", "section_levels"]

MIN_SECTION_BYTES = 128
"""v2 writers put 2^k levels in a section, the smallest power of two whose packed size reaches this."""


@dataclasses.dataclass(frozen=True)
class Decoded:
    """A decoded file with what `inspect` reports about it."""

    record: MimiRecord
    header: Header
    header_bytes: int
    total_bytes: int
    complete_sections: int
    records: int
    truncation: str | None
    """A message when the file ended early."""


def section_levels(num_frames: int, codebook_size: int, num_present: int) -> int:
    """How many levels a v2 writer puts in one section (the last section may hold fewer)."""
    level_bytes = packed_size(num_frames, bits_per_token(codebook_size))
    count = 1
    while count < num_present and count * level_bytes < MIN_SECTION_BYTES:
        count *= 2
    return count


def encode_sections(
    record: MimiRecord, coding: Coding, version: int, levels_per_section: int | None = None
) -> tuple[tuple[Section, ...], list[bytes]]:
    """The section table and the section bytes of `record` (v1: one level per section)."""
    width = bits_per_token(record.codebook_size)
    present = record.levels_present
    group = (
        1
        if version == 1
        else levels_per_section or section_levels(record.num_frames, record.codebook_size, len(present))
    )
    sections: list[Section] = []
    chunks: list[bytes] = []
    offset = 0
    lower: NDArray[np.int8] | None = None
    for start in range(0, len(present), group):
        levels = present[start : start + group]
        rows = record.codes[list(levels)]
        chunk = pack_tokens(rows, width)
        entry = Section(levels, offset, len(chunk), zlib.crc32(chunk), "packed11")
        if coding == "range" and len(chunk) > 0:
            coded = encode_levels(list(rows), lower, record.codebook_size)
            if len(coded) < len(chunk):
                chunk = coded
                entry = Section(
                    levels, offset, len(coded), zlib.crc32(coded), "range", zlib.crc32(rows.astype("<u2").tobytes())
                )
            lower = match_symbols(rows[-1])
        sections.append(entry)
        chunks.append(chunk)
        offset += len(chunk)
    return tuple(sections), chunks


def _name(section: Section) -> str:
    if len(section.levels) == 1:
        return f"level {section.levels[0]}"
    return f"the section of levels {format_levels(section.levels)}"


def decode_level_major(data: bytes, header: Header, payload_start: int, source: str, max_tokens: int) -> Decoded:
    assert header.num_frames is not None and header.num_samples is not None
    num_frames = header.num_frames
    if header.num_levels * num_frames > max_tokens:
        raise ContainerError(
            f"{source}: header declares {header.num_levels} x {num_frames} tokens, more than the limit of {max_tokens}"
        )
    payload = memoryview(data)[payload_start:]
    declared = sum(s.length for s in header.sections)
    if len(payload) > declared:
        raise ContainerError(f"{source}: {len(payload) - declared} unexpected bytes after the last section")
    codes = np.zeros((header.num_levels, num_frames), dtype=np.uint16)
    present: list[int] = []
    lower: NDArray[np.int8] | None = None
    truncation = None
    complete = 0
    for section in header.sections:
        end = section.offset + section.length
        if end > len(payload):
            partial = " (a partial section was dropped)" if len(payload) > section.offset else ""
            truncation = (
                f"{source} is truncated: recovered {len(present)} of {len(header.levels_present)} levels "
                f"({Levels(tuple(present), header.num_levels)}){partial}"
            )
            break
        chunk = bytes(payload[section.offset : end])
        if zlib.crc32(chunk) != section.crc32:
            raise ContainerError(f"{source}: {_name(section)} is corrupted (section checksum mismatch)")
        rows = _decode_section(chunk, section, num_frames, lower, header, source)
        codes[list(section.levels)] = rows
        present.extend(section.levels)
        complete += 1
        if header.coding == "range":
            lower = match_symbols(rows[-1])
    try:
        record = MimiRecord(
            codes=codes,
            num_samples=header.num_samples,
            sample_rate=header.sample_rate,
            frame_rate=header.frame_rate,
            codebook_size=header.codebook_size,
            weights_sha256=header.weights_sha256,
            levels_present=tuple(present),
            metadata=header.metadata,
        )
    except ContainerError as exc:
        raise ContainerError(f"{source}: header and tokens disagree: {exc}") from None
    return Decoded(record, header, payload_start, len(data), complete, 0, truncation)


def _decode_section(
    chunk: bytes, section: Section, num_frames: int, lower: NDArray[np.int8] | None, header: Header, source: str
) -> NDArray[np.uint16]:
    count = len(section.levels)
    if section.coding == "packed11":
        rows = unpack_tokens(chunk, count * num_frames, header.width).reshape(count, num_frames)
        if rows.size and int(rows.max()) >= header.codebook_size:
            raise ContainerError(
                f"{source}: {_name(section)} holds token {int(rows.max())}, outside the codebook "
                f"of {header.codebook_size}"
            )
        return rows
    try:
        rows = decode_levels(chunk, count, num_frames, lower, header.codebook_size)
    except ContainerError:
        raise
    except Exception as exc:  # the range decoder's own errors on malformed data
        raise ContainerError(f"{source}: {_name(section)} cannot be range-decoded: {exc}") from None
    if zlib.crc32(rows.astype("<u2").tobytes()) != section.tokens_crc32:
        raise ContainerError(
            f"{source}: {_name(section)} decodes to the wrong tokens (tokens_crc32 mismatch; "
            "written by an incompatible range coder?)"
        )
    return rows
