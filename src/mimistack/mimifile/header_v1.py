"""The version 1 header: `MIMI\\0TOK`, u16 version 1, u32 length, a JSON object, u32 CRC32 (docs/format.md, "v1").

Read for old files and written only on request (`version=1`, used to make the v1 golden files). `header` holds
the shared `Header`/`Section` records and dispatches here by version; `level_major`/`frame_major` read the payload.
Sits on `errors`, `record` and `packing`.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Callable
from typing import cast

from .errors import ContainerError
from .header import Header, Section, check_sections
from .packing import bits_per_token
from .record import CODINGS, LAYOUTS, MAGIC, MAX_FRAMES, MAX_LEVELS, MAX_SAMPLES, Coding, JsonValue, Layout

__all__ = ["PREFIX", "encode_v1", "parse_v1"]

PREFIX = struct.Struct("<8sHI")  # magic, version, header length
_CRC = struct.Struct("<I")


def encode_v1(header: Header) -> bytes:
    """The v1 header bytes (prefix, JSON, CRC32)."""
    body = {
        "format_version": 1,
        "layout": header.layout,
        "coding": header.coding,
        "num_levels": header.num_levels,
        "levels_present": list(header.levels_present),
        "num_frames": header.num_frames,
        "num_samples": header.num_samples,
        "sample_rate": header.sample_rate,
        "frame_rate": header.frame_rate,
        "codebook_size": header.codebook_size,
        "bits_per_token": header.width,
        "weights_sha256": header.weights_sha256,
        "sections": [_section_json(s) for s in header.sections],
        "metadata": header.metadata,
    }
    try:
        text = json.dumps(body, allow_nan=False, separators=(",", ":"))  # ASCII: lone surrogates survive
    except (TypeError, ValueError) as exc:
        raise ContainerError(f"grid metadata cannot be stored as JSON: {exc}") from None
    encoded = text.encode("utf-8")
    head = PREFIX.pack(MAGIC, 1, len(encoded)) + encoded
    return head + _CRC.pack(zlib.crc32(head))


def _section_json(section: Section) -> dict[str, int | str]:
    if len(section.levels) != 1:
        raise ContainerError("a v1 section holds exactly one level")
    entry: dict[str, int | str] = {
        "level": section.levels[0],
        "offset": section.offset,
        "length": section.length,
        "crc32": section.crc32,
        "coding": section.coding,
    }
    if section.tokens_crc32 is not None:
        entry["tokens_crc32"] = section.tokens_crc32
    return entry


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not allowed in a .mimi header")


def parse_v1(data: bytes, source: str) -> tuple[Header, int]:
    """Parse and check a v1 header (the caller has checked the magic and the version); returns it and the
    payload's start offset."""
    if len(data) < PREFIX.size:
        raise ContainerError(f"{source}: truncated inside the header ({len(data)} bytes)")
    _, _, header_length = PREFIX.unpack_from(data)
    payload_start = PREFIX.size + header_length + _CRC.size
    if len(data) < payload_start:
        raise ContainerError(f"{source}: truncated inside the header ({len(data)} of {payload_start} header bytes)")
    (stored_crc,) = _CRC.unpack_from(data, payload_start - _CRC.size)
    if zlib.crc32(data[: payload_start - _CRC.size]) != stored_crc:
        raise ContainerError(f"{source}: header checksum mismatch (the header is corrupted)")
    try:
        body = json.loads(
            bytes(data[PREFIX.size : PREFIX.size + header_length]).decode("utf-8"), parse_constant=_reject_constant
        )
    except (ValueError, RecursionError) as exc:
        raise ContainerError(f"{source}: header is not valid UTF-8 JSON: {exc}") from None
    return _header_from_json(body, source), payload_start


def _header_from_json(body: object, source: str) -> Header:
    def fail(message: str) -> ContainerError:
        return ContainerError(f"{source}: bad header: {message}")

    if not isinstance(body, dict):
        raise fail("not a JSON object")

    def field(name: str, kind: type | tuple[type, ...], *, nullable: bool = False) -> object:
        if name not in body:
            raise fail(f"missing key {name!r}")
        value = body[name]
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, kind):
            raise fail(f"{name!r} has the wrong type ({type(value).__name__})")
        result: object = value
        return result

    def integer(name: str, low: int, high: int, *, nullable: bool = False) -> int | None:
        value = field(name, int, nullable=nullable)
        if value is None:
            return None
        assert isinstance(value, int)
        if not low <= value <= high:
            raise fail(f"{name!r} = {value} is out of range {low}-{high}")
        return value

    def required(name: str, low: int, high: int) -> int:
        value = integer(name, low, high)
        assert value is not None
        return value

    if field("format_version", int) != 1:
        raise fail(f"format_version {body['format_version']} does not match the file's version 1")
    layout = field("layout", str)
    if layout not in LAYOUTS:
        raise fail(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    coding = field("coding", str)
    if coding not in CODINGS:
        raise fail(f"unknown coding {coding!r}; expected one of {', '.join(CODINGS)}")
    num_levels = required("num_levels", 1, MAX_LEVELS)
    present_raw = field("levels_present", list)
    assert isinstance(present_raw, list)
    if any(isinstance(i, bool) or not isinstance(i, int) for i in present_raw):
        raise fail("levels_present must hold integers")
    present = tuple(int(i) for i in present_raw)
    if list(present) != sorted(set(present)) or any(not 0 <= i < num_levels for i in present):
        raise fail(f"levels_present {present_raw} must be ascending, unique and within 0-{num_levels - 1}")
    frame_major = layout == "frame-major"
    num_frames = integer("num_frames", 0, MAX_FRAMES, nullable=frame_major)
    num_samples = integer("num_samples", 0, MAX_SAMPLES, nullable=frame_major)
    sample_rate = required("sample_rate", 1, 1 << 31)
    frame_rate_raw = field("frame_rate", (int, float))
    assert isinstance(frame_rate_raw, (int, float))
    frame_rate = float(frame_rate_raw)
    if not (math.isfinite(frame_rate) and frame_rate > 0):
        raise fail(f"frame_rate must be positive, got {frame_rate}")
    codebook_size = required("codebook_size", 1, 65536)
    width = bits_per_token(codebook_size)
    if field("bits_per_token", int) != width:
        raise fail(
            f"bits_per_token {body['bits_per_token']} does not match codebook_size {codebook_size} (expected {width})"
        )
    weights = field("weights_sha256", str)
    metadata = field("metadata", dict)
    entries = field("sections", list)
    assert isinstance(weights, str) and isinstance(metadata, dict) and isinstance(entries, list)
    sections = tuple(_section_from_json(entry, fail) for entry in entries)
    header = Header(
        1,
        cast(Layout, layout),
        cast(Coding, coding),
        num_levels,
        present,
        num_frames,
        num_samples,
        sample_rate,
        frame_rate,
        codebook_size,
        weights,
        sections,
        cast(dict[str, JsonValue], metadata),
    )
    check_sections(header, fail)
    return header


def _section_from_json(entry: object, fail: Callable[[str], ContainerError]) -> Section:
    if not isinstance(entry, dict):
        raise fail("a section entry is not a JSON object")
    values: dict[str, int] = {}
    for key in ("level", "offset", "length", "crc32"):
        value = entry.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise fail(f"section key {key!r} must be a non-negative integer, got {value!r}")
        values[key] = value
    coding = entry.get("coding")
    if coding not in CODINGS:
        raise fail(f"section coding {coding!r} is not one of {', '.join(CODINGS)}")
    tokens_crc = entry.get("tokens_crc32")
    if coding == "range" and (isinstance(tokens_crc, bool) or not isinstance(tokens_crc, int)):
        raise fail(f"range-coded section of level {values['level']} lacks an integer 'tokens_crc32'")
    return Section(
        (values["level"],),
        values["offset"],
        values["length"],
        values["crc32"],
        cast(Coding, coding),
        tokens_crc if coding == "range" and isinstance(tokens_crc, int) else None,
    )
