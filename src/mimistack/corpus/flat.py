"""The flat export of a corpus for language-model training: one uint16 token file, row offsets and ids, published
as a whole folder (`export_flat`), and reading it back (`iter_flat`).

Sits on `reader` (`Corpus`), `levels` and `_files` (the folder is built in a staging folder and renamed into
place); used by `cli.corpus` (`mimistack corpus-export`) and the tests. Format: `docs/corpus.md`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from .._files import publish_dir, staging_dir
from .._version import __version__
from ..levels import Levels, LevelsLike
from .errors import CorpusError
from .layout import FORMAT_VERSION
from .reader import Corpus


@dataclasses.dataclass(frozen=True)
class FlatExport:
    """Paths and sizes of a flat export (see `export_flat`)."""

    folder: Path
    tokens: Path
    index: Path
    ids: Path
    meta: Path
    num_utterances: int
    num_tokens: int
    levels: tuple[int, ...]


def export_flat(
    corpus: str | os.PathLike[str] | Corpus,
    destination: str | os.PathLike[str],
    levels: LevelsLike = "0-7",
    *,
    force: bool = False,
) -> FlatExport:
    """Write a corpus as flat arrays for language-model training, into the folder `destination`.

    `tokens.bin`: uint16 little-endian, utterances one after another in corpus order, each frame-major with the
    chosen levels interleaved (frame 0 levels l0 l1 ..., frame 1 ...). `index.npy`: int64 `[num_utterances + 1]`
    offsets into tokens.bin in tokens (utterance u is `tokens[index[u]:index[u+1]]`, reshape to
    `[T, len(levels)]`). `ids.txt`: one id per line, in the same order. `meta.json`: dtype, byte order, order,
    levels and model facts. Written into a temporary folder renamed into place; refuses to overwrite unless
    `force`.
    """
    source = corpus if isinstance(corpus, Corpus) else Corpus(corpus)
    target = Path(destination)
    if target.exists() and not force:
        raise FileExistsError(f"{target} exists; pass force=True (--force) to replace it")
    if not target.parent.exists():
        raise CorpusError(f"output folder's parent {target.parent} does not exist")
    num_levels = int(source.manifest.get("model", {}).get("num_levels", 32))
    selected = Levels.parse(levels, num_levels)
    if not len(selected):
        raise CorpusError("choose at least one level to export")
    rows = list(selected)
    with staging_dir(target) as work:
        offsets = [0]
        ids: list[str] = []
        facts: dict[str, object] = {}
        with (work / "tokens.bin").open("wb") as handle:
            for record in source:
                block = np.ascontiguousarray(record.grid.codes[rows].T, dtype="<u2")
                handle.write(block.tobytes())
                offsets.append(offsets[-1] + block.size)
                ids.append(record.id)
                facts = {
                    "sample_rate": record.grid.sample_rate,
                    "frame_rate": record.grid.frame_rate,
                    "codebook_size": record.grid.codebook_size,
                    "weights_sha256": record.grid.weights_sha256,
                }
            handle.flush()
            os.fsync(handle.fileno())
        np.save(work / "index.npy", np.asarray(offsets, dtype=np.int64))
        (work / "ids.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
        meta = {
            "format": "mimistack-flat",
            "format_version": FORMAT_VERSION,
            "dtype": "uint16",
            "byte_order": "little",
            "order": "frame-major, levels interleaved: utterance u frame t level "
            "levels[j] is tokens[index[u] + t * len(levels) + j]",
            "levels": rows,
            "num_utterances": len(ids),
            "num_tokens": offsets[-1],
            "source": str(source.path),
            "mimistack_version": __version__,
            **facts,
        }
        (work / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        publish_dir(work, target)
    return FlatExport(
        target,
        target / "tokens.bin",
        target / "index.npy",
        target / "ids.txt",
        target / "meta.json",
        len(ids),
        offsets[-1],
        tuple(rows),
    )


def iter_flat(destination: str | os.PathLike[str]) -> Iterator[tuple[str, NDArray[np.uint16]]]:
    """Read a flat export back: (id, uint16 `[len(levels), T]`) per utterance, through a read-only memmap."""
    folder = Path(destination)
    meta = json.loads((folder / "meta.json").read_text())
    count = len(meta["levels"])
    tokens: NDArray[np.uint16] = (
        np.memmap(folder / "tokens.bin", dtype="<u2", mode="r") if meta["num_tokens"] else np.zeros(0, "<u2")
    )
    offsets: NDArray[np.int64] = np.load(folder / "index.npy")
    ids = (folder / "ids.txt").read_text(encoding="utf-8").splitlines()
    for u, identifier in enumerate(ids):
        yield identifier, tokens[offsets[u] : offsets[u + 1]].reshape(-1, count).T
