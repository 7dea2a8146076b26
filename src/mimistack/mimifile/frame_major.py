"""The frame-major payload: one self-checking record per frame, then an end record; `FrameStreamWriter` appends
records while a live stream runs (`mimistack.stream` writes the received `.mimi` with it).

v1 records: u32 frame index, u16 level count, u8 coding, u32 length, payload, CRC32. v2 records (compact): u8
kind, [varint length for range], payload, CRC32 of (u32 frame index + record), so an out-of-sequence record fails
its check without storing the index. `header`/`header_v1` write the header, `packing`/`rangecoding` code the
tokens, `level_major` is the other layout, `readwrite` calls in here. Sits on `errors`, `record`, `header`,
`header_v1`, `packing`, `rangecoding`, `level_major` (`Decoded`), `mimistack.levels` and `mimistack._files`.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import numpy as np
from numpy.typing import NDArray

from .._files import commit, discard, open_temporary, refuse_overwrite
from ..levels import Levels, LevelsLike
from .errors import ContainerError
from .header import Header, encode_v2, encode_varint
from .header_v1 import encode_v1
from .level_major import Decoded
from .packing import pack_tokens, packed_size, unpack_tokens
from .rangecoding import FrameCoder
from .record import CODINGS, MAX_FRAMES, MAX_SAMPLES, Coding, JsonValue, MimiRecord, frames_for, whole_frame_samples

__all__ = ["FrameRecordWriter", "FrameStreamWriter", "decode_frame_major"]

_RECORD_V1 = struct.Struct("<IHBI")  # frame index, level count, coding, payload length
_END_V1 = struct.Struct("<QQ")  # end record payload: num_frames, num_samples
_END_INDEX = 0xFFFF_FFFF
_CRC = struct.Struct("<I")
KIND_PACKED, KIND_RANGE, KIND_END = 0, 1, 2


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ContainerError(f"unknown {name} {value!r}; expected one of {', '.join(choices)}")


class FrameRecordWriter:
    """Writes the header, then one record per frame, then the end record, to a binary handle."""

    def __init__(self, handle: BinaryIO, header: Header) -> None:
        self.handle = handle
        self.header = header
        self.levels = list(header.levels_present)
        self.width = header.width
        self.frames = 0
        self.coder = FrameCoder(len(self.levels), header.codebook_size) if header.coding == "range" else None
        handle.write(encode_v1(header) if header.version == 1 else encode_v2(header))

    def append(self, codes: NDArray[np.generic]) -> None:
        codes = np.asarray(codes)
        if codes.ndim != 2 or codes.shape[0] != self.header.num_levels:
            raise ContainerError(f"frames must be [num_levels={self.header.num_levels}, n], got shape {codes.shape}")
        if codes.size and (
            not np.issubdtype(codes.dtype, np.integer) or codes.min() < 0 or codes.max() >= self.header.codebook_size
        ):
            raise ContainerError(f"tokens must be integers in 0-{self.header.codebook_size - 1}")
        if self.frames + codes.shape[1] > MAX_FRAMES:
            raise ContainerError("too many frames for one .mimi stream")
        rows = codes[self.levels].astype(np.int64)
        for t in range(rows.shape[1]):
            self.handle.write(self._record(rows[:, t]))
            self.frames += 1

    def _record(self, tokens: NDArray[np.int64]) -> bytes:
        payload = pack_tokens(tokens, self.width)
        kind = KIND_PACKED
        if self.coder is not None:
            coded = self.coder.encode(tokens)  # updates the models either way, as the reader's will
            if len(coded) < len(payload):
                payload, kind = coded, KIND_RANGE
        if self.header.version == 1:
            head = _RECORD_V1.pack(self.frames, len(self.levels), kind, len(payload)) + payload
            return head + _CRC.pack(zlib.crc32(head))
        body = bytes([kind]) + (encode_varint(len(payload)) if kind == KIND_RANGE else b"") + payload
        return body + _CRC.pack(zlib.crc32(body, zlib.crc32(_CRC.pack(self.frames))))

    def finish(self, num_samples: int | None) -> None:
        header = self.header
        if num_samples is None:
            num_samples = whole_frame_samples(self.frames, header.sample_rate, header.frame_rate)
        if (
            not 0 <= num_samples <= MAX_SAMPLES
            or frames_for(num_samples, header.sample_rate, header.frame_rate) != self.frames
        ):
            raise ContainerError(f"num_samples {num_samples} does not match the {self.frames} frames written")
        if header.version == 1:
            head = _RECORD_V1.pack(_END_INDEX, 0, 0, _END_V1.size) + _END_V1.pack(self.frames, num_samples)
            self.handle.write(head + _CRC.pack(zlib.crc32(head)))
            return
        body = bytes([KIND_END]) + encode_varint(self.frames) + encode_varint(num_samples)
        self.handle.write(body + _CRC.pack(zlib.crc32(body, zlib.crc32(_CRC.pack(self.frames)))))


class FrameStreamWriter:
    """Append frames to a frame-major `.mimi` file as they arrive (a live encoder's output).

    `append(codes)` takes uint `[num_levels, n]` (rows of levels not in `levels_present` are ignored); `close()`
    writes the end record with the source length. By default the file is written atomically (it appears at `path`
    on close and is removed if the `with` block raises). With `live=True` records go straight to `path` and are
    flushed as they are appended, so another process can follow the file; a writer that dies leaves a readable
    prefix (the reader warns that the end record is missing). `version=1` writes the old format.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        num_levels: int = 32,
        levels_present: LevelsLike = None,
        sample_rate: int = 24_000,
        frame_rate: float = 12.5,
        codebook_size: int = 2048,
        weights_sha256: str = "",
        metadata: dict[str, JsonValue] | None = None,
        coding: Coding = "packed11",
        force: bool = False,
        live: bool = False,
        version: int = 2,
    ) -> None:
        _check_choice("coding", coding, CODINGS)
        if version not in (1, 2):
            raise ContainerError(f"cannot write .mimi format version {version} (1 or 2)")
        self.path = Path(path)
        present = Levels.parse(levels_present, num_levels).indices
        header = Header(
            version,
            "frame-major",
            coding,
            num_levels,
            present,
            None,
            None,
            int(sample_rate),
            float(frame_rate),
            int(codebook_size),
            weights_sha256,
            (),
            dict(metadata or {}),
        )
        self._live = live
        self._force = force
        self._tmp: Path | None = None
        if live:
            refuse_overwrite(self.path, force)
            self._handle: BinaryIO = open(self.path, "wb" if force else "xb")
        else:
            self._handle, self._tmp = open_temporary(self.path, force)
        try:
            self._writer = FrameRecordWriter(self._handle, header)
        except BaseException as exc:
            self._abort(exc)
            raise
        self._flush()
        self.closed = False

    @property
    def num_frames(self) -> int:
        return self._writer.frames

    def append(self, codes: NDArray[np.generic]) -> None:
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
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._handle.close()
            if self._tmp is not None:
                commit(self._tmp, self.path, self._force)
        except BaseException as exc:
            self._abort(exc)
            raise
        return self.path

    def _abort(self, exc: BaseException) -> None:
        self._handle.close()
        if self._tmp is not None:
            discard(self._tmp)

    def __enter__(self) -> FrameStreamWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if exc is None:
            self.close()
        elif not self.closed:
            self.closed = True
            self._abort(exc)


# -- reading ----------------------------------------------------------------------------------------------------
def decode_frame_major(data: bytes, header: Header, payload_start: int, source: str, max_tokens: int) -> Decoded:
    levels = list(header.levels_present)
    packed = packed_size(len(levels), header.width)
    coder = FrameCoder(len(levels), header.codebook_size) if header.coding == "range" else None
    read = _read_v1 if header.version == 1 else _read_v2
    columns: list[NDArray[np.uint16]] = []
    position = payload_start
    truncation = None
    end: tuple[int, int] | None = None
    while True:
        if position == len(data):
            truncation = f"{source} is truncated: the stream has no end record; recovered {len(columns)} frames"
            break
        parsed = read(data, position, len(columns), len(levels), packed, source)
        if parsed is None:
            truncation = f"{source} is truncated: recovered {len(columns)} frames (a partial record was dropped)"
            break
        kind, body, position = parsed
        if kind == KIND_END:
            end = _end_values(body, header.version, len(columns), source)
            break
        if header.num_levels * (len(columns) + 1) > max_tokens:
            raise ContainerError(f"{source}: more than the limit of {max_tokens} tokens")
        columns.append(_decode_record(body, kind, len(levels), header, coder, len(columns), source))
    if end is not None:
        if position != len(data):
            raise ContainerError(f"{source}: {len(data) - position} unexpected bytes after the end record")
        if end[0] != len(columns):
            raise ContainerError(f"{source}: end record counts {end[0]} frames, the file holds {len(columns)}")
        num_samples = end[1]
    else:
        num_samples = whole_frame_samples(len(columns), header.sample_rate, header.frame_rate)
    codes = np.zeros((header.num_levels, len(columns)), dtype=np.uint16)
    if columns and levels:
        codes[levels] = np.stack(columns, axis=1)
    try:
        record = MimiRecord(
            codes=codes,
            num_samples=num_samples,
            sample_rate=header.sample_rate,
            frame_rate=header.frame_rate,
            codebook_size=header.codebook_size,
            weights_sha256=header.weights_sha256,
            levels_present=tuple(levels),
            metadata=header.metadata,
        )
    except ContainerError as exc:
        raise ContainerError(f"{source}: header and tokens disagree: {exc}") from None
    return Decoded(record, header, payload_start, len(data), len(levels), len(columns), truncation)


def _read_v1(
    data: bytes, position: int, index: int, count: int, packed: int, source: str
) -> tuple[int, bytes, int] | None:
    """(kind, body, next position) of the v1 record at `position`, or None when the file ends inside it."""
    if len(data) - position < _RECORD_V1.size:
        return None
    frame, level_count, coding, length = _RECORD_V1.unpack_from(data, position)
    is_end = frame == _END_INDEX
    if is_end and (level_count, coding, length) != (0, 0, _END_V1.size):
        raise ContainerError(f"{source}: malformed end record after frame {index}")
    if not is_end:
        if frame != index:
            raise ContainerError(f"{source}: record for frame {frame} where frame {index} was expected")
        if level_count != count:
            raise ContainerError(
                f"{source}: record of frame {frame} holds {level_count} levels, the header lists {count}"
            )
        _check_length(coding, length, packed, frame, source)
    record_end = position + _RECORD_V1.size + length + _CRC.size
    if record_end > len(data):
        return None
    (stored_crc,) = _CRC.unpack_from(data, record_end - _CRC.size)
    if zlib.crc32(data[position : record_end - _CRC.size]) != stored_crc:
        what = "end record" if is_end else f"record of frame {frame}"
        raise ContainerError(f"{source}: {what} is corrupted (checksum mismatch)")
    return (KIND_END if is_end else coding), data[position + _RECORD_V1.size : record_end - _CRC.size], record_end


def _read_v2(
    data: bytes, position: int, index: int, count: int, packed: int, source: str
) -> tuple[int, bytes, int] | None:
    kind = data[position]
    cursor = position + 1
    if kind == KIND_END:
        for _ in range(2):  # two varints
            while True:
                if cursor >= len(data):
                    return None
                cursor += 1
                if not data[cursor - 1] & 0x80:
                    break
                if cursor - position > 21:
                    raise ContainerError(f"{source}: malformed end record after frame {index}")
        body_end = cursor
    elif kind == KIND_RANGE:
        length = shift = 0
        while True:
            if cursor >= len(data):
                return None
            byte = data[cursor]
            cursor += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
            if shift > 35:
                raise ContainerError(f"{source}: record of frame {index} has an impossible length")
        _check_length(kind, length, packed, index, source)
        body_end = cursor + length
    elif kind == KIND_PACKED:
        body_end = cursor + packed
    else:
        raise ContainerError(f"{source}: record of frame {index} has unknown kind {kind}")
    if body_end + _CRC.size > len(data):
        return None
    (stored_crc,) = _CRC.unpack_from(data, body_end)
    if zlib.crc32(data[position:body_end], zlib.crc32(_CRC.pack(index))) != stored_crc:
        what = "end record" if kind == KIND_END else f"record of frame {index}"
        raise ContainerError(f"{source}: {what} is corrupted (checksum mismatch, or a record out of sequence)")
    body = data[position + 1 : body_end] if kind != KIND_RANGE else data[body_end - length : body_end]
    return kind, body, body_end + _CRC.size


def _check_length(coding: int, length: int, packed: int, frame: int, source: str) -> None:
    if coding == KIND_PACKED:
        if length != packed:
            raise ContainerError(f"{source}: packed record of frame {frame} is {length} bytes, expected {packed}")
    elif coding == KIND_RANGE:
        if length >= packed or length % 4:
            raise ContainerError(f"{source}: range-coded record of frame {frame} has an impossible length {length}")
    else:
        raise ContainerError(f"{source}: record of frame {frame} has unknown coding {coding}")


def _end_values(body: bytes, version: int, frames: int, source: str) -> tuple[int, int]:
    if version == 1:
        frames_stored, samples = _END_V1.unpack(body)
        return int(frames_stored), int(samples)
    numbers: list[int] = []
    value = shift = 0
    for byte in body:
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            numbers.append(value)
            value = shift = 0
    if len(numbers) != 2 or encode_varint(numbers[0]) + encode_varint(numbers[1]) != body:
        raise ContainerError(f"{source}: malformed end record after frame {frames}")
    return numbers[0], numbers[1]


def _decode_record(
    body: bytes, kind: int, count: int, header: Header, coder: FrameCoder | None, index: int, source: str
) -> NDArray[np.uint16]:
    if kind == KIND_RANGE:
        if coder is None:
            raise ContainerError(f"{source}: range-coded record of frame {index} in a packed11 file")
        try:
            return coder.decode(body)
        except Exception as exc:
            raise ContainerError(f"{source}: record of frame {index} cannot be range-decoded: {exc}") from None
    tokens = unpack_tokens(body, count, header.width)
    if tokens.size and int(tokens.max()) >= header.codebook_size:
        raise ContainerError(
            f"{source}: record of frame {index} holds token {int(tokens.max())}, outside the "
            f"codebook of {header.codebook_size}"
        )
    if coder is not None:
        coder.observe(tokens.astype(np.int64))
    return tokens
