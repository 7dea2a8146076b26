"""Reading a tokenize-corpus folder back: `open(folder)` iterates `CorpusRecord`s (id, source path, `TokenGrid`),
shard by shard in unit order, so memory stays bounded by one shard.

Sits on `layout` (finished shards, footers, the manifest), `errors` (pyarrow) and `tokens` (`TokenGrid`); used by
`flat` (the export), the tests, `bench/bench_corpus.py` and anyone training on a corpus.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ..tokens import TokenGrid
from .errors import CorpusError, require_parquet
from .layout import MANIFEST_FILE, SHARD_DIR, FileError, Manifest, completed_units, shard_meta, shard_name


@dataclasses.dataclass(frozen=True)
class CorpusRecord:
    """One utterance of a tokenized corpus. `grid.codes`: uint16 `[num_levels, T]`."""

    id: str
    source_path: str
    grid: TokenGrid

    @property
    def duration(self) -> float:
        return self.grid.duration


class Corpus:
    """A tokenize-corpus output folder, read shard by shard in unit order (bounded memory)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not (self.path / SHARD_DIR).is_dir():
            raise CorpusError(f"{self.path} is not a tokenize-corpus output (no {SHARD_DIR}/ folder)")
        manifest = self.path / MANIFEST_FILE
        self.manifest: Manifest = json.loads(manifest.read_text()) if manifest.exists() else {}
        self.shards = [self.path / SHARD_DIR / shard_name(u) for u in sorted(completed_units(self.path))]

    def __len__(self) -> int:
        pq = require_parquet()
        return sum(int(pq.ParquetFile(shard).metadata.num_rows) for shard in self.shards)

    def __iter__(self) -> Iterator[CorpusRecord]:
        for shard in self.shards:
            yield from self._records(shard)

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def errors(self) -> list[FileError]:
        """Files that could not be tokenized: id, path, reason, unit (from the shards themselves)."""
        return [
            FileError(id=error["id"], path=error["path"], reason=error["reason"], unit=meta["unit"])
            for meta in map(shard_meta, self.shards)
            for error in meta["errors"]
        ]

    def _records(self, shard: Path) -> Iterator[CorpusRecord]:
        meta = shard_meta(shard)
        table = require_parquet().read_table(shard)
        identifiers: list[str] = table.column("id").to_pylist()
        sources: list[str] = table.column("source_path").to_pylist()
        lengths: list[int] = table.column("num_samples").to_pylist()
        column = table.column("codes").combine_chunks()
        flat: NDArray[np.uint16] = column.flatten().flatten().to_numpy(zero_copy_only=False)
        offsets: NDArray[np.int32] = column.offsets.to_numpy()
        codes = _codes_arrays(flat, offsets - offsets[0], meta["num_levels"])
        for identifier, source, num_samples, grid_codes in zip(identifiers, sources, lengths, codes):
            grid = TokenGrid(
                codes=grid_codes,
                num_samples=num_samples,
                sample_rate=meta["sample_rate"],
                frame_rate=meta["frame_rate"],
                codebook_size=meta["codebook_size"],
                weights_sha256=meta["weights_sha256"],
                metadata={"id": identifier, "source_path": source},
            )
            yield CorpusRecord(identifier, source, grid)


def _codes_arrays(flat: NDArray[np.uint16], offsets: NDArray[np.int32], levels: int) -> Iterator[NDArray[np.uint16]]:
    """A `codes` column's tokens and row offsets (in frames) -> uint16 `[levels, T]` per row (zero-copy views,
    transposed from frame-major)."""
    for start, stop in itertools.pairwise(offsets):
        yield flat[start * levels : stop * levels].reshape(stop - start, levels).T


def open(path: str | os.PathLike[str]) -> Corpus:  # shadows the builtin on purpose, like gzip.open
    """Open a tokenize-corpus output folder: iterate it for `CorpusRecord`s (id, source_path, grid)."""
    return Corpus(path)
