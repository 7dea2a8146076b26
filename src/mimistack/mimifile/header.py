"""The `.mimi` header: the shared `Header`/`Section` records and the version 2 compact binary header.

v2 (docs/format.md, "v2"): a 12-byte preamble (magic, u16 version, byte order `L`, flags), then varint fields
(counts, rates, levels present, raw weights SHA-256, optional zlib'd JSON metadata), a varint section table and a
CRC32 of all of it. `header_v1` reads and writes the v1 JSON header into the same records; `level_major` and
`frame_major` read and write the payload the header describes; `readwrite` dispatches on the version.
Sits on `errors`, `record` and `packing`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import struct
import zlib
from collections.abc import Callable

from ..levels import format_levels
from .errors import ContainerError
from .packing import bits_per_token, packed_size
from .record import (
    MAGIC,
    MAX_FRAMES,
    MAX_LEVELS,
    MAX_SAMPLE_RATE,
    MAX_SAMPLES,
    Coding,
    JsonValue,
    Layout,
    check_metadata,
)

__all__ = [
    "BYTE_ORDER",
    "Header",
    "Section",
    "check_sections",
    "encode_metadata",
    "encode_v2",
    "encode_varint",
    "parse_v2",
    "scan_v2",
]

BYTE_ORDER = 0x4C  # "L": every multi-byte field of a v2 file is little-endian
FLAG_FRAME_MAJOR = 0x01
FLAG_RANGE = 0x02
FLAG_ALL_LEVELS = 0x04
FLAG_WEIGHTS_RAW = 0x08
FLAG_WEIGHTS_TEXT = 0x10
FLAG_METADATA = 0x20
_KNOWN_FLAGS = 0x3F
SECTION_CODING = {"packed11": 0, "range": 1}
METADATA_JSON = 0
METADATA_ZLIB = 1
MAX_METADATA_BYTES = 1 << 24
_HEX64 = re.compile(r"[0-9a-f]{64}")
_U32 = struct.Struct("<I")
_F64 = struct.Struct("<d")


@dataclasses.dataclass(frozen=True)
class Section:
    """One level-major section: consecutive stored levels (one in v1, one or more in v2)."""

    levels: tuple[int, ...]
    offset: int
    """From the start of the payload."""
    length: int
    crc32: int
    coding: Coding
    tokens_crc32: int | None = None
    """Range sections: CRC32 of the decoded tokens (u16 little-endian, level after level)."""


@dataclasses.dataclass(frozen=True)
class Header:
    """What a header says, whichever version wrote it."""

    version: int
    layout: Layout
    coding: Coding
    """What the writer was asked for; each section or record says what it actually uses."""
    num_levels: int
    levels_present: tuple[int, ...]
    num_frames: int | None
    """None in frame-major files (the end record holds it)."""
    num_samples: int | None
    sample_rate: int
    frame_rate: float
    codebook_size: int
    weights_sha256: str
    sections: tuple[Section, ...]
    metadata: dict[str, JsonValue]

    @property
    def width(self) -> int:
        return bits_per_token(self.codebook_size)


def check_sections(header: Header, fail: Callable[[str], ContainerError]) -> None:
    """The section table must tile the stored levels in order, packed sections at their exact size, range
    sections whole 32-bit words strictly shorter than packing."""
    if header.layout == "frame-major":
        if header.sections:
            raise fail("a frame-major file has no sections")
        return
    assert header.num_frames is not None
    levels = tuple(level for s in header.sections for level in s.levels)
    if levels != header.levels_present:
        raise fail(f"sections hold levels {list(levels)} but levels_present says {list(header.levels_present)}")
    offset = 0
    for section in header.sections:
        name = f"level {section.levels[0]}" if len(section.levels) == 1 else f"levels {format_levels(section.levels)}"
        packed = (
            packed_size(header.num_frames * len(section.levels), header.width)
            if header.version >= 2
            else packed_size(header.num_frames, header.width)
        )
        if section.offset != offset:
            raise fail(f"section of {name} starts at {section.offset}, expected {offset}")
        if section.coding == "packed11" and section.length != packed:
            raise fail(f"packed section of {name} is {section.length} bytes, expected {packed}")
        if section.coding == "range" and (section.length >= packed or section.length % 4):
            raise fail(f"range-coded section of {name} has an impossible length {section.length}")
        offset += section.length


# -- varints and metadata -----------------------------------------------------------------------------------------
def encode_varint(value: int) -> bytes:
    """Unsigned LEB128: 7 bits per byte, least significant group first, high bit set on all but the last byte."""
    if value < 0 or value >= 1 << 64:
        raise ContainerError(f"varint out of range: {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_metadata(metadata: dict[str, JsonValue]) -> bytes:
    """The metadata block (without the flag): u8 coding, varint length, then compact ASCII JSON, zlib-compressed
    (level 9) only when that is strictly shorter. Empty metadata has no block."""
    check_metadata(metadata)
    try:
        raw = json.dumps(metadata, allow_nan=False, separators=(",", ":")).encode("ascii")
    except (TypeError, ValueError) as exc:
        raise ContainerError(f"grid metadata cannot be stored as JSON: {exc}") from None
    packed = zlib.compress(raw, 9)
    coding, body = (METADATA_ZLIB, packed) if len(packed) < len(raw) else (METADATA_JSON, raw)
    return bytes([coding]) + encode_varint(len(body)) + body


# -- v2 writing -------------------------------------------------------------------------------------------------
def encode_v2(header: Header) -> bytes:
    """The v2 header bytes: preamble, fields, section table (level-major), CRC32."""
    frame_major = header.layout == "frame-major"
    all_levels = header.levels_present == tuple(range(header.num_levels))
    weights = header.weights_sha256
    flags = (
        (FLAG_FRAME_MAJOR if frame_major else 0)
        | (FLAG_RANGE if header.coding == "range" else 0)
        | (FLAG_ALL_LEVELS if all_levels else 0)
        | (FLAG_METADATA if header.metadata else 0)
    )
    if weights:
        flags |= FLAG_WEIGHTS_RAW if _HEX64.fullmatch(weights) else FLAG_WEIGHTS_TEXT
    out = bytearray(MAGIC + struct.pack("<HBB", 2, BYTE_ORDER, flags))
    out += encode_varint(header.num_levels) + encode_varint(header.codebook_size) + encode_varint(header.sample_rate)
    out += _F64.pack(header.frame_rate)
    if not frame_major:
        assert header.num_frames is not None and header.num_samples is not None
        out += encode_varint(header.num_frames) + encode_varint(header.num_samples)
    if not all_levels:
        bitmap = bytearray((header.num_levels + 7) // 8)
        for level in header.levels_present:
            bitmap[level // 8] |= 1 << (level % 8)
        out += bitmap
    if flags & FLAG_WEIGHTS_RAW:
        out += bytes.fromhex(weights)
    elif flags & FLAG_WEIGHTS_TEXT:
        text = weights.encode("utf-8", "surrogatepass")
        out += encode_varint(len(text)) + text
    if header.metadata:
        out += encode_metadata(header.metadata)
    if not frame_major:
        out += encode_varint(len(header.sections))
        for section in header.sections:
            out += encode_varint(len(section.levels)) + bytes([SECTION_CODING[section.coding]])
            if section.coding == "range":
                assert section.tokens_crc32 is not None
                out += encode_varint(section.length) + _U32.pack(section.tokens_crc32)
            out += _U32.pack(section.crc32)
    return bytes(out + _U32.pack(zlib.crc32(out)))


# -- v2 reading -------------------------------------------------------------------------------------------------
class _Reader:
    """Reads fields in order; the end of the data is 'truncated inside the header'. Value problems are collected
    and raised only after the header CRC has been checked (a corrupted byte is reported as corruption)."""

    def __init__(self, data: bytes, source: str, position: int) -> None:
        self.data = data
        self.source = source
        self.position = position
        self.problems: list[str] = []

    def take(self, count: int) -> bytes:
        end = self.position + count
        if end > len(self.data):
            raise ContainerError(f"{self.source}: truncated inside the header ({len(self.data)} bytes)")
        chunk = self.data[self.position : end]
        self.position = end
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        value: int = _U32.unpack(self.take(4))[0]
        return value

    def varint(self, name: str, low: int, high: int) -> int:
        value = shift = 0
        for count in range(10):
            byte = self.u8()
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                if byte == 0 and count > 0:
                    self.problems.append(f"{name} is a non-minimal varint")
                break
        else:
            self.problems.append(f"{name} is a varint longer than 10 bytes")
        if not low <= value <= high:
            self.problems.append(f"{name} = {value} is out of range {low}-{high}")
            return min(max(value, low), high)
        return value


def parse_v2(data: bytes, source: str) -> tuple[Header, int]:
    """Parse and check a v2 header (the caller has checked the magic and the version); returns it and the
    payload's start offset."""
    header, reader = _scan(data, source)
    end = reader.position
    (stored_crc,) = _U32.unpack(reader.take(4))
    if zlib.crc32(data[:end]) != stored_crc:
        raise ContainerError(f"{source}: header checksum mismatch (the header is corrupted)")
    if reader.problems:
        raise ContainerError(f"{source}: bad header: {reader.problems[0]}")

    def fail(message: str) -> ContainerError:
        return ContainerError(f"{source}: bad header: {message}")

    check_sections(header, fail)
    return header, reader.position


def scan_v2(data: bytes) -> tuple[Header, int] | None:
    """Where a v2 header's CRC32 lies (and what the fields say), without checking anything: None when the data
    ends inside the header. For tools that repair checksums (the fuzzer)."""
    try:
        header, reader = _scan(data, "<scan>")
    except ContainerError:
        return None
    return header, reader.position


def _scan(data: bytes, source: str) -> tuple[Header, _Reader]:
    reader = _Reader(data, source, len(MAGIC) + 2)
    byte_order, flags = reader.u8(), reader.u8()
    if byte_order != BYTE_ORDER:
        reader.problems.append(f"byte order {byte_order:#04x} is not 0x4c ('L', little-endian)")
    if flags & ~_KNOWN_FLAGS:
        reader.problems.append(f"unknown flags {flags & ~_KNOWN_FLAGS:#04x}")
    if flags & FLAG_WEIGHTS_RAW and flags & FLAG_WEIGHTS_TEXT:
        reader.problems.append("both weights flags are set")
    frame_major = bool(flags & FLAG_FRAME_MAJOR)
    num_levels = reader.varint("num_levels", 1, MAX_LEVELS)
    codebook_size = reader.varint("codebook_size", 1, 65536)
    sample_rate = reader.varint("sample_rate", 1, MAX_SAMPLE_RATE)
    (frame_rate,) = _F64.unpack(reader.take(8))
    if not (math.isfinite(frame_rate) and frame_rate > 0):
        reader.problems.append(f"frame_rate must be positive, got {frame_rate}")
    num_frames = num_samples = None
    if not frame_major:
        num_frames = reader.varint("num_frames", 0, MAX_FRAMES)
        num_samples = reader.varint("num_samples", 0, MAX_SAMPLES)
    if flags & FLAG_ALL_LEVELS:
        present = tuple(range(num_levels))
    else:
        bitmap = reader.take((num_levels + 7) // 8)
        present = tuple(i for i in range(len(bitmap) * 8) if bitmap[i // 8] >> (i % 8) & 1)
        if present and present[-1] >= num_levels:
            reader.problems.append(f"the levels bitmap marks level {present[-1]} of {num_levels}")
    weights = ""
    if flags & FLAG_WEIGHTS_RAW:
        weights = reader.take(32).hex()
    elif flags & FLAG_WEIGHTS_TEXT:
        weights = _text(reader.take(reader.varint("weights text length", 1, 4096)), reader)
    metadata: dict[str, JsonValue] = {}
    if flags & FLAG_METADATA:
        coding = reader.u8()
        body = reader.take(reader.varint("metadata length", 0, MAX_METADATA_BYTES))
        metadata = _metadata(coding, body, reader)
    sections: list[Section] = []
    if not frame_major:
        assert num_frames is not None
        width = bits_per_token(codebook_size)
        count = reader.varint("section count", 0, len(present))
        offset = stored = 0
        for _ in range(count):
            level_count = reader.varint("section level count", 1, max(1, len(present) - stored))
            levels = present[stored : stored + level_count]
            stored += level_count
            coding_byte = reader.u8()
            if coding_byte not in (0, 1):
                reader.problems.append(f"section coding {coding_byte} is not 0 (packed11) or 1 (range)")
            tokens_crc = None
            if coding_byte == 1:
                length = reader.varint("section length", 0, 1 << 40)
                tokens_crc = reader.u32()
            else:
                length = packed_size(num_frames * len(levels), width)
            sections.append(
                Section(levels, offset, length, reader.u32(), "range" if coding_byte == 1 else "packed11", tokens_crc)
            )
            offset += length
    header = Header(
        2,
        "frame-major" if frame_major else "level-major",
        "range" if flags & FLAG_RANGE else "packed11",
        num_levels,
        present,
        num_frames,
        num_samples,
        sample_rate,
        frame_rate,
        codebook_size,
        weights,
        tuple(sections),
        metadata,
    )
    return header, reader


def _text(raw: bytes, reader: _Reader) -> str:
    try:
        return raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        reader.problems.append("the weights text is not UTF-8")
        return ""


def _metadata(coding: int, body: bytes, reader: _Reader) -> dict[str, JsonValue]:
    if coding == METADATA_ZLIB:
        inflater = zlib.decompressobj()
        try:
            body = inflater.decompress(body, MAX_METADATA_BYTES)
        except zlib.error as exc:
            reader.problems.append(f"the metadata block is not zlib data: {exc}")
            return {}
        if inflater.unconsumed_tail or not inflater.eof or inflater.unused_data:
            reader.problems.append("the metadata block is not one whole zlib stream (or is too large)")
            return {}
    elif coding != METADATA_JSON:
        reader.problems.append(f"metadata coding {coding} is not 0 (JSON) or 1 (zlib)")
        return {}
    try:
        value = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        reader.problems.append(f"the metadata is not UTF-8 JSON: {exc}")
        return {}
    if not isinstance(value, dict):
        reader.problems.append("the metadata is not a JSON object")
        return {}
    result: dict[str, JsonValue] = value
    return result


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed in .mimi metadata")
