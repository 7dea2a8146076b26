"""Tests for `mimistack.mimifile`, the `.mimi` format (docs/format.md), v1 and v2, through the `TokenGrid` helpers of
`mimistack.tokens` (and the 0.1 import path `mimistack.container`). Golden files: tests/test_mimifile_golden.py."""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mimistack import container, mimifile
from mimistack.errors import MimistackError
from mimistack.mimifile import (
    ContainerError,
    FrameStreamWriter,
    TruncatedFileWarning,
    describe,
    measure_coding,
    pack_tokens,
    truncate,
    unpack_tokens,
)
from mimistack.mimifile.header import encode_v2, scan_v2
from mimistack.mimifile.readwrite import parse_header
from mimistack.tokens import TokenGrid, grid_from_bytes, grid_to_bytes, read_grid, write_grid

FRAME = 1920
LAYOUT_CODINGS = [
    pytest.param(layout, coding, id=f"{layout}-{coding}") for layout in mimifile.LAYOUTS for coding in mimifile.CODINGS
]
VERSIONS = [1, 2]
# MIMISTACK_HYPOTHESIS_EXAMPLES=1000 for a longer search; the default keeps the suite at a few seconds.
HYPOTHESIS = settings(
    database=None,
    max_examples=int(os.environ.get("MIMISTACK_HYPOTHESIS_EXAMPLES", "40")),
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def make_grid(
    num_levels: int = 32,
    num_frames: int = 40,
    *,
    kind: str = "random",
    codebook_size: int = 2048,
    seed: int = 0,
    levels_present: tuple[int, ...] | None = None,
    **kwargs: object,
) -> TokenGrid:
    rng = np.random.default_rng(seed)
    if kind == "random":
        codes = rng.integers(0, codebook_size, size=(num_levels, num_frames))
    elif kind == "repetitive":  # held tokens with occasional changes, like silence
        codes = np.repeat(rng.integers(0, codebook_size, size=(num_levels, 1)), num_frames, axis=1)
        changes = rng.random((num_levels, num_frames)) < 0.1
        codes[changes] = rng.integers(0, codebook_size, size=int(changes.sum()))
    else:
        codes = np.full((num_levels, num_frames), codebook_size - 1)
    num_samples = num_frames * FRAME - (7 if num_frames else 0)
    grid = TokenGrid(
        codes=codes, num_samples=num_samples, codebook_size=codebook_size, levels_present=levels_present, **kwargs
    )  # type: ignore[arg-type]
    return grid.with_levels(grid.levels_present)  # absent rows are stored as zeros


def payload_start(data: bytes) -> int:
    return parse_header(data, "<bytes>")[1]


def sections(data: bytes) -> tuple[mimifile.Section, ...]:
    return parse_header(data, "<bytes>")[0].sections


def with_v2_header(data: bytes, **changes: object) -> bytes:
    """Re-encode a v2 header with `changes` (a valid CRC), to reach the checks behind the checksum."""
    header, start = parse_header(data, "<bytes>")
    return encode_v2(dataclasses.replace(header, **changes)) + data[start:]  # type: ignore[arg-type]


def recrc_v2(data: bytes | bytearray) -> bytes:
    """Recompute the CRC32 of a v2 header whose bytes were patched in place (same length)."""
    scanned = scan_v2(bytes(data))
    assert scanned is not None
    end = scanned[1]
    return bytes(data[:end]) + struct.pack("<I", zlib.crc32(bytes(data[:end]))) + bytes(data[end + 4 :])


def header_json(data: bytes) -> dict:
    (length,) = struct.unpack_from("<I", data, 10)
    return json.loads(data[14 : 14 + length])


def with_header(data: bytes, header: dict) -> bytes:
    """Replace the JSON header and recompute its CRC (to reach the checks behind the checksum)."""
    body = json.dumps(header).encode()
    (length,) = struct.unpack_from("<I", data, 10)
    head = data[:8] + struct.pack("<HI", 1, len(body)) + body
    return head + struct.pack("<I", zlib.crc32(head)) + data[18 + length :]


def decode_quietly(data: bytes) -> tuple[TokenGrid, list[warnings.WarningMessage]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grid = grid_from_bytes(data)
    return grid, list(caught)


# -- packing ----------------------------------------------------------------------------------------------------
def test_pack_tokens_matches_the_documented_bit_order() -> None:
    assert pack_tokens([1, 2047]) == bytes([0x01, 0xF8, 0x3F])
    assert pack_tokens([5, 6]) == bytes([0x05, 0x30, 0x00])
    assert pack_tokens([]) == b""


@pytest.mark.parametrize("width", [1, 3, 8, 11, 16])
def test_pack_unpack_round_trip(width: int) -> None:
    tokens = np.random.default_rng(width).integers(0, 1 << width, size=101)
    data = pack_tokens(tokens, width)
    assert len(data) == (101 * width + 7) // 8
    np.testing.assert_array_equal(unpack_tokens(data, 101, width), tokens)


def test_pack_rejects_tokens_wider_than_the_width() -> None:
    with pytest.raises(ContainerError, match="0-2047"):
        pack_tokens([2048], 11)
    with pytest.raises(ContainerError, match="bits_per_token"):
        pack_tokens([1], 17)
    with pytest.raises(ContainerError, match="need 2 bytes"):
        unpack_tokens(b"\x00", 1, 11)


# -- round trips ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("layout", "coding"), LAYOUT_CODINGS)
@pytest.mark.parametrize("kind", ["random", "repetitive"])
def test_round_trip_keeps_codes_and_metadata(tmp_path: Path, layout: str, coding: str, kind: str, version: int) -> None:
    grid = make_grid(kind=kind, weights_sha256="ab" * 32, metadata={"source": "x.wav", "nested": {"n": [1, 2.5]}})
    path = write_grid(grid, tmp_path / "a.mimi", layout=layout, coding=coding, version=version)  # type: ignore[arg-type]
    back = read_grid(path)
    assert back == grid
    assert back.metadata == grid.metadata
    assert back.levels_present == tuple(range(32))
    assert grid_from_bytes(path.read_bytes()) == grid
    assert describe(path).version == version
    assert [p.name for p in tmp_path.iterdir()] == ["a.mimi"]  # no temporary file left behind
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()  # the mode open() gives, not mkstemp's 0600


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("layout", "coding"), LAYOUT_CODINGS)
def test_round_trip_of_a_level_subset_and_odd_shapes(layout: str, coding: str, version: int) -> None:
    for grid in (
        make_grid(5, 0),
        make_grid(3, 1, codebook_size=3),
        make_grid(40, 9, levels_present=(1, 4, 39)),
        make_grid(2, 7, codebook_size=1, kind="constant"),
        make_grid(3, 4, weights_sha256="AB-not-hex"),
    ):
        data = grid_to_bytes(grid, layout=layout, coding=coding, version=version)  # type: ignore[arg-type]
        back = grid_from_bytes(data)
        assert back == grid
        assert back.levels_present == grid.levels_present


def test_token_grid_save_and_load_use_the_container(tmp_path: Path) -> None:
    grid = make_grid(8, 5)
    grid.save(tmp_path / "g.mimi", coding="range")
    assert TokenGrid.load(tmp_path / "g.mimi") == grid
    assert (tmp_path / "g.mimi").read_bytes()[:10] == b"MIMI\x00TOK\x02\x00"
    assert grid.to_record() == mimifile.read_record(tmp_path / "g.mimi")
    assert TokenGrid.from_record(grid.to_record()) == grid


def test_the_0_1_import_path_still_works() -> None:
    grid = make_grid(2, 3)
    assert container.grid_from_bytes(container.grid_to_bytes(grid)) == grid
    assert isinstance(container.grid_from_bytes(container.grid_to_bytes(grid)), TokenGrid)
    assert container.ContainerError is ContainerError and container.FrameStreamWriter is FrameStreamWriter
    assert issubclass(ContainerError, ValueError) and issubclass(ContainerError, MimistackError)
    assert isinstance(mimifile.grid_from_bytes(grid_to_bytes(grid)), mimifile.MimiRecord)


def test_write_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    path = tmp_path / "a.mimi"
    write_grid(make_grid(2, 3), path)
    with pytest.raises(FileExistsError, match=r"a\.mimi"):
        write_grid(make_grid(4, 3), path)
    assert read_grid(path).num_levels == 2
    write_grid(make_grid(4, 3), path, force=True)
    assert read_grid(path).num_levels == 4


def test_unknown_layout_or_coding_and_bad_metadata_are_refused(tmp_path: Path) -> None:
    grid = make_grid(2, 3)
    with pytest.raises(ContainerError, match="layout"):
        grid_to_bytes(grid, layout="diagonal")  # type: ignore[arg-type]
    with pytest.raises(ContainerError, match="coding"):
        grid_to_bytes(grid, coding="zip")  # type: ignore[arg-type]
    with pytest.raises(ContainerError, match="format version 3"):
        grid_to_bytes(grid, version=3)
    with pytest.raises(ContainerError, match="non-string key"):
        grid_to_bytes(grid.replace(metadata={1: "a"}))
    with pytest.raises(ContainerError, match="1-65535 levels"):
        grid_to_bytes(TokenGrid(codes=np.zeros((0, 3)), num_samples=3 * FRAME))
    with pytest.raises(ContainerError, match="NaN"):
        write_grid(grid.replace(metadata={"x": float("nan")}), tmp_path / "a.mimi")
    assert not list(tmp_path.iterdir())


# -- v2: compact header -----------------------------------------------------------------------------------------
def test_a_one_second_32_level_packed_file_fits_in_700_bytes() -> None:
    grid = TokenGrid(
        codes=np.random.default_rng(1).integers(0, 2048, size=(32, 13)),
        num_samples=24_000,
        weights_sha256="0123456789abcdef" * 4,
    )
    data = grid_to_bytes(grid)
    assert len(data) <= 700, len(data)
    assert len(data) - 572 <= 128  # header + section table + checksums
    assert len(grid_to_bytes(grid.replace(metadata={"source": "speech.wav"}))) <= 730
    assert len(data) < len(grid_to_bytes(grid, version=1)) / 2
    assert grid_from_bytes(data) == grid


def test_v2_groups_short_levels_into_sections_and_keeps_long_ones_apart() -> None:
    assert [len(s.levels) for s in sections(grid_to_bytes(make_grid(32, 13)))] == [8] * 4
    assert [len(s.levels) for s in sections(grid_to_bytes(make_grid(32, 63)))] == [2] * 16
    assert [len(s.levels) for s in sections(grid_to_bytes(make_grid(32, 125)))] == [1] * 32
    single = mimifile.record_to_bytes(make_grid(32, 13), levels_per_section=1)
    assert [len(s.levels) for s in sections(single)] == [1] * 32


def test_v2_metadata_is_zlib_compressed_only_when_that_is_shorter() -> None:
    small = make_grid(2, 3, metadata={"source": "a.wav"})
    data = grid_to_bytes(small)
    assert b'{"source":"a.wav"}' in data  # stored as JSON: zlib would be longer
    large = make_grid(2, 3, metadata={"notes": "the same words again " * 40})
    data = grid_to_bytes(large)
    assert b"the same words again" not in data and len(data) < 200
    assert grid_from_bytes(data).metadata == large.metadata
    assert not grid_to_bytes(make_grid(2, 3))[11] & 0x20  # no metadata, no block (flag clear)


def test_v2_weights_are_32_raw_bytes() -> None:
    weights = bytes(range(32))
    data = grid_to_bytes(make_grid(2, 3, weights_sha256=weights.hex()))
    assert weights in data and weights.hex().encode() not in data
    assert len(data) - len(grid_to_bytes(make_grid(2, 3))) == 32


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (10, ord("B"), "byte order 0x42"),
        (11, 0x40 | 0x04, "unknown flags 0x40"),
    ],
    ids=["byte-order", "flags"],
)
def test_v2_preamble_errors_are_named(offset: int, value: int, message: str) -> None:
    data = bytearray(grid_to_bytes(make_grid(4, 2)))
    data[offset] = value
    with pytest.raises(ContainerError, match=r"header checksum mismatch"):
        grid_from_bytes(bytes(data))
    with pytest.raises(ContainerError, match=f"bad header: {message}"):
        grid_from_bytes(recrc_v2(data))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_samples": 10**9}, "header and tokens disagree"),
        ({"levels_present": (0, 1, 2)}, "section level count = 4 is out of range 1-3"),
        ({"num_frames": 3}, "header and tokens disagree"),
        ({"num_levels": 3}, "the levels bitmap marks level 3 of 3"),
        ({"frame_rate": float("nan")}, "frame_rate must be positive"),
    ],
    ids=["samples", "levels", "frames", "num-levels", "frame-rate"],
)
def test_v2_header_content_errors_are_named(changes: dict, message: str) -> None:
    data = with_v2_header(grid_to_bytes(make_grid(4, 2)), **changes)
    with pytest.raises(ContainerError, match=message):
        grid_from_bytes(data)


def test_v2_non_minimal_varints_are_refused() -> None:
    data = grid_to_bytes(make_grid(4, 2))
    assert data[12] == 4  # num_levels, one byte
    patched = data[:12] + b"\x84\x00" + data[13:]
    end = payload_start(data) - 4 + 1
    patched = patched[:end] + struct.pack("<I", zlib.crc32(patched[:end])) + patched[end + 4 :]
    with pytest.raises(ContainerError, match="num_levels is a non-minimal varint"):
        grid_from_bytes(patched)


def test_v2_frame_records_out_of_sequence_are_caught() -> None:
    data = grid_to_bytes(make_grid(4, 10), layout="frame-major")
    start, record = payload_start(data), 1 + 6 + 4
    swapped = (
        data[:start]
        + data[start + record : start + 2 * record]
        + data[start : start + record]
        + data[start + 2 * record :]
    )
    with pytest.raises(ContainerError, match=r"record of frame 0 is corrupted .*out of sequence"):
        grid_from_bytes(swapped)


# -- progressive truncation -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("version", "per_section"), [(1, None), (2, None), (2, 1), (2, 3)])
@pytest.mark.parametrize("coding", mimifile.CODINGS)
def test_every_section_prefix_of_the_bytes_decodes_to_those_levels(
    coding: str, version: int, per_section: int | None
) -> None:
    grid = make_grid(32, 30, kind="repetitive")
    data = mimifile.record_to_bytes(
        grid,
        coding=coding,
        version=version,  # type: ignore[arg-type]
        levels_per_section=per_section,
    )
    start = payload_start(data)
    table = sections(data)
    assert coding == "packed11" or any(s.coding == "range" for s in table)
    boundaries = [(0, 0)]
    for section in table:
        boundaries.append((boundaries[-1][0] + len(section.levels), section.offset + section.length))
    assert len(boundaries) > 4
    for count, end in boundaries:
        back, caught = decode_quietly(data[: start + end])
        assert back.levels_present == tuple(range(count))
        np.testing.assert_array_equal(back.codes[:count], grid.codes[:count])
        assert not back.codes[count:].any()
        if count < 32:
            assert [w.category for w in caught] == [TruncatedFileWarning]
            assert f"recovered {count} of 32 levels" in str(caught[0].message)
        else:
            assert not caught


@pytest.mark.parametrize("version", VERSIONS)
def test_a_section_cut_in_the_middle_is_dropped_with_a_warning(tmp_path: Path, version: int) -> None:
    grid = make_grid(4, 50)
    data = grid_to_bytes(grid, version=version)
    section = (50 * 11 + 7) // 8
    path = tmp_path / "cut.mimi"
    path.write_bytes(data[: payload_start(data) + 2 * section + section // 2])
    with pytest.warns(TruncatedFileWarning, match=r"cut.mimi is truncated: recovered 2 of 4 levels \(0-1\)"):
        back = read_grid(path)
    assert back.levels_present == (0, 1)
    np.testing.assert_array_equal(back.codes[:2], grid.codes[:2])
    with pytest.raises(ValueError, match="truncated"):
        back.check_levels("0-3")


@pytest.mark.parametrize("layout", mimifile.LAYOUTS)
@pytest.mark.parametrize("version", VERSIONS)
def test_a_file_cut_inside_the_header_raises(version: int, layout: str) -> None:
    data = grid_to_bytes(make_grid(4, 5, metadata={"a": 1}), version=version, layout=layout)  # type: ignore[arg-type]
    for end in (1, 8, 9, 12, payload_start(data) - 1):
        with pytest.raises(ContainerError, match="truncated inside the header"):
            grid_from_bytes(data[:end])


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("coding", mimifile.CODINGS)
def test_frame_major_truncation_keeps_the_complete_frames(coding: str, version: int) -> None:
    grid = make_grid(6, 12, kind="repetitive")
    data = grid_to_bytes(grid, layout="frame-major", coding=coding, version=version)  # type: ignore[arg-type]
    start = payload_start(data)
    for end in range(start, len(data)):
        back, caught = decode_quietly(data[:end])
        frames = back.num_frames
        np.testing.assert_array_equal(back.codes, grid.codes[:, :frames])
        assert [w.category for w in caught] == [TruncatedFileWarning]
        assert f"recovered {frames} frames" in str(caught[0].message)
    assert decode_quietly(data)[1] == []


# -- corruption -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("version", "per_section", "name"),
    [(1, None, "level 5"), (2, 1, "level 5"), (2, None, "the section of levels 4-7")],
)
@pytest.mark.parametrize("coding", mimifile.CODINGS)
def test_a_flipped_byte_in_a_section_names_the_level_and_the_file(
    tmp_path: Path, coding: str, version: int, per_section: int | None, name: str
) -> None:
    grid = make_grid(8, 40, kind="repetitive")
    data = bytearray(
        mimifile.record_to_bytes(
            grid,
            coding=coding,
            version=version,  # type: ignore[arg-type]
            levels_per_section=per_section,
        )
    )
    section = next(s for s in sections(bytes(data)) if 5 in s.levels)
    data[payload_start(bytes(data)) + section.offset + section.length // 2] ^= 0x10
    path = tmp_path / "bad.mimi"
    path.write_bytes(bytes(data))
    with pytest.raises(ContainerError, match=rf"bad.mimi: {name} is corrupted"):
        read_grid(path)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_flipped_byte_in_a_frame_record_names_the_frame(version: int) -> None:
    data = bytearray(grid_to_bytes(make_grid(4, 10), layout="frame-major", version=version))
    record = (11 if version == 1 else 1) + (4 * 11 + 7) // 8 + 4
    data[payload_start(bytes(data)) + 3 * record + record - 6] ^= 0x01  # inside the payload
    with pytest.raises(ContainerError, match="frame 3 is corrupted"):
        grid_from_bytes(bytes(data))


@pytest.mark.parametrize("version", VERSIONS)
def test_header_corruption_is_detected(version: int) -> None:
    data = bytearray(grid_to_bytes(make_grid(4, 5), version=version))
    data[30] ^= 0x20
    with pytest.raises(ContainerError, match="header checksum mismatch"):
        grid_from_bytes(bytes(data))


@pytest.mark.parametrize("version", VERSIONS)
def test_unknown_version_and_bad_magic_are_rejected(version: int) -> None:
    data = bytearray(grid_to_bytes(make_grid(2, 2), version=version))
    for other in (0, 3, 7):
        future = bytes(data[:8]) + struct.pack("<H", other) + bytes(data[10:])
        with pytest.raises(
            ContainerError,
            match=rf"unsupported \.mimi format version {other} "
            r"\(this mimistack reads versions 1 and 2\)",
        ):
            grid_from_bytes(future)
    with pytest.raises(ContainerError, match=r"not a \.mimi file"):
        grid_from_bytes(b"RIFF" + bytes(data[4:]))
    with pytest.raises(ContainerError, match=r"not a \.mimi file"):
        grid_from_bytes(b"")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda h: h.update(layout="diagonal"), "unknown layout"),
        (lambda h: h.pop("num_frames"), "missing key 'num_frames'"),
        (lambda h: h.update(num_levels="32"), "'num_levels' has the wrong type"),
        (lambda h: h.update(format_version=7), "format_version 7"),
        (lambda h: h.update(bits_per_token=12), "bits_per_token 12"),
        (lambda h: h.update(levels_present=[1, 0]), "ascending"),
        (lambda h: h["sections"][1].update(offset=0), "starts at 0"),
        (lambda h: h["sections"][0].update(length=1), "expected 3"),
        (lambda h: h.update(num_samples=10**9), "header and tokens disagree"),
    ],
    ids=["layout", "missing", "type", "version", "width", "order", "offset", "length", "samples"],
)
def test_v1_header_content_errors_are_named(change: object, message: str) -> None:
    data = grid_to_bytes(make_grid(4, 2), version=1)
    header = header_json(data)
    change(header)  # type: ignore[operator]
    with pytest.raises(ContainerError, match=message):
        grid_from_bytes(with_header(data, header))


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("layout", mimifile.LAYOUTS)
def test_headers_asking_for_too_many_tokens_are_refused(layout: str, version: int) -> None:
    data = grid_to_bytes(make_grid(4, 2), layout=layout, version=version)  # type: ignore[arg-type]
    assert grid_from_bytes(data, max_tokens=8).num_frames == 2
    with pytest.raises(ContainerError, match="more than"):
        grid_from_bytes(data, max_tokens=7)


def test_tokens_outside_the_codebook_are_refused_even_with_valid_checksums_v1() -> None:
    grid = make_grid(2, 4, codebook_size=5)  # 3-bit packing can hold 5..7
    data = bytearray(grid_to_bytes(grid, version=1))
    start = payload_start(bytes(data))
    data[start] = (data[start] & 0b11111000) | 6
    header = header_json(bytes(data))
    header["sections"][0]["crc32"] = zlib.crc32(bytes(data[start : start + 2]))
    with pytest.raises(ContainerError, match="level 0 holds token 6, outside the codebook of 5"):
        grid_from_bytes(with_header(bytes(data), header))
    framed = bytearray(grid_to_bytes(grid, layout="frame-major", coding="range", version=1))
    start = payload_start(bytes(framed))
    assert framed[start + 6] == 0  # first record is packed: one byte of 2 x 3 bits
    framed[start + 11] |= 0b111
    framed[start + 12 : start + 16] = struct.pack("<I", zlib.crc32(bytes(framed[start : start + 12])))
    with pytest.raises(ContainerError, match="record of frame 0 holds token 7"):
        grid_from_bytes(bytes(framed))


def test_tokens_outside_the_codebook_are_refused_even_with_valid_checksums_v2() -> None:
    grid = make_grid(2, 4, codebook_size=5)
    data = bytearray(grid_to_bytes(grid))
    start = payload_start(bytes(data))
    (section,) = sections(bytes(data))
    data[start] = (data[start] & 0b11111000) | 6
    patched = with_v2_header(
        bytes(data),
        sections=(dataclasses.replace(section, crc32=zlib.crc32(bytes(data[start : start + section.length]))),),
    )
    with pytest.raises(ContainerError, match="section of levels 0-1 holds token 6, outside the codebook of 5"):
        grid_from_bytes(patched)
    framed = bytearray(grid_to_bytes(grid, layout="frame-major", coding="range"))
    start = payload_start(bytes(framed))
    assert framed[start] == 0  # first record is packed: one byte of 2 x 3 bits
    framed[start + 1] |= 0b111
    framed[start + 2 : start + 6] = struct.pack(
        "<I", zlib.crc32(bytes(framed[start : start + 2]), zlib.crc32(bytes(4)))
    )
    with pytest.raises(ContainerError, match="record of frame 0 holds token 7"):
        grid_from_bytes(bytes(framed))


@pytest.mark.parametrize("version", VERSIONS)
def test_trailing_bytes_are_an_error(version: int) -> None:
    for layout in mimifile.LAYOUTS:
        with pytest.raises(ContainerError, match="unexpected bytes"):
            grid_from_bytes(
                grid_to_bytes(make_grid(2, 3), layout=layout, version=version)  # type: ignore[arg-type]
                + b"\x00"
            )


def test_missing_file_is_a_container_error(tmp_path: Path) -> None:
    with pytest.raises(ContainerError, match="no such file"):
        read_grid(tmp_path / "nope.mimi")


# -- range coding -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
def test_range_coding_shrinks_repetitive_grids_and_never_grows_random_ones(version: int) -> None:
    repetitive = make_grid(32, 200, kind="repetitive")
    random = make_grid(32, 200)
    assert len(grid_to_bytes(repetitive, coding="range", version=version)) < 0.5 * len(
        grid_to_bytes(repetitive, version=version)
    )
    packed = grid_to_bytes(random, version=version)
    coded = grid_to_bytes(random, coding="range", version=version)
    assert len(coded) <= len(packed) + 40 * 32
    assert all(s.coding == "packed11" for s in sections(coded))
    if version == 2:
        assert len(coded) == len(packed)
    constant = make_grid(32, 200, kind="constant")
    assert len(grid_to_bytes(constant, coding="range", layout="frame-major", version=version)) < 0.5 * len(
        grid_to_bytes(constant, layout="frame-major", version=version)
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_range_decoder_mismatch_is_caught_by_tokens_crc(version: int) -> None:
    data = grid_to_bytes(make_grid(2, 60, kind="repetitive"), coding="range", version=version)
    if version == 1:
        header = header_json(data)
        assert header["sections"][0]["coding"] == "range"
        header["sections"][0]["tokens_crc32"] ^= 1
        data = with_header(data, header)
        name = "level 0"
    else:
        (section,) = sections(data)
        assert section.coding == "range" and section.tokens_crc32 is not None
        data = with_v2_header(data, sections=(dataclasses.replace(section, tokens_crc32=section.tokens_crc32 ^ 1),))
        name = "the section of levels 0-1"
    with pytest.raises(ContainerError, match=f"{name} decodes to the wrong tokens"):
        grid_from_bytes(data)


def test_measure_coding_reports_bits_per_token() -> None:
    random = measure_coding([make_grid(4, 300, seed=s) for s in range(2)])
    assert random.levels == (0, 1, 2, 3)
    assert random.num_tokens == (600,) * 4
    assert random.packed_bits_per_token == 11.0
    assert all(r > 11.0 for r in random.range_bits_per_token)  # random tokens are incompressible
    assert random.stored_bits_per_token == pytest.approx((11.0,) * 4, abs=0.02)
    repetitive = measure_coding([make_grid(4, 300, kind="repetitive")])
    assert all(b < 5.0 for b in repetitive.stored_bits_per_token)


# -- describe and truncate --------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
def test_describe_reports_sizes_and_bitrates(tmp_path: Path, version: int) -> None:
    grid = make_grid(32, 125)  # 10 s
    path = write_grid(grid, tmp_path / "a.mimi", version=version)
    info = describe(path)
    assert (info.version, info.layout, info.coding, info.num_frames) == (version, "level-major", "packed11", 125)
    assert info.total_bytes == path.stat().st_size == info.header_bytes + info.payload_bytes
    assert [level.bytes for level in info.levels] == [172] * 32  # ceil(125 * 11 / 8)
    assert [section.levels for section in info.sections] == [(i,) for i in range(32)]
    assert info.levels[0].bitrate == pytest.approx(172 * 8 / info.duration)
    assert info.duration == pytest.approx(grid.num_samples / 24000)
    assert info.payload_bytes * 8 / info.duration == pytest.approx(137.6 * 32, rel=0.01)
    assert not info.truncated
    path.write_bytes(path.read_bytes()[:-10])
    cut = describe(path)
    assert cut.truncated and cut.levels_present == tuple(range(31)) and not cut.levels[31].complete


def test_describe_splits_a_v2_section_over_its_levels(tmp_path: Path) -> None:
    path = write_grid(make_grid(32, 13), tmp_path / "short.mimi")
    info = describe(path)
    assert [s.bytes for s in info.sections] == [143] * 4  # 8 levels x 13 frames x 11 bits, packed together
    assert sum(level.bytes for level in info.levels) == info.payload_bytes == 572
    assert [level.section for level in info.levels] == [i // 8 for i in range(32)]
    assert info.header_bytes <= 128


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("layout", "coding"), LAYOUT_CODINGS)
def test_truncate_keeps_a_prefix_or_any_subset(tmp_path: Path, layout: str, coding: str, version: int) -> None:
    grid = make_grid(32, 40, kind="repetitive")
    source = write_grid(
        grid,
        tmp_path / "all.mimi",
        layout=layout,
        coding=coding,  # type: ignore[arg-type]
        version=version,
    )
    prefix = truncate(source, 8, tmp_path / "eight.mimi")
    back = read_grid(prefix)
    assert back.levels_present == tuple(range(8))
    np.testing.assert_array_equal(back.codes[:8], grid.codes[:8])
    assert prefix.stat().st_size < source.stat().st_size
    assert (describe(prefix).layout, describe(prefix).version) == (layout, version)
    subset = read_grid(truncate(source, "0,2,5-6", tmp_path / "subset.mimi"))
    assert subset == grid.with_levels((0, 2, 5, 6))
    with pytest.raises(FileExistsError, match=r"subset\.mimi"):
        truncate(source, 2, tmp_path / "subset.mimi")
    with pytest.raises(
        ContainerError, match=r"eight\.mimi: cannot keep levels '0-9': level\(s\) \[8, 9\] are not in this grid"
    ):
        truncate(prefix, "0-9", tmp_path / "more.mimi")


@pytest.mark.parametrize(("version", "kept"), [(1, "0-2"), (2, "0-3")])
def test_level_prefix_of_a_range_file_equals_the_truncated_file(version: int, kept: str) -> None:
    grid = make_grid(6, 50, kind="repetitive")
    full = grid_to_bytes(grid, coding="range", version=version)
    part = grid_to_bytes(grid.with_levels(kept), coding="range", version=version)
    table = sections(full)
    boundary = next(s.offset for s in table if s.levels[0] == len(grid.with_levels(kept).levels_present or ()))
    assert full[payload_start(full) : payload_start(full) + boundary] == part[payload_start(part) :]


# -- frame-major streaming --------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("coding", mimifile.CODINGS)
def test_stream_writer_appends_frames_and_matches_grid_to_bytes(tmp_path: Path, coding: str, version: int) -> None:
    grid = make_grid(8, 20, kind="repetitive")
    path = tmp_path / "live.mimi"
    with FrameStreamWriter(path, num_levels=8, coding=coding, version=version) as writer:  # type: ignore[arg-type]
        for start in range(0, 20, 6):
            writer.append(grid.codes[:, start : start + 6])
        assert not path.exists()  # atomic: appears on close
    assert path.read_bytes() == grid_to_bytes(
        grid.replace(num_samples=20 * FRAME), layout="frame-major", coding=coding, version=version
    )  # type: ignore[arg-type]
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()


def test_live_stream_is_readable_while_written_and_removed_on_error(tmp_path: Path) -> None:
    grid = make_grid(4, 10)
    path = tmp_path / "live.mimi"
    writer = FrameStreamWriter(path, num_levels=4, live=True)
    writer.append(grid.codes[:, :6])
    with pytest.warns(TruncatedFileWarning, match="no end record; recovered 6 frames"):
        partial = read_grid(path)
    np.testing.assert_array_equal(partial.codes, grid.codes[:, :6])
    writer.append(grid.codes[:, 6:])
    writer.close(num_samples=grid.num_samples)
    assert read_grid(path) == grid

    atomic = tmp_path / "atomic.mimi"
    with pytest.raises(RuntimeError), FrameStreamWriter(atomic, num_levels=4) as failing:
        failing.append(grid.codes)
        raise RuntimeError("encoder crashed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.mimi"]


def test_stream_writer_checks_its_input(tmp_path: Path) -> None:
    with FrameStreamWriter(tmp_path / "a.mimi", num_levels=4, force=True) as writer:
        with pytest.raises(ContainerError, match="num_levels=4"):
            writer.append(np.zeros((3, 2), dtype=np.uint16))
        with pytest.raises(ContainerError, match="0-2047"):
            writer.append(np.full((4, 2), 2048))
        writer.append(np.zeros((4, 2), dtype=np.uint16))
    with pytest.raises(ContainerError, match="does not match the 0 frames"):
        FrameStreamWriter(tmp_path / "b.mimi", num_levels=4).close(num_samples=10 * FRAME)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mimi"]


# -- properties -------------------------------------------------------------------------------------------------
@st.composite
def grids(draw: st.DrawFn) -> TokenGrid:
    num_levels = draw(st.integers(1, 36))
    num_frames = draw(st.integers(0, 16))
    codebook_size = draw(st.sampled_from([1, 2, 5, 256, 1000, 2048, 65536]))
    kind = draw(st.sampled_from(["random", "repetitive", "constant"]))
    present = draw(st.none() | st.frozensets(st.integers(0, num_levels - 1), max_size=num_levels))
    grid = make_grid(
        num_levels,
        num_frames,
        kind=kind,
        codebook_size=codebook_size,
        seed=draw(st.integers(0, 99)),
        levels_present=None if present is None else tuple(present),
        metadata=draw(st.dictionaries(st.text(max_size=4), st.integers() | st.text(max_size=4), max_size=2)),
    )
    return grid


@HYPOTHESIS
@given(
    grid=grids(),
    layout=st.sampled_from(mimifile.LAYOUTS),
    coding=st.sampled_from(mimifile.CODINGS),
    version=st.sampled_from(VERSIONS),
)
def test_property_round_trip(grid: TokenGrid, layout: str, coding: str, version: int) -> None:
    data = grid_to_bytes(grid, layout=layout, coding=coding, version=version)  # type: ignore[arg-type]
    back = grid_from_bytes(data)
    assert back == grid and back.metadata == grid.metadata
    if version == 2:
        assert (
            mimifile.record_to_bytes(
                mimifile.record_from_bytes(data),
                layout=layout,  # type: ignore[arg-type]
                coding=coding,
            )
            == data
        )  # type: ignore[arg-type]
    if coding == "range":
        packed = grid_to_bytes(grid, layout=layout, version=version)  # type: ignore[arg-type]
        assert len(data) <= len(packed) + 40 * len(grid.levels_present or ()) + 8


def check_damaged(original: TokenGrid, data: bytes) -> None:
    """Damaged bytes give a ContainerError or a prefix of the truth (with a warning), never wrong tokens."""
    try:
        back, _ = decode_quietly(data)
    except ContainerError:
        return
    present = list(back.levels_present or ())
    assert set(present) <= set(original.levels_present or ())
    np.testing.assert_array_equal(back.codes[present], original.codes[present, : back.num_frames])


@HYPOTHESIS
@given(
    grid=grids(),
    layout=st.sampled_from(mimifile.LAYOUTS),
    coding=st.sampled_from(mimifile.CODINGS),
    version=st.sampled_from(VERSIONS),
    data=st.data(),
)
def test_property_truncation_and_byte_flips_never_crash(
    grid: TokenGrid, layout: str, coding: str, version: int, data: st.DataObject
) -> None:
    encoded = grid_to_bytes(grid, layout=layout, coding=coding, version=version)  # type: ignore[arg-type]
    check_damaged(grid, encoded[: data.draw(st.integers(0, len(encoded)), label="cut")])
    damaged = bytearray(encoded)
    for _ in range(data.draw(st.integers(1, 3), label="flips")):
        position = data.draw(st.integers(0, len(damaged) - 1), label="position")
        damaged[position] ^= data.draw(st.integers(1, 255), label="mask")
    check_damaged(grid, bytes(damaged))


@HYPOTHESIS
@given(blob=st.binary(max_size=200))
def test_property_arbitrary_bytes_raise_only_container_errors(blob: bytes) -> None:
    for data in (
        blob,
        mimifile.MAGIC + blob,
        mimifile.MAGIC + b"\x01\x00" + blob,
        mimifile.MAGIC + b"\x02\x00" + blob,
        mimifile.MAGIC + b"\x02\x00L" + blob,
    ):
        with pytest.raises(ContainerError):
            grid_from_bytes(data)


def test_absurd_rates_are_refused_not_crashed_on() -> None:
    data = grid_to_bytes(make_grid(2, 3), layout="frame-major")
    tiny = with_v2_header(data, frame_rate=1e-300)[:-6]  # no end record: the sample count would be astronomical
    with pytest.raises(ContainerError, match="num_samples must lie in"):
        decode_quietly(tiny)
    with pytest.raises(ContainerError, match="sample_rate must lie in"):
        grid_to_bytes(make_grid(2, 3).replace(sample_rate=1 << 40, num_samples=0, codes=np.zeros((2, 0))))
