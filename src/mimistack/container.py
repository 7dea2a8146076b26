"""The `.mimi` token file format, version 1 (specified byte by byte in `docs/format.md`).

Sits on `tokens` (it reads and writes `TokenGrid`s; `TokenGrid.save`/`load` delegate here), `levels` and `config`.
Used by the CLI (`mimistack info`, `truncate`), `ops`, `analysis` (bits per token via `measure_coding`) and `corpus`.

Two layouts share one header:

* ``level-major`` (the default): level 0's tokens for every frame, then level 1's, ... Each level is a section with
  its own CRC32, so any prefix of the file that ends at a section boundary is a valid, lower-bitrate file; a reader
  given a truncated file returns the complete sections and warns (`TruncatedFileWarning`).
* ``frame-major``: one self-checking record per frame, appendable while a live stream runs (`FrameStreamWriter`).

Two codings: ``packed11`` (fixed-width bit packing, 11 bits per Mimi token) and ``range`` (lossless adaptive range
coding with the `constriction` library; a section or record that would not get smaller is stored packed instead).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import struct
import tempfile
import warnings
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Literal

import numpy as np

from ._files import commit, refuse_overwrite
from .levels import Levels, LevelsLike
from .tokens import TokenGrid, TokenGridError

__all__ = [
    "CODINGS",
    "FORMAT_VERSION",
    "LAYOUTS",
    "MAGIC",
    "CodingMeasurement",
    "ContainerError",
    "FileInfo",
    "FrameStreamWriter",
    "LevelInfo",
    "TruncatedFileWarning",
    "bits_per_token",
    "describe",
    "grid_from_bytes",
    "grid_to_bytes",
    "measure_coding",
    "pack_tokens",
    "read_grid",
    "truncate",
    "unpack_tokens",
    "write_grid",
]

MAGIC = b"MIMI\x00TOK"
"""First 8 bytes of every `.mimi` file."""
FORMAT_VERSION = 1
LAYOUTS = ("level-major", "frame-major")
CODINGS = ("packed11", "range")
Layout = Literal["level-major", "frame-major"]
Coding = Literal["packed11", "range"]

DEFAULT_MAX_TOKENS = 1 << 28
"""Readers refuse headers that declare more tokens than this (512 MiB of uint16), before allocating anything."""

_PREFIX = struct.Struct("<8sHI")  # magic, version, header length
_CRC = struct.Struct("<I")
_RECORD = struct.Struct("<IHBI")  # frame index, level count, coding, payload length
_END = struct.Struct("<QQ")  # end record payload: num_frames, num_samples
_END_INDEX = 0xFFFF_FFFF
_RECORD_CODING = {"packed11": 0, "range": 1}
_MAX_FRAMES = _END_INDEX - 1
_MAX_LEVELS = 0xFFFF

# Adaptive model constants (part of the format: changing any of them changes the `range` bit stream).
_MATCH_INCREMENT = 32
_TOKEN_INCREMENT = 1
_RESCALE_LIMIT = 1 << 16
_NO_LOWER = 3  # lower-level match context for the first stored level


class ContainerError(ValueError):
    """A `.mimi` file (or byte string) that cannot be read or written: bad magic, version, header or section."""


class TruncatedFileWarning(UserWarning):
    """A `.mimi` file ended early; the complete levels (or frames) it holds were recovered."""


def bits_per_token(codebook_size: int) -> int:
    """Width of one token in the fixed-width packing: ceil(log2(codebook_size)), at least 1 (11 for Mimi)."""
    if not 1 <= codebook_size <= 65536:
        raise ContainerError(f"codebook_size must lie in 1-65536, got {codebook_size}")
    return max(1, (codebook_size - 1).bit_length())


# -- fixed-width packing ----------------------------------------------------------------------------------------
def pack_tokens(tokens: np.ndarray | Sequence[int], bits_per_token: int = 11) -> bytes:
    """Pack integer tokens (any shape, read in C order) at `bits_per_token` bits each, little-endian bit order.

    Token i occupies stream bits `i*w .. i*w+w-1`, least significant bit first; stream bit j is bit `j % 8` of byte
    `j // 8`. The last byte is padded with zero bits. Returns `ceil(n*w/8)` bytes.
    """
    width = _check_width(bits_per_token)
    values = np.asarray(tokens)
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise ContainerError(f"tokens must be integers, got dtype {values.dtype}")
    values = values.ravel().astype(np.int64)
    if values.size and (values.min() < 0 or values.max() >= 1 << width):
        raise ContainerError(f"tokens must lie in 0-{(1 << width) - 1} to pack at {width} bits, "
                             f"got {int(values.min())}..{int(values.max())}")
    shifts = np.arange(width, dtype=np.int64)
    bits = ((values[:, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(bits.ravel(), bitorder="little").tobytes()


def unpack_tokens(data: bytes | bytearray | memoryview, count: int, bits_per_token: int = 11) -> np.ndarray:
    """Inverse of `pack_tokens`: the first `count` tokens of `data` as uint16 `[count]`."""
    width = _check_width(bits_per_token)
    if count < 0:
        raise ContainerError(f"count must be >= 0, got {count}")
    needed = (count * width + 7) // 8
    if len(data) < needed:
        raise ContainerError(f"{count} tokens of {width} bits need {needed} bytes, got {len(data)}")
    raw = np.frombuffer(data, dtype=np.uint8, count=needed)
    bits = np.unpackbits(raw, bitorder="little", count=count * width).reshape(count, width)
    weights = (1 << np.arange(width, dtype=np.int64))
    return (bits.astype(np.int64) @ weights).astype(np.uint16)


def _check_width(bits_per_token: int) -> int:
    if isinstance(bits_per_token, bool) or not isinstance(bits_per_token, (int, np.integer)) \
            or not 1 <= bits_per_token <= 16:
        raise ContainerError(f"bits_per_token must be an integer in 1-16, got {bits_per_token!r}")
    return int(bits_per_token)


def _packed_size(count: int, width: int) -> int:
    return (count * width + 7) // 8


# -- adaptive range coding --------------------------------------------------------------------------------------
def _constriction() -> Any:
    try:
        import constriction
    except ImportError:  # pragma: no cover - depends on the environment
        raise ContainerError(
            "coding='range' needs the constriction package: pip install 'constriction>=0.4'") from None
    return constriction


def _match_symbols(tokens: np.ndarray) -> np.ndarray:
    """Per frame: 1 if the token equals the previous frame's, 2 if it equals the one before (and not the previous),
    else 0. int8 `[T]`. The context the next stored level sees."""
    t = tokens.astype(np.int64)
    match = np.zeros(t.shape[0], dtype=np.int8)
    if t.shape[0] > 1:
        match[1:][t[1:] == t[:-1]] = 1
    if t.shape[0] > 2:
        match[2:][(t[2:] == t[:-2]) & (t[2:] != t[1:-1])] = 2
    return match


class _LevelModel:
    """Adaptive model of one level's token sequence (see docs/format.md, "Range coding").

    Each token is a match symbol (0 new, 1 = previous frame's token, 2 = the token two frames back), coded with
    adaptive counts chosen by (this level's previous match symbol, the lower stored level's match symbol in this
    frame); a new token is then coded with an adaptive frequency table over the codebook.
    """

    def __init__(self, codebook_size: int) -> None:
        self.token_counts = np.ones(codebook_size, dtype=np.float64)
        self.token_total = codebook_size
        self.match_counts = np.ones((3 * 4, 3), dtype=np.float64)
        self.last1 = -1
        self.last2 = -1
        self.prev_match = 0

    def context(self, lower_match: int) -> tuple[int, int]:
        """(context row, number of possible match symbols) for the next token."""
        if self.last1 < 0:
            alphabet = 1
        elif self.last2 < 0 or self.last1 == self.last2:
            alphabet = 2
        else:
            alphabet = 3
        return self.prev_match * 4 + lower_match, alphabet

    def match_of(self, token: int) -> int:
        if token == self.last1:
            return 1
        if token == self.last2:
            return 2
        return 0

    def update(self, token: int, match: int, row: int, alphabet: int) -> None:
        if alphabet > 1:
            counts = self.match_counts[row]
            counts[match] += _MATCH_INCREMENT
            if counts.sum() > _RESCALE_LIMIT:
                self.match_counts[row] = np.floor((counts + 1) / 2)
        if match == 0:
            self.token_counts[token] += _TOKEN_INCREMENT
            self.token_total += _TOKEN_INCREMENT
            if self.token_total > _RESCALE_LIMIT:
                self.token_counts = np.floor((self.token_counts + 1) / 2)
                self.token_total = int(self.token_counts.sum())
        self.last2, self.last1 = self.last1, token
        self.prev_match = match

    def encode(self, encoder: Any, categorical: Any, token: int, lower_match: int) -> int:
        row, alphabet = self.context(lower_match)
        match = self.match_of(token)
        if alphabet > 1:
            encoder.encode(match, categorical(self.match_counts[row, :alphabet], perfect=False))
        if match == 0 and self.token_counts.shape[0] > 1:  # a one-entry codebook needs no bits
            encoder.encode(token, categorical(self.token_counts, perfect=False))
        self.update(token, match, row, alphabet)
        return match

    def decode(self, decoder: Any, categorical: Any, lower_match: int) -> tuple[int, int]:
        row, alphabet = self.context(lower_match)
        match = int(decoder.decode(categorical(self.match_counts[row, :alphabet], perfect=False))) \
            if alphabet > 1 else 0
        if match == 0:
            token = int(decoder.decode(categorical(self.token_counts, perfect=False))) \
                if self.token_counts.shape[0] > 1 else 0
        else:
            token = self.last1 if match == 1 else self.last2
        self.update(token, match, row, alphabet)
        return token, match

    def observe(self, token: int, lower_match: int) -> int:
        """Update as `encode` would, without coding (for frames stored packed)."""
        row, alphabet = self.context(lower_match)
        match = self.match_of(token)
        self.update(token, match, row, alphabet)
        return match


def _range_encode_level(tokens: np.ndarray, lower_matches: np.ndarray | None, codebook_size: int) -> bytes:
    """Range-code one level's tokens `[T]` (a level-major section) with a fresh model."""
    stream = _constriction().stream
    encoder = stream.queue.RangeEncoder()
    categorical = stream.model.Categorical
    model = _LevelModel(codebook_size)
    for t, token in enumerate(tokens.tolist()):
        lower = _NO_LOWER if lower_matches is None else int(lower_matches[t])
        model.encode(encoder, categorical, token, lower)
    return encoder.get_compressed().astype("<u4").tobytes()


def _range_decode_level(data: bytes, count: int, lower_matches: np.ndarray | None, codebook_size: int) -> np.ndarray:
    stream = _constriction().stream
    if len(data) % 4:
        raise ContainerError(f"range-coded data is {len(data)} bytes, not a whole number of 32-bit words")
    decoder = stream.queue.RangeDecoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))
    categorical = stream.model.Categorical
    model = _LevelModel(codebook_size)
    out = np.empty(count, dtype=np.uint16)
    for t in range(count):
        lower = _NO_LOWER if lower_matches is None else int(lower_matches[t])
        out[t] = model.decode(decoder, categorical, lower)[0]
    return out


# -- header -----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Section:
    level: int
    offset: int
    length: int
    crc32: int
    coding: str
    tokens_crc32: int | None = None

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"level": self.level, "offset": self.offset, "length": self.length,
                                 "crc32": self.crc32, "coding": self.coding}
        if self.tokens_crc32 is not None:
            entry["tokens_crc32"] = self.tokens_crc32
        return entry


@dataclasses.dataclass(frozen=True)
class _Header:
    layout: str
    coding: str
    num_levels: int
    levels_present: tuple[int, ...]
    num_frames: int | None
    num_samples: int | None
    sample_rate: int
    frame_rate: float
    codebook_size: int
    weights_sha256: str
    sections: tuple[_Section, ...]
    metadata: dict[str, Any]

    @property
    def width(self) -> int:
        return bits_per_token(self.codebook_size)

    def to_bytes(self) -> bytes:
        body = {
            "format_version": FORMAT_VERSION,
            "layout": self.layout,
            "coding": self.coding,
            "num_levels": self.num_levels,
            "levels_present": list(self.levels_present),
            "num_frames": self.num_frames,
            "num_samples": self.num_samples,
            "sample_rate": self.sample_rate,
            "frame_rate": self.frame_rate,
            "codebook_size": self.codebook_size,
            "bits_per_token": self.width,
            "weights_sha256": self.weights_sha256,
            "sections": [s.to_json() for s in self.sections],
            "metadata": self.metadata,
        }
        _check_metadata(self.metadata, "metadata")
        try:
            text = json.dumps(body, allow_nan=False, separators=(",", ":"))  # ASCII: lone surrogates survive
        except (TypeError, ValueError) as exc:
            raise ContainerError(f"grid metadata cannot be stored as JSON: {exc}") from None
        encoded = text.encode("utf-8")
        head = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(encoded)) + encoded
        return head + _CRC.pack(zlib.crc32(head))


def _check_metadata(value: Any, where: str) -> None:
    """Metadata must survive a JSON round trip unchanged: str keys, no NaN, only JSON types (tuples become lists)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ContainerError(f"{where} has a non-string key {key!r}; JSON keys must be strings")
            _check_metadata(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_metadata(item, f"{where}[{i}]")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ContainerError(f"{where} is {value}; JSON has no NaN or infinity")
    elif not (value is None or isinstance(value, (str, int, bool))):
        raise ContainerError(f"{where} is a {type(value).__name__}, which JSON cannot store")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in a .mimi header")


def _parse_header(data: bytes, source: str) -> tuple[_Header, int]:
    """Parse and check the header; returns it and the payload's start offset."""
    if len(data) < len(MAGIC):
        if MAGIC.startswith(bytes(data)) and data:
            raise ContainerError(f"{source}: truncated inside the header ({len(data)} bytes)")
        raise ContainerError(f"{source}: not a .mimi file (too short for the magic number)")
    if data[:8] != MAGIC:
        raise ContainerError(f"{source}: not a .mimi file (magic {bytes(data[:8])!r}, expected {MAGIC!r})")
    if len(data) < _PREFIX.size:
        raise ContainerError(f"{source}: truncated inside the header ({len(data)} bytes)")
    _, version, header_length = _PREFIX.unpack_from(data)
    if version != FORMAT_VERSION:
        raise ContainerError(f"{source}: unsupported .mimi format version {version} "
                             f"(this mimistack reads version {FORMAT_VERSION})")
    payload_start = _PREFIX.size + header_length + _CRC.size
    if len(data) < payload_start:
        raise ContainerError(f"{source}: truncated inside the header "
                             f"({len(data)} of {payload_start} header bytes)")
    (stored_crc,) = _CRC.unpack_from(data, payload_start - _CRC.size)
    if zlib.crc32(data[:payload_start - _CRC.size]) != stored_crc:
        raise ContainerError(f"{source}: header checksum mismatch (the header is corrupted)")
    try:
        body = json.loads(bytes(data[_PREFIX.size:_PREFIX.size + header_length]).decode("utf-8"),
                          parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise ContainerError(f"{source}: header is not valid UTF-8 JSON: {exc}") from None
    return _header_from_json(body, source), payload_start


def _header_from_json(body: Any, source: str) -> _Header:
    def fail(message: str) -> ContainerError:
        return ContainerError(f"{source}: bad header: {message}")

    if not isinstance(body, dict):
        raise fail("not a JSON object")

    def field(name: str, kind: type | tuple[type, ...], *, nullable: bool = False) -> Any:
        if name not in body:
            raise fail(f"missing key {name!r}")
        value = body[name]
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, kind):
            raise fail(f"{name!r} has the wrong type ({type(value).__name__})")
        return value

    def integer(name: str, low: int, high: int, *, nullable: bool = False) -> int | None:
        value = field(name, int, nullable=nullable)
        if value is not None and not low <= value <= high:
            raise fail(f"{name!r} = {value} is out of range {low}-{high}")
        return value

    if field("format_version", int) != FORMAT_VERSION:
        raise fail(f"format_version {body['format_version']} does not match the file's version {FORMAT_VERSION}")
    layout = field("layout", str)
    if layout not in LAYOUTS:
        raise fail(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    coding = field("coding", str)
    if coding not in CODINGS:
        raise fail(f"unknown coding {coding!r}; expected one of {', '.join(CODINGS)}")
    num_levels = integer("num_levels", 1, _MAX_LEVELS)
    assert num_levels is not None
    present_raw = field("levels_present", list)
    if any(isinstance(i, bool) or not isinstance(i, int) for i in present_raw):
        raise fail("levels_present must hold integers")
    present = tuple(present_raw)
    if list(present) != sorted(set(present)) or any(not 0 <= i < num_levels for i in present):
        raise fail(f"levels_present {present_raw} must be ascending, unique and within 0-{num_levels - 1}")
    frame_major = layout == "frame-major"
    num_frames = integer("num_frames", 0, _MAX_FRAMES, nullable=frame_major)
    num_samples = integer("num_samples", 0, 1 << 62, nullable=frame_major)
    sample_rate = integer("sample_rate", 1, 1 << 31)
    frame_rate = float(field("frame_rate", (int, float)))
    if not (math.isfinite(frame_rate) and frame_rate > 0):
        raise fail(f"frame_rate must be positive, got {frame_rate}")
    codebook_size = integer("codebook_size", 1, 65536)
    assert codebook_size is not None and sample_rate is not None
    width = bits_per_token(codebook_size)
    if field("bits_per_token", int) != width:
        raise fail(f"bits_per_token {body['bits_per_token']} does not match codebook_size {codebook_size} "
                   f"(expected {width})")
    weights = field("weights_sha256", str)
    metadata = field("metadata", dict)
    sections = tuple(_section_from_json(entry, fail) for entry in field("sections", list))
    header = _Header(layout, coding, num_levels, present, num_frames, num_samples, sample_rate, frame_rate,
                     codebook_size, weights, sections, metadata)
    _check_sections(header, fail)
    return header


def _section_from_json(entry: Any, fail: Any) -> _Section:
    if not isinstance(entry, dict):
        raise fail("a section entry is not a JSON object")
    values: dict[str, Any] = {}
    for key in ("level", "offset", "length", "crc32"):
        value = entry.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise fail(f"section key {key!r} must be a non-negative integer, got {value!r}")
        values[key] = value
    if entry.get("coding") not in CODINGS:
        raise fail(f"section coding {entry.get('coding')!r} is not one of {', '.join(CODINGS)}")
    tokens_crc = entry.get("tokens_crc32")
    if entry["coding"] == "range" and (isinstance(tokens_crc, bool) or not isinstance(tokens_crc, int)):
        raise fail(f"range-coded section of level {values['level']} lacks an integer 'tokens_crc32'")
    return _Section(values["level"], values["offset"], values["length"], values["crc32"], entry["coding"],
                    tokens_crc if entry["coding"] == "range" else None)


def _check_sections(header: _Header, fail: Any) -> None:
    if header.layout == "frame-major":
        if header.sections:
            raise fail("a frame-major file has no sections")
        return
    assert header.num_frames is not None
    levels = tuple(s.level for s in header.sections)
    if levels != header.levels_present:
        raise fail(f"sections hold levels {list(levels)} but levels_present says {list(header.levels_present)}")
    packed = _packed_size(header.num_frames, header.width)
    offset = 0
    for section in header.sections:
        if section.offset != offset:
            raise fail(f"section of level {section.level} starts at {section.offset}, expected {offset}")
        if section.coding == "packed11" and section.length != packed:
            raise fail(f"packed section of level {section.level} is {section.length} bytes, expected {packed}")
        if section.coding == "range" and (section.length >= packed or section.length % 4):
            raise fail(f"range-coded section of level {section.level} has an impossible length {section.length}")
        offset += section.length


def _check_token_budget(header: _Header, max_tokens: int, source: str, num_frames: int) -> None:
    if header.num_levels * num_frames > max_tokens:
        raise ContainerError(f"{source}: header declares {header.num_levels} x {num_frames} tokens, more than the "
                             f"limit of {max_tokens}")


# -- writing ----------------------------------------------------------------------------------------------------
def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ContainerError(f"unknown {name} {value!r}; expected one of {', '.join(choices)}")


def _base_header(grid: TokenGrid, layout: str, coding: str, sections: tuple[_Section, ...]) -> _Header:
    frame_major = layout == "frame-major"
    return _Header(layout, coding, grid.num_levels, tuple(grid.levels_present or ()),
                   None if frame_major else grid.num_frames, None if frame_major else grid.num_samples,
                   int(grid.sample_rate), float(grid.frame_rate), int(grid.codebook_size), grid.weights_sha256,
                   sections, dict(grid.metadata))


def _encode_sections(grid: TokenGrid, coding: str) -> tuple[tuple[_Section, ...], list[bytes]]:
    width = bits_per_token(grid.codebook_size)
    packed_size = _packed_size(grid.num_frames, width)
    sections: list[_Section] = []
    chunks: list[bytes] = []
    offset = 0
    lower_matches: np.ndarray | None = None
    for level in grid.levels_present or ():
        tokens = grid.codes[level]
        chunk = pack_tokens(tokens, width)
        entry = _Section(level, offset, len(chunk), zlib.crc32(chunk), "packed11")
        if coding == "range" and packed_size > 0:
            coded = _range_encode_level(tokens, lower_matches, grid.codebook_size)
            if len(coded) < packed_size:
                chunk = coded
                entry = _Section(level, offset, len(coded), zlib.crc32(coded), "range",
                                 zlib.crc32(tokens.astype("<u2").tobytes()))
            lower_matches = _match_symbols(tokens)
        sections.append(entry)
        chunks.append(chunk)
        offset += len(chunk)
    return tuple(sections), chunks


def grid_to_bytes(grid: TokenGrid, *, layout: Layout = "level-major", coding: Coding = "packed11") -> bytes:
    """The `.mimi` bytes of `grid` (see `docs/format.md`)."""
    _check_choice("layout", layout, LAYOUTS)
    _check_choice("coding", coding, CODINGS)
    if not 1 <= grid.num_levels <= _MAX_LEVELS or grid.num_frames > _MAX_FRAMES:
        raise ContainerError(f"a grid of {grid.num_levels} x {grid.num_frames} tokens cannot be stored "
                             f"(1-{_MAX_LEVELS} levels, at most {_MAX_FRAMES} frames)")
    if layout == "frame-major":
        buffer = io.BytesIO()
        writer = _FrameRecordWriter(buffer, _base_header(grid, layout, coding, ()))
        writer.append(grid.codes)
        writer.finish(grid.num_samples)
        return buffer.getvalue()
    sections, chunks = _encode_sections(grid, coding)
    return _base_header(grid, layout, coding, sections).to_bytes() + b"".join(chunks)


def write_grid(grid: TokenGrid, path: str | os.PathLike[str], *, force: bool = False,
               layout: Layout = "level-major", coding: Coding = "packed11") -> Path:
    """Write `grid` as a `.mimi` file atomically; refuses to overwrite an existing file unless `force`.

    `coding="range"` runs at roughly 60 000 tokens per second each way (about 25 s for an hour of 32 levels);
    `packed11` is vectorised and near-instant.
    """
    target = Path(path)
    refuse_overwrite(target, force)
    data = grid_to_bytes(grid, layout=layout, coding=coding)
    with _AtomicOutput(target, force) as handle:
        handle.write(data)
    return target


class _AtomicOutput:
    """Context manager: a binary handle on a temporary file beside `target`; on success fsync and move it into
    place (no-clobber unless `force`), on exception remove it."""

    def __init__(self, target: Path, force: bool) -> None:
        self.target = target
        self.force = force
        self.tmp: Path | None = None
        self.handle: BinaryIO | None = None

    def __enter__(self) -> BinaryIO:
        refuse_overwrite(self.target, self.force)
        if not self.target.parent.is_dir():
            raise FileNotFoundError(f"cannot write {self.target}: directory {self.target.parent} does not exist")
        fd, name = tempfile.mkstemp(dir=self.target.parent or ".", prefix=f".{self.target.name}.", suffix=".tmp")
        self.tmp = Path(name)
        self.handle = os.fdopen(fd, "wb")
        return self.handle

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        assert self.handle is not None and self.tmp is not None
        try:
            if exc_type is None:
                self.handle.flush()
                os.fsync(self.handle.fileno())
            self.handle.close()
            if exc_type is None:
                commit(self.tmp, self.target, self.force)
        finally:
            if self.tmp.exists():
                self.tmp.unlink()


# -- frame-major records ----------------------------------------------------------------------------------------
class _FrameRecordWriter:
    """Writes the header, then one record per frame, then the end record, to a binary handle."""

    def __init__(self, handle: BinaryIO, header: _Header) -> None:
        self.handle = handle
        self.header = header
        self.levels = list(header.levels_present)
        self.width = header.width
        self.frames = 0
        self.models = [_LevelModel(header.codebook_size) for _ in self.levels] if header.coding == "range" else []
        handle.write(header.to_bytes())

    def append(self, codes: np.ndarray) -> None:
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[0] != self.header.num_levels:
            raise ContainerError(f"frames must be [num_levels={self.header.num_levels}, n], got shape {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.header.codebook_size):
            raise ContainerError(f"tokens must lie in 0-{self.header.codebook_size - 1}")
        if self.frames + codes.shape[1] > _MAX_FRAMES:
            raise ContainerError("too many frames for one .mimi stream")
        rows = codes[self.levels].astype(np.int64)
        for t in range(rows.shape[1]):
            self.handle.write(self._record(rows[:, t]))
            self.frames += 1

    def _record(self, tokens: np.ndarray) -> bytes:
        payload = pack_tokens(tokens, self.width)
        coding = "packed11"
        if self.models:
            coded = self._range_frame(tokens)
            if len(coded) < len(payload):
                payload, coding = coded, "range"
        head = _RECORD.pack(self.frames, len(self.levels), _RECORD_CODING[coding], len(payload)) + payload
        return head + _CRC.pack(zlib.crc32(head))

    def _range_frame(self, tokens: np.ndarray) -> bytes:
        stream = _constriction().stream
        encoder = stream.queue.RangeEncoder()
        lower = _NO_LOWER
        for model, token in zip(self.models, tokens.tolist()):
            lower = model.encode(encoder, stream.model.Categorical, token, lower)
        return encoder.get_compressed().astype("<u4").tobytes()

    def finish(self, num_samples: int | None) -> None:
        if num_samples is None:
            num_samples = _whole_frame_samples(self.frames, self.header)
        if num_samples < 0 or _frames_for(num_samples, self.header) != self.frames:
            raise ContainerError(f"num_samples {num_samples} does not match the {self.frames} frames written")
        head = _RECORD.pack(_END_INDEX, 0, 0, _END.size) + _END.pack(self.frames, num_samples)
        self.handle.write(head + _CRC.pack(zlib.crc32(head)))


def _frames_for(num_samples: int, header: _Header) -> int:
    """Frames that cover `num_samples` (the rule `TokenGrid` checks)."""
    return int(np.ceil(num_samples / (header.sample_rate / header.frame_rate))) if num_samples else 0


def _whole_frame_samples(num_frames: int, header: _Header) -> int:
    return math.floor(num_frames * header.sample_rate / header.frame_rate)


class FrameStreamWriter:
    """Append frames to a frame-major `.mimi` file as they arrive (a live encoder's output).

    `append(codes)` takes uint `[num_levels, n]` (rows of levels not in `levels_present` are ignored); `close()`
    writes the end record with the source length. By default the file is written atomically (it appears at `path`
    on close and is removed if the `with` block raises). With `live=True` records go straight to `path` and are
    flushed as they are appended, so another process can follow the file; a writer that dies leaves a readable
    prefix (the reader warns that the end record is missing).
    """

    def __init__(self, path: str | os.PathLike[str], *, num_levels: int = 32,
                 levels_present: LevelsLike = None, sample_rate: int = 24_000, frame_rate: float = 12.5,
                 codebook_size: int = 2048, weights_sha256: str = "", metadata: dict[str, Any] | None = None,
                 coding: Coding = "packed11", force: bool = False, live: bool = False) -> None:
        _check_choice("coding", coding, CODINGS)
        self.path = Path(path)
        present = Levels.parse(levels_present, num_levels).indices
        header = _Header("frame-major", coding, num_levels, present, None, None, int(sample_rate),
                         float(frame_rate), int(codebook_size), weights_sha256, (), dict(metadata or {}))
        self._live = live
        self._atomic: _AtomicOutput | None = None
        if live:
            refuse_overwrite(self.path, force)
            self._handle: BinaryIO = open(self.path, "wb" if force else "xb")
        else:
            self._atomic = _AtomicOutput(self.path, force)
            self._handle = self._atomic.__enter__()
        self._writer = _FrameRecordWriter(self._handle, header)
        self._flush()
        self.closed = False

    @property
    def num_frames(self) -> int:
        return self._writer.frames

    def append(self, codes: np.ndarray) -> None:
        if self.closed:
            raise ContainerError(f"{self.path}: the stream writer is closed")
        self._writer.append(codes)
        self._flush()

    def _flush(self) -> None:
        if self._live:
            self._handle.flush()

    def close(self, num_samples: int | None = None) -> Path:
        """Write the end record and finish the file; `num_samples` defaults to whole frames."""
        if self.closed:
            return self.path
        self.closed = True
        try:
            self._writer.finish(num_samples)
        except BaseException as exc:
            self._abort(exc)
            raise
        if self._atomic is not None:
            self._atomic.__exit__(None, None, None)
        else:
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
        return self.path

    def _abort(self, exc: BaseException) -> None:
        if self._atomic is not None:
            self._atomic.__exit__(type(exc), exc, exc.__traceback__)
        else:
            self._handle.close()

    def __enter__(self) -> FrameStreamWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if exc is None:
            self.close()
        elif not self.closed:
            self.closed = True
            self._abort(exc)


# -- reading ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Decoded:
    grid: TokenGrid
    header: _Header
    header_bytes: int
    total_bytes: int
    complete_sections: int
    records: int
    truncation: str | None  # a message when the file ended early


def _decode(data: bytes, source: str, max_tokens: int = DEFAULT_MAX_TOKENS) -> _Decoded:
    data = bytes(data)
    header, payload_start = _parse_header(data, source)
    if header.layout == "frame-major":
        return _decode_frame_major(data, header, payload_start, source, max_tokens)
    return _decode_level_major(data, header, payload_start, source, max_tokens)


def _make_grid(header: _Header, codes: np.ndarray, num_samples: int, present: Iterable[int], source: str) -> TokenGrid:
    try:
        return TokenGrid(codes=codes, num_samples=num_samples, sample_rate=header.sample_rate,
                         frame_rate=header.frame_rate, codebook_size=header.codebook_size,
                         weights_sha256=header.weights_sha256, levels_present=tuple(present),
                         metadata=header.metadata)
    except TokenGridError as exc:
        raise ContainerError(f"{source}: header and tokens disagree: {exc}") from None


def _decode_level_major(data: bytes, header: _Header, payload_start: int, source: str,
                        max_tokens: int) -> _Decoded:
    assert header.num_frames is not None and header.num_samples is not None
    num_frames = header.num_frames
    _check_token_budget(header, max_tokens, source, num_frames)
    payload = memoryview(data)[payload_start:]
    declared = sum(s.length for s in header.sections)
    if len(payload) > declared:
        raise ContainerError(f"{source}: {len(payload) - declared} unexpected bytes after the last section")
    codes = np.zeros((header.num_levels, num_frames), dtype=np.uint16)
    present: list[int] = []
    lower_matches: np.ndarray | None = None
    truncation = None
    for section in header.sections:
        end = section.offset + section.length
        if end > len(payload):
            truncation = _level_truncation_message(source, header, present, section, len(payload))
            break
        chunk = bytes(payload[section.offset:end])
        if zlib.crc32(chunk) != section.crc32:
            raise ContainerError(f"{source}: level {section.level} is corrupted (section checksum mismatch)")
        tokens = _decode_section(chunk, section, num_frames, lower_matches, header, source)
        codes[section.level] = tokens
        present.append(section.level)
        if header.coding == "range":
            lower_matches = _match_symbols(tokens)
    grid = _make_grid(header, codes, header.num_samples, present, source)
    return _Decoded(grid, header, payload_start, len(data), len(present), 0, truncation)


def _decode_section(chunk: bytes, section: _Section, num_frames: int, lower_matches: np.ndarray | None,
                    header: _Header, source: str) -> np.ndarray:
    if section.coding == "packed11":
        tokens = unpack_tokens(chunk, num_frames, header.width)
        _check_token_range(tokens, header.codebook_size, f"{source}: level {section.level}")
        return tokens
    try:
        tokens = _range_decode_level(chunk, num_frames, lower_matches, header.codebook_size)
    except ContainerError:
        raise
    except Exception as exc:  # the range decoder's own errors on malformed data
        raise ContainerError(f"{source}: level {section.level} cannot be range-decoded: {exc}") from None
    if zlib.crc32(tokens.astype("<u2").tobytes()) != section.tokens_crc32:
        raise ContainerError(f"{source}: level {section.level} decodes to the wrong tokens (tokens_crc32 mismatch; "
                             "written by an incompatible range coder?)")
    return tokens


def _level_truncation_message(source: str, header: _Header, present: list[int], cut: _Section,
                              available: int) -> str:
    partial = " (a partial section was dropped)" if available > cut.offset else ""
    return (f"{source} is truncated: recovered {len(present)} of {len(header.sections)} levels "
            f"({Levels(tuple(present), header.num_levels)}){partial}")


def _decode_frame_major(data: bytes, header: _Header, payload_start: int, source: str,
                        max_tokens: int) -> _Decoded:
    width = header.width
    levels = list(header.levels_present)
    packed_size = _packed_size(len(levels), width)
    models = [_LevelModel(header.codebook_size) for _ in levels] if header.coding == "range" else []
    columns: list[np.ndarray] = []
    position = payload_start
    truncation = None
    end: tuple[int, int] | None = None
    while True:
        remaining = len(data) - position
        if remaining == 0:
            truncation = (f"{source} is truncated: the stream has no end record; "
                          f"recovered {len(columns)} frames")
            break
        if remaining < _RECORD.size:
            truncation = f"{source} is truncated: recovered {len(columns)} frames (a partial record was dropped)"
            break
        index, level_count, coding, length = _RECORD.unpack_from(data, position)
        is_end = index == _END_INDEX
        if is_end and (level_count, coding, length) != (0, 0, _END.size):
            raise ContainerError(f"{source}: malformed end record after frame {len(columns)}")
        if not is_end:
            _check_record(index, level_count, coding, length, len(columns), len(levels), packed_size, source)
        record_end = position + _RECORD.size + length + _CRC.size
        if record_end > len(data):
            truncation = f"{source} is truncated: recovered {len(columns)} frames (a partial record was dropped)"
            break
        (stored_crc,) = _CRC.unpack_from(data, record_end - _CRC.size)
        if zlib.crc32(data[position:record_end - _CRC.size]) != stored_crc:
            what = "end record" if is_end else f"record of frame {index}"
            raise ContainerError(f"{source}: {what} is corrupted (checksum mismatch)")
        body = data[position + _RECORD.size:record_end - _CRC.size]
        position = record_end
        if is_end:
            end = _END.unpack(body)
            break
        if header.num_levels * (len(columns) + 1) > max_tokens:
            raise ContainerError(f"{source}: more than the limit of {max_tokens} tokens")
        columns.append(_decode_record(body, coding, levels, width, models, index, source, header.codebook_size))
    if end is not None:
        if position != len(data):
            raise ContainerError(f"{source}: {len(data) - position} unexpected bytes after the end record")
        if end[0] != len(columns):
            raise ContainerError(f"{source}: end record counts {end[0]} frames, the file holds {len(columns)}")
        num_samples = end[1]
    else:
        num_samples = _whole_frame_samples(len(columns), header)
    codes = np.zeros((header.num_levels, len(columns)), dtype=np.uint16)
    if columns and levels:
        codes[levels] = np.stack(columns, axis=1)
    grid = _make_grid(header, codes, num_samples, levels, source)
    return _Decoded(grid, header, payload_start, len(data), len(levels), len(columns), truncation)


def _check_record(index: int, level_count: int, coding: int, length: int, expected_index: int, num_levels: int,
                  packed_size: int, source: str) -> None:
    if index != expected_index:
        raise ContainerError(f"{source}: record for frame {index} where frame {expected_index} was expected")
    if level_count != num_levels:
        raise ContainerError(f"{source}: record of frame {index} holds {level_count} levels, "
                             f"the header lists {num_levels}")
    if coding == _RECORD_CODING["packed11"]:
        if length != packed_size:
            raise ContainerError(f"{source}: packed record of frame {index} is {length} bytes, "
                                 f"expected {packed_size}")
    elif coding == _RECORD_CODING["range"]:
        if length >= packed_size or length % 4:
            raise ContainerError(f"{source}: range-coded record of frame {index} has an impossible length {length}")
    else:
        raise ContainerError(f"{source}: record of frame {index} has unknown coding {coding}")


def _check_token_range(tokens: np.ndarray, codebook_size: int, where: str) -> None:
    if tokens.size and int(tokens.max()) >= codebook_size:
        raise ContainerError(f"{where} holds token {int(tokens.max())}, outside the codebook of {codebook_size}")


def _decode_record(body: bytes, coding: int, levels: list[int], width: int, models: list[_LevelModel],
                   index: int, source: str, codebook_size: int) -> np.ndarray:
    if coding == _RECORD_CODING["range"]:
        if not models:
            raise ContainerError(f"{source}: range-coded record of frame {index} in a packed11 file")
        stream = _constriction().stream
        try:
            decoder = stream.queue.RangeDecoder(np.frombuffer(body, dtype="<u4").astype(np.uint32))
            tokens = np.empty(len(levels), dtype=np.uint16)
            lower = _NO_LOWER
            for k, model in enumerate(models):
                tokens[k], lower = model.decode(decoder, stream.model.Categorical, lower)
        except Exception as exc:
            raise ContainerError(f"{source}: record of frame {index} cannot be range-decoded: {exc}") from None
        return tokens
    tokens = unpack_tokens(body, len(levels), width)
    _check_token_range(tokens, codebook_size, f"{source}: record of frame {index}")
    lower = _NO_LOWER
    for model, token in zip(models, tokens.tolist()):
        lower = model.observe(token, lower)
    return tokens


def grid_from_bytes(data: bytes | bytearray | memoryview, *, source: str = "<bytes>",
                    max_tokens: int = DEFAULT_MAX_TOKENS) -> TokenGrid:
    """Decode `.mimi` bytes. A truncated file gives the complete levels (or frames) with a `TruncatedFileWarning`;
    anything else wrong raises `ContainerError`. `max_tokens` bounds what a header may ask the reader to allocate."""
    decoded = _decode(bytes(data), source, max_tokens)
    if decoded.truncation:
        warnings.warn(decoded.truncation, TruncatedFileWarning, stacklevel=2)
    return decoded.grid


def read_grid(path: str | os.PathLike[str]) -> TokenGrid:
    """Read a `.mimi` file; a truncated file gives the levels it holds, with a `TruncatedFileWarning`."""
    data = _read_file(Path(path))
    decoded = _decode(data, str(path))
    if decoded.truncation:
        warnings.warn(decoded.truncation, TruncatedFileWarning, stacklevel=2)
    return decoded.grid


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ContainerError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ContainerError(f"{path}: is a directory, not a .mimi file") from None


# -- inspection and editing -------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LevelInfo:
    """One stored level (a level-major section)."""

    level: int
    coding: str
    bytes: int
    bitrate: float
    """bit/s of this section over the source duration."""
    complete: bool


@dataclasses.dataclass(frozen=True)
class FileInfo:
    """What `mimistack info` prints about a `.mimi` file."""

    path: Path
    version: int
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
    metadata: dict[str, Any]


def describe(path: str | os.PathLike[str]) -> FileInfo:
    """Inspect a `.mimi` file (truncated files are described, not refused)."""
    target = Path(path)
    decoded = _decode(_read_file(target), str(target))
    header, grid = decoded.header, decoded.grid
    duration = grid.num_samples / grid.sample_rate if grid.num_samples else grid.num_frames / grid.frame_rate

    def rate(num_bytes: int) -> float:
        return num_bytes * 8 / duration if duration > 0 else 0.0

    levels = tuple(LevelInfo(s.level, s.coding, s.length, rate(s.length), i < decoded.complete_sections)
                   for i, s in enumerate(header.sections))
    return FileInfo(path=target, version=FORMAT_VERSION, layout=header.layout, coding=header.coding,
                    num_levels=header.num_levels, levels_present=tuple(grid.levels_present or ()),
                    num_frames=grid.num_frames, num_samples=grid.num_samples, sample_rate=grid.sample_rate,
                    frame_rate=grid.frame_rate, codebook_size=grid.codebook_size,
                    weights_sha256=grid.weights_sha256, duration=duration, header_bytes=decoded.header_bytes,
                    payload_bytes=decoded.total_bytes - decoded.header_bytes, total_bytes=decoded.total_bytes,
                    bitrate=rate(decoded.total_bytes), levels=levels, truncated=decoded.truncation is not None,
                    metadata=dict(header.metadata))


def truncate(path_in: str | os.PathLike[str], levels: LevelsLike, path_out: str | os.PathLike[str], *,
             force: bool = False) -> Path:
    """Write a valid `.mimi` file holding only `levels` of `path_in` (an int keeps that many leading levels; any
    subset works, the header says which are present). Keeps the input's layout and coding."""
    source = Path(path_in)
    decoded = _decode(_read_file(source), str(source))
    if decoded.truncation:
        warnings.warn(decoded.truncation, TruncatedFileWarning, stacklevel=2)
    grid = decoded.grid
    try:
        kept = grid.with_levels(Levels.parse(levels, grid.num_levels))
    except ValueError as exc:
        raise ContainerError(f"{source}: cannot keep levels {levels!r}: {exc}") from None
    return write_grid(kept, path_out, force=force, layout=decoded.header.layout,  # type: ignore[arg-type]
                      coding=decoded.header.coding)  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class CodingMeasurement:
    """Bits per token of each level under each coding, over a set of grids (level-major sections)."""

    levels: tuple[int, ...]
    num_tokens: tuple[int, ...]
    """Tokens per level, summed over the grids."""
    packed_bits_per_token: float
    """Fixed width: ceil(log2(codebook_size)) (11 for Mimi)."""
    range_bits_per_token: tuple[float, ...]
    """What the adaptive range coder alone costs (may exceed the packed width on incompressible data)."""
    stored_bits_per_token: tuple[float, ...]
    """What a `coding="range"` file pays: per section the smaller of the two."""


def measure_coding(grids: Iterable[TokenGrid]) -> CodingMeasurement:
    """Measure per-level bits per token of packed and range coding over `grids` (all with the same num_levels and
    codebook_size; levels absent from any grid are left out)."""
    grids = list(grids)
    if not grids:
        raise ContainerError("measure_coding needs at least one grid")
    num_levels, codebook_size = grids[0].num_levels, grids[0].codebook_size
    if any(g.num_levels != num_levels or g.codebook_size != codebook_size for g in grids):
        raise ContainerError("measure_coding needs grids with the same num_levels and codebook_size")
    levels = tuple(sorted(set.intersection(*(set(g.levels_present or ()) for g in grids))))
    width = bits_per_token(codebook_size)
    tokens = np.zeros(len(levels), dtype=np.int64)
    range_bits = np.zeros(len(levels))
    stored_bits = np.zeros(len(levels))
    for grid in grids:
        lower_matches: np.ndarray | None = None
        for k, level in enumerate(levels):
            row = grid.codes[level]
            packed = _packed_size(row.shape[0], width) * 8
            coded = len(_range_encode_level(row, lower_matches, codebook_size)) * 8 if row.shape[0] else 0
            lower_matches = _match_symbols(row)
            tokens[k] += row.shape[0]
            range_bits[k] += coded
            stored_bits[k] += coded if coded < packed else packed

    def per_token(bits: np.ndarray) -> tuple[float, ...]:
        return tuple(float(b / n) if n else 0.0 for b, n in zip(bits, tokens))

    return CodingMeasurement(levels, tuple(int(n) for n in tokens), float(width), per_token(range_bits),
                             per_token(stored_bits))
