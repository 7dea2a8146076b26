"""Writes the golden `.mimi` files of this folder and `index.json`, which lists what each decodes to.

    python tests/data/golden/make_golden.py           # (re)write the files here
    python tests/data/golden/make_golden.py --check   # exit 1 unless the files here are byte for byte what it writes
    python tests/data/golden/make_golden.py --out DIR  # write them elsewhere

Every file comes from fixed codes (numpy `default_rng` with a fixed seed) through mimistack's own writer: the v2
files through the default (v2) writer, the v1 files through the v1 writer that `mimistack.mimifile` keeps for
exactly this (`version=1`). Deterministic: the same mimistack writes the same bytes, so `--check` (and
`tests/test_mimifile_golden.py`) catch any change to the format. Read by `tests/test_mimifile_golden.py` (Python)
and `tests/js_protocol/golden.mjs` (the browser's reader and writer, `web/src/mimi-format.ts`, in Node).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mimistack.mimifile import Coding, Layout, MimiRecord, record_to_bytes

HERE = Path(__file__).resolve().parent
WEIGHTS = hashlib.sha256(b"mimistack golden weights").hexdigest()


@dataclass(frozen=True)
class Golden:
    name: str
    version: int
    layout: Layout
    coding: Coding
    record: MimiRecord
    note: str


def _codes(seed: int, levels: int, frames: int, *, repetitive: bool = False, codebook: int = 2048) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if not repetitive:
        return rng.integers(0, codebook, size=(levels, frames))
    codes = np.repeat(rng.integers(0, codebook, size=(levels, 1)), frames, axis=1)
    changes = rng.random((levels, frames)) < 0.1
    codes[changes] = rng.integers(0, codebook, size=int(changes.sum()))
    return codes


def _record(codes: np.ndarray, num_samples: int, **fields: object) -> MimiRecord:
    present = fields.pop("levels_present", None)
    codes = np.asarray(codes).copy()
    levels = tuple(range(codes.shape[0])) if present is None else tuple(present)  # type: ignore[arg-type]
    codes[[i for i in range(codes.shape[0]) if i not in levels]] = 0
    return MimiRecord(codes=codes, num_samples=num_samples, levels_present=levels, **fields)  # type: ignore[arg-type]


def goldens() -> list[Golden]:
    small = _record(_codes(1, 3, 5), 5 * 1920 - 100, weights_sha256=WEIGHTS, metadata={"source": "golden.wav"})
    subset = _record(
        _codes(2, 4, 6),
        6 * 1920,
        levels_present=(0, 1, 3),
        weights_sha256=WEIGHTS,
        metadata={"source": "golden.wav", "writer": "make_golden"},
    )
    repetitive = _record(_codes(3, 4, 40, repetitive=True), 40 * 1920 - 7, weights_sha256=WEIGHTS)
    second = _record(_codes(4, 32, 13), 24_000, weights_sha256=WEIGHTS)
    zlib_meta = _record(
        _codes(5, 2, 3, codebook=5),
        3 * 1920,
        codebook_size=5,
        weights_sha256="not a sha256",
        metadata={"notes": "the same words again " * 20, "n": [1, 2.5, None, True]},
    )
    return [
        Golden("v1-level-major-packed", 1, "level-major", "packed11", small, "v1, 3 levels x 5 frames"),
        Golden("v1-level-major-range", 1, "level-major", "range", repetitive, "v1, a range-coded section"),
        Golden("v1-frame-major-packed", 1, "frame-major", "packed11", small, "v1 frame-major records"),
        Golden("v2-level-major-packed", 2, "level-major", "packed11", subset, "v2, levels 0,1,3 of 4 present"),
        Golden("v2-level-major-range", 2, "level-major", "range", repetitive, "v2, range-coded sections"),
        Golden("v2-frame-major-packed", 2, "frame-major", "packed11", small, "v2 frame-major records"),
        Golden("v2-frame-major-range", 2, "frame-major", "range", repetitive, "v2 frame-major, range records"),
        Golden("v2-32-levels-1s", 2, "level-major", "packed11", second, "v2, 32 levels x 1 s: the size target"),
        Golden(
            "v2-metadata-zlib",
            2,
            "level-major",
            "packed11",
            zlib_meta,
            "v2, zlib-compressed metadata, codebook 5, weights as text",
        ),
    ]


def expected(golden: Golden, data: bytes) -> dict[str, object]:
    record = golden.record
    return {
        "file": f"{golden.name}.mimi",
        "note": golden.note,
        "version": golden.version,
        "layout": golden.layout,
        "coding": golden.coding,
        "bytes": len(data),
        "file_sha256": hashlib.sha256(data).hexdigest(),
        "num_levels": record.num_levels,
        "num_frames": record.num_frames,
        "num_samples": record.num_samples,
        "sample_rate": record.sample_rate,
        "frame_rate": record.frame_rate,
        "codebook_size": record.codebook_size,
        "weights_sha256": record.weights_sha256,
        "levels_present": list(record.levels_present),
        "metadata": record.metadata,
        "codes_sha256": hashlib.sha256(record.codes.astype("<u2").tobytes()).hexdigest(),
        "codes": record.codes.tolist(),
    }


def build() -> dict[str, bytes]:
    """File name -> bytes of every golden file and of index.json."""
    files: dict[str, bytes] = {}
    index = []
    for golden in goldens():
        data = record_to_bytes(golden.record, layout=golden.layout, coding=golden.coding, version=golden.version)
        files[f"{golden.name}.mimi"] = data
        index.append(expected(golden, data))
    files["index.json"] = (
        json.dumps({"licence": "CC0-1.0 (generated by make_golden.py)", "goldens": index}, indent=1) + "\n"
    ).encode()
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the files here instead of writing")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    files = build()
    if args.check:
        stale = [
            name
            for name, data in files.items()
            if not (args.out / name).exists() or (args.out / name).read_bytes() != data
        ]
        for name in stale:
            print(f"differs: {name}", file=sys.stderr)
        return 1 if stale else 0
    from mimistack._files import write_bytes

    for name, data in files.items():
        write_bytes(args.out / name, data, force=True)
        print(f"{name}: {len(data)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
