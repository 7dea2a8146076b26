"""Coverage-guided fuzzing of the `.mimi` reader (v1 and v2), `mimistack.tokens.grid_from_bytes`, with atheris.

    pip install atheris
    python fuzz/fuzz_container.py -max_total_time=60            # seeds a temporary corpus with valid files
    python fuzz/fuzz_container.py -max_total_time=600 CORPUS_DIR  # keep and grow a corpus

Each input is decoded three ways: as given; with its header checksum recomputed; and with every checksum
recomputed (header, level sections, frame records; v1 and v2), so that mutations reach the JSON and binary
header checks, the section and record parsing and the range decoder behind the CRCs. The only acceptable
outcomes are a `ContainerError` or a grid (possibly with a `TruncatedFileWarning`) that survives a write/read
round trip; anything else raises and stops the fuzzer with the crashing input saved by libFuzzer. The number of
inputs tried is printed every 10 000 inputs and written as JSON to $MIMI_FUZZ_STATS (default:
fuzz_container.stats.json in the temporary directory); libFuzzer's closing line "Done N runs" gives the same count.

Neighbours: `mimistack/mimifile/` (the code under test), `tests/test_container.py` (its unit and property tests),
`tests/test_mimifile_golden.py` (the golden files).
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import struct
import sys
import tempfile
import time
import warnings
import zlib
from pathlib import Path

import atheris
import numpy as np

with atheris.instrument_imports():
    from mimistack import mimifile
    from mimistack.mimifile.header import encode_v2, scan_v2
    from mimistack.tokens import TokenGrid, grid_from_bytes, grid_to_bytes

MAX_TOKENS = 20_000  # keeps every input fast; the reader checks the budget before allocating
STATS_PATH = Path(os.environ.get("MIMI_FUZZ_STATS", Path(tempfile.gettempdir()) / "fuzz_container.stats.json"))
_stats = {"inputs": 0, "decoded": 0, "container_errors": 0, "started": time.time()}


def _version(data: bytes) -> int:
    return struct.unpack_from("<H", data, 8)[0] if len(data) >= 10 else 0


def _fix_header(data: bytes, header: dict | None = None) -> bytes:
    """Recompute the header CRC (after replacing the v1 JSON with `header` if given)."""
    if _version(data) == 2:
        scanned = scan_v2(data)
        if scanned is None or scanned[1] + 4 > len(data):
            return data
        end = scanned[1]
        return data[:end] + struct.pack("<I", zlib.crc32(data[:end])) + data[end + 4 :]
    if len(data) < 14:
        return data
    (length,) = struct.unpack_from("<I", data, 10)
    end = 14 + length
    if end + 4 > len(data):
        return data
    rest = data[end + 4 :]
    if header is not None:
        body = json.dumps(header).encode()
        data = data[:10] + struct.pack("<I", len(body)) + body
        end = 14 + len(body)
    head = data[:end]
    return head + struct.pack("<I", zlib.crc32(head)) + rest


def _fix_all_v2(data: bytes) -> bytes:
    scanned = scan_v2(data)
    if scanned is None or scanned[1] + 4 > len(data):
        return data
    header, end = scanned
    payload = data[end + 4 :]
    if header.layout == "frame-major":
        return data[: end + 4] + _fix_records_v2(
            payload, mimifile.packed_size(len(header.levels_present), header.width)
        )
    fixed = tuple(
        dataclasses.replace(s, crc32=zlib.crc32(payload[s.offset : s.offset + s.length])) for s in header.sections
    )
    try:
        return encode_v2(dataclasses.replace(header, sections=fixed)) + payload
    except mimifile.ContainerError:
        return data


def _fix_records_v2(payload: bytes, packed: int) -> bytes:
    out = bytearray(payload)
    position = index = 0
    while position < len(out):
        kind = out[position]
        cursor = position + 1
        if kind == 1 or kind == 2:
            groups = 1 if kind == 1 else 2
            length = shift = 0
            while groups and cursor < len(out):
                length |= (out[cursor] & 0x7F) << shift
                shift += 7
                if not out[cursor] & 0x80:
                    groups -= 1
                    if groups and kind == 2:
                        length = shift = 0
                cursor += 1
            end = cursor + (length if kind == 1 else 0)
        else:
            end = cursor + packed
        if end + 4 > len(out):
            break
        struct.pack_into("<I", out, end, zlib.crc32(out[position:end], zlib.crc32(struct.pack("<I", index))))
        position, index = end + 4, index + 1
    return bytes(out)


def _fix_all(data: bytes) -> bytes:
    """Recompute every checksum the reader will check, wherever the structure is intact enough to find it."""
    if _version(data) == 2:
        return _fix_all_v2(data)
    data = _fix_header(data)
    if len(data) < 14:
        return data
    (length,) = struct.unpack_from("<I", data, 10)
    try:
        header = json.loads(data[14 : 14 + length])
    except (ValueError, RecursionError):
        return data
    if not isinstance(header, dict):
        return data
    payload = data[14 + length + 4 :]
    sections = header.get("sections")
    if header.get("layout") == "frame-major":
        return data[: 14 + length + 4] + _fix_records(payload)
    if isinstance(sections, list):
        for section in sections:
            if isinstance(section, dict) and all(isinstance(section.get(k), int) for k in ("offset", "length")):
                chunk = payload[section["offset"] : section["offset"] + section["length"]]
                section["crc32"] = zlib.crc32(chunk)
        return _fix_header(data, header)
    return data


def _fix_records(payload: bytes) -> bytes:
    out = bytearray(payload)
    position = 0
    while position + 11 <= len(out):
        (length,) = struct.unpack_from("<I", out, position + 7)
        end = position + 11 + length
        if end + 4 > len(out):
            break
        struct.pack_into("<I", out, end, zlib.crc32(out[position:end]))
        position = end + 4
    return bytes(out)


def _check(data: bytes) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", mimifile.TruncatedFileWarning)
            grid = grid_from_bytes(data, max_tokens=MAX_TOKENS)
    except mimifile.ContainerError:
        _stats["container_errors"] += 1
        return
    _stats["decoded"] += 1
    again = grid_from_bytes(grid_to_bytes(grid), max_tokens=MAX_TOKENS)
    if again != grid or again.metadata != grid.metadata:
        raise AssertionError("a decoded grid does not survive a write/read round trip")


def test_one_input(data: bytes) -> None:
    _stats["inputs"] += 1
    if _stats["inputs"] % 10_000 == 0:
        _write_stats()
        print(f"fuzz_container: {_stats['inputs']} inputs", file=sys.stderr)
    _check(data)
    _check(_fix_header(data))
    _check(_fix_all(data))


def _write_stats() -> None:
    stats = dict(_stats, seconds=round(time.time() - _stats["started"], 1))
    STATS_PATH.write_text(json.dumps(stats))


def _seed_corpus() -> str:
    directory = Path(tempfile.mkdtemp(prefix="mimi-fuzz-corpus-"))
    rng = np.random.default_rng(0)
    for i, (levels, frames, codebook) in enumerate([(4, 6, 2048), (32, 3, 2048), (3, 10, 5), (2, 0, 2048)]):
        codes = rng.integers(0, codebook, size=(levels, frames))
        if i % 2:
            codes[:, 1:] = codes[:, :1]  # repetitive, so range coding is used
        grid = TokenGrid(codes=codes, num_samples=frames * 1920, codebook_size=codebook, metadata={"seed": i})
        for version in mimifile.READ_VERSIONS:
            for layout in mimifile.LAYOUTS:
                for coding in mimifile.CODINGS:
                    data = grid_to_bytes(grid, layout=layout, coding=coding, version=version)  # type: ignore[arg-type]
                    (directory / f"{i}-v{version}-{layout}-{coding}.mimi").write_bytes(data)
    return str(directory)


def main() -> None:
    atexit.register(_write_stats)
    argv = list(sys.argv)
    if not any(not arg.startswith("-") for arg in argv[1:]):
        argv.append(_seed_corpus())
    if not any(arg.startswith("-artifact_prefix=") for arg in argv):  # crashes go to the temp dir, not the cwd
        argv.insert(1, f"-artifact_prefix={tempfile.gettempdir()}/mimi-fuzz-")
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
