"""Mean quality per number of levels over many files: the per-level table that papers publish (`prefix_quality`),
and its report (`quality.md`, `quality.csv`, `quality_per_file.csv`).

Sits on `scoring` (metrics, `weights_are_random`), `render` (tables, files), `codec`, `levels` and `audio`
(`load_audio`); used by `cli.ops` (`mimistack quality`) and re-exported by `mimistack.analysis`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .. import __version__
from ..audio import load_audio
from ..codec import Codec
from ..levels import Levels
from .render import (
    Cell,
    codec_superb_entry,
    codec_superb_name,
    csv_number,
    csv_text,
    heading,
    markdown_table,
    number,
    prepare_dir,
    weights_lines,
    write_report_text,
)
from .scoring import AnalysisError, Progress, Scores, metric_columns, resolve_metrics, score, weights_are_random

logger = logging.getLogger(__name__)

DEFAULT_QUALITY_PREFIXES: tuple[int, ...] = (1, 2, 4, 8, 16, 32)


@dataclasses.dataclass(frozen=True)
class QualityTable:
    """Scores per file and prefix, and their mean per prefix.

    `values[file][prefix][metric]` (None where the metric failed on that file); `prefixes`, `metrics` and `files`
    in order.
    """

    files: tuple[str, ...]
    prefixes: tuple[int, ...]
    metrics: tuple[str, ...]
    values: dict[str, dict[int, Scores]]
    weights_label: str
    weights_sha256: str
    random_weights: bool
    seconds: float  # total audio scored
    bits_per_level: float  # bit/s one level costs with fixed-width tokens (137.5 for Mimi)

    def mean(self, prefix: int, metric: str) -> tuple[float, float, int]:
        """Mean, standard deviation and count of `metric` at `prefix` over the files where it scored."""
        scores = [v for file in self.files if (v := self.values[file][prefix].get(metric)) is not None]
        if not scores:
            return math.nan, math.nan, 0
        return float(np.mean(scores)), float(np.std(scores)), len(scores)


def prefix_quality(
    codec: Codec,
    files: Sequence[str | os.PathLike[str]],
    *,
    prefixes: Sequence[int] = DEFAULT_QUALITY_PREFIXES,
    metrics: Sequence[str] = ("stoi", "pesq_wb"),
    progress: Progress | None = None,
    weights_label: str | None = None,
) -> QualityTable:
    """Encode each file once, decode each prefix of `prefixes` levels and score it against the file.

    Files are read with `mimistack.audio.load_audio` (any format, resampled to 24 kHz mono).
    """
    names = resolve_metrics(metrics, None)
    if not files:
        raise AnalysisError("no audio files given")
    counts = tuple(sorted(set(int(p) for p in prefixes)))
    if not counts or counts[0] < 1 or counts[-1] > codec.num_levels:
        raise AnalysisError(f"prefixes must lie in 1-{codec.num_levels}, got {list(prefixes)}")
    values: dict[str, dict[int, Scores]] = {}
    seconds = 0.0
    for done, path in enumerate(files):
        if progress is not None:
            progress(done, len(files), Path(path).name)
        original = load_audio(path, sample_rate=codec.sample_rate)
        seconds += original.size / codec.sample_rate
        grid = codec.encode(original)
        key = str(path)
        values[key] = {}
        for count in counts:
            estimate = codec.decode(grid, Levels.prefix(count, codec.num_levels))
            scores, _, errors = score(original, estimate, names, codec.sample_rate, None)
            for error in errors:
                logger.warning("%s, %d levels: %s", path, count, error)
            values[key][count] = scores
    if progress is not None:
        progress(len(files), len(files), "done")
    return QualityTable(
        files=tuple(str(f) for f in files),
        prefixes=counts,
        metrics=metric_columns(names),
        values=values,
        weights_label=weights_label or codec.source or "unknown",
        weights_sha256=codec.weights_sha256,
        random_weights=weights_are_random(codec),
        seconds=seconds,
        bits_per_level=codec.config.bitrate(1),
    )


def quality_markdown(table: QualityTable) -> str:
    """The per-prefix table (mean ± std over files) as Markdown."""
    lines = [
        "# Mean quality per number of levels",
        "",
        f"{len(table.files)} file(s), {table.seconds / 60:.1f} min of audio. mimistack {__version__}.",
        "",
    ]
    lines += weights_lines(table.weights_label, table.weights_sha256, table.random_weights)
    header = ["levels", "bit/s", *[f"{heading(m)} mean ± std (n)" for m in table.metrics]]
    rows = []
    for prefix in table.prefixes:
        cells = [str(prefix), f"{prefix * table.bits_per_level:.1f}"]
        for metric in table.metrics:
            mean, std, count = table.mean(prefix, metric)
            cells.append(f"{number(mean)} ± {number(std)} ({count})" if count else "–")
        rows.append(cells)
    return "\n".join(lines + markdown_table(header, rows)) + "\n"


def codec_superb_results(table: QualityTable) -> dict[str, dict[str, dict[str, float]]]:
    """Each prefix as a Codec-SUPERB result entry (`mimi_8q`: the mean over the files of each metric that fills a
    Codec-SUPERB field, see `render.CODEC_SUPERB_FIELDS`)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for prefix in table.prefixes:
        means: Scores = {}
        for metric in table.metrics:
            mean, _, count = table.mean(prefix, metric)
            means[metric] = mean if count else None
        out.update(codec_superb_entry(codec_superb_name(prefix, table.random_weights), means))
    return out


def write_quality_report(
    table: QualityTable, out_dir: str | os.PathLike[str], *, force: bool = False
) -> dict[str, Path]:
    """Write `quality.md` (means per prefix), `quality.csv` (the same), `quality_per_file.csv` and
    `codec_superb.json` (each prefix as a Codec-SUPERB result entry, `codec_superb_results`)."""
    folder = prepare_dir(out_dir, force)
    header = ["levels"] + [f"{m}_{stat}" for m in table.metrics for stat in ("mean", "std", "count")]
    rows = []
    for prefix in table.prefixes:
        cells: list[Cell] = [prefix]
        for metric in table.metrics:
            mean, std, count = table.mean(prefix, metric)
            cells += [csv_number(mean), csv_number(std), count]
        rows.append(cells)
    per_file: list[list[Cell]] = [
        [file, prefix, *[csv_number(table.values[file][prefix].get(m)) for m in table.metrics]]
        for file in table.files
        for prefix in table.prefixes
    ]
    return {
        "codec_superb": write_report_text(
            folder / "codec_superb.json", json.dumps(codec_superb_results(table), indent=2) + "\n"
        ),
        "markdown": write_report_text(folder / "quality.md", quality_markdown(table)),
        "csv": write_report_text(folder / "quality.csv", csv_text(header, rows)),
        "per_file": write_report_text(
            folder / "quality_per_file.csv", csv_text(["file", "levels", *table.metrics], per_file)
        ),
    }
