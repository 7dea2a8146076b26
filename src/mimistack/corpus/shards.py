"""One finished work unit as one Parquet shard: the row schema and the atomic write that marks the unit done.

Sits on `layout` (names, footer key, `ShardMeta`, `write_table`) and `errors` (pyarrow); used by `units.UnitSink`,
which hands over the encoded rows of a unit once all of them are back from the runner (local or Ray), and by the
runners for `EncodedRow`. The schema is documented column by column in `layout.COLUMNS` and `docs/corpus.md`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict

import numpy as np

from .._version import __version__
from .errors import require_pyarrow
from .layout import (
    FORMAT_VERSION,
    SHARD_DIR,
    SHARD_METADATA_KEY,
    FailedFile,
    ShardMeta,
    WeightsIdentity,
    shard_name,
    write_table,
)


class EncodedRow(TypedDict):
    """One file back from a runner's encoder; `codes` are uint16 `[num_levels, num_frames]` as little-endian
    bytes, and `error` says why there are none ("" for a good file)."""

    unit: int
    position: int
    id: str
    path: str
    num_samples: int
    num_frames: int
    codes: bytes
    error: str


def _schema(num_levels: int) -> object:
    pa = require_pyarrow()
    return pa.schema(
        [
            ("id", pa.string()),
            ("source_path", pa.string()),
            ("duration_s", pa.float64()),
            ("num_samples", pa.int64()),
            ("num_frames", pa.int32()),
            ("codes", pa.list_(pa.list_(pa.uint16(), num_levels))),
            ("weights_sha256", pa.string()),
            ("mimistack_version", pa.string()),
        ]
    )


def write_shard(folder: Path, unit: int, ordered: Sequence[EncodedRow], identity: WeightsIdentity) -> tuple[int, int]:
    """Write one unit's shard atomically: its good rows in plan order, its bad files in the footer. Returns the
    counts of rows written and of files that failed."""
    pa = require_pyarrow()
    good = [r for r in ordered if not r["error"]]
    errors = [FailedFile(id=r["id"], path=r["path"], reason=r["error"]) for r in ordered if r["error"]]
    levels = identity.num_levels
    grids = [np.frombuffer(r["codes"], dtype="<u2").reshape(levels, r["num_frames"]) for r in good]
    frames = np.asarray([g.shape[1] for g in grids], dtype=np.int64)
    flat = np.concatenate([g.T.reshape(-1) for g in grids]) if grids else np.zeros(0, dtype=np.uint16)
    offsets = np.concatenate([[0], np.cumsum(frames)]).astype(np.int32)
    codes = pa.ListArray.from_arrays(
        pa.array(offsets, pa.int32()), pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.uint16()), levels)
    )
    samples = np.asarray([r["num_samples"] for r in good], dtype=np.int64)
    table = pa.table(
        {
            "id": pa.array([r["id"] for r in good], pa.string()),
            "source_path": pa.array([r["path"] for r in good], pa.string()),
            "duration_s": pa.array(samples / identity.sample_rate, pa.float64()),
            "num_samples": pa.array(samples, pa.int64()),
            "num_frames": pa.array(frames.astype(np.int32), pa.int32()),
            "codes": codes,
            "weights_sha256": pa.array([identity.sha256] * len(good), pa.string()),
            "mimistack_version": pa.array([__version__] * len(good), pa.string()),
        },
        schema=_schema(levels),
    )
    meta = ShardMeta(
        format_version=FORMAT_VERSION,
        unit=unit,
        rows=len(good),
        errors=errors,
        audio_seconds=float(samples.sum() / identity.sample_rate),
        num_levels=levels,
        sample_rate=identity.sample_rate,
        frame_rate=identity.frame_rate,
        codebook_size=identity.codebook_size,
        weights_sha256=identity.sha256,
        codes_order="frame-major",
    )
    table = table.replace_schema_metadata({SHARD_METADATA_KEY: json.dumps(meta)})
    write_table(table, folder / SHARD_DIR / shard_name(unit))
    return len(good), len(errors)
