"""The report figures, drawn with matplotlib's object API on the Agg canvas (no pyplot, no display): quality per
level count, each level alone and left out, the token grid, spectrograms and the per-level statistics.

Sits on `render` (column labels), `_files` (PNG files written atomically), `tokens` and `stats` (what is drawn);
used by `level_sweep` and `report`, which turn their results into the plain series drawn here. matplotlib is the
`[eval]` extra, imported when the first figure is made.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .._files import atomic_path
from ..metrics import MissingDependencyError
from ..stats import LevelStats
from ..tokens import TokenGrid
from .render import COLUMNS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Series = Sequence[tuple[float, float]]
"""(x, y) points of one line."""


def _figure_class() -> type[Figure]:
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise MissingDependencyError(
            "plots need matplotlib: pip install 'mimistack[eval]' (or: pip install matplotlib)"
        ) from error
    return Figure


def save_png(figure: Figure, path: Path) -> Path:
    """Write `figure` as `path` (a PNG; the temporary name has no suffix, so the format is given)."""
    with atomic_path(path, force=True) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    return path


def _grid_figure(panels: int, height: float) -> Figure:
    """A figure with `panels` axes, at most three per row, spaced by hand (constrained layout is slow)."""
    columns = min(3, panels)
    rows = math.ceil(panels / columns)
    figure = _figure_class()(figsize=(5 * columns, height * rows + 0.6))
    figure.subplots_adjust(
        left=0.07,
        right=0.98,
        bottom=0.5 / (height * rows + 0.6) + 0.05,
        top=1 - 1.0 / (height * rows + 0.6),
        wspace=0.3,
        hspace=0.55,
    )
    for index in range(panels):
        figure.add_subplot(rows, columns, index + 1)
    return figure


def quality_vs_levels(prefixes: Mapping[str, Series], bits_per_level: float, title: str) -> Figure:
    """One panel per metric column: its score against the number of levels decoded (a prefix), with the bitrate
    on the top axis."""
    figure = _grid_figure(len(prefixes), 4.0)

    def to_kbps(levels: ArrayLike) -> ArrayLike:
        return np.asarray(levels) * bits_per_level / 1000

    def to_levels(kbps: ArrayLike) -> ArrayLike:
        return np.asarray(kbps) * 1000 / bits_per_level

    for axis, (column, points) in zip(figure.axes, prefixes.items()):
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3)
        label, higher = COLUMNS[column]
        axis.set_xlabel("levels decoded (prefix)")
        axis.set_ylabel(f"{label} ({'higher' if higher else 'lower'} is better)")
        axis.grid(True, alpha=0.3)
        top = axis.secondary_xaxis("top", functions=(to_kbps, to_levels))
        top.set_xlabel("bitrate (kbit/s)")
    figure.suptitle(title)
    return figure


def per_level(lines: Mapping[str, Mapping[str, Series]], title: str) -> Figure:
    """One panel per metric column, one line per label (e.g. "level alone"): the score against the level."""
    figure = _grid_figure(len(lines), 3.6)
    for axis, (column, by_label) in zip(figure.axes, lines.items()):
        for label, points in by_label.items():
            axis.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=label)
        axis.set_xlabel("level")
        axis.set_ylabel(COLUMNS[column][0])
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize="small")
    figure.suptitle(title)
    return figure


def token_grid(grid: TokenGrid, title: str) -> Figure:
    figure = _figure_class()(figsize=(10, 4))
    figure.subplots_adjust(left=0.07, right=0.97, bottom=0.13, top=0.9)
    axis = figure.add_subplot(1, 1, 1)
    image = axis.imshow(
        grid.codes,
        aspect="auto",
        origin="lower",
        interpolation="nearest",
        cmap="viridis",
        extent=(0, grid.num_frames / grid.frame_rate, -0.5, grid.num_levels - 0.5),
    )
    axis.set_xlabel("time (s)")
    axis.set_ylabel("level")
    figure.colorbar(image, ax=axis, label="token")
    axis.set_title(title)
    return figure


def _spectrogram_db(pcm: NDArray[np.float32], n_fft: int = 1024, hop: int = 256) -> NDArray[np.float64]:
    """Log-magnitude spectrogram in dB: float `[n_fft // 2 + 1, frames]`."""
    padded = np.pad(pcm.astype(np.float64), (n_fft // 2, n_fft // 2))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    magnitude = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=-1)).T
    return 20 * np.log10(np.maximum(magnitude, 1e-6))


def spectrograms(panels: Sequence[tuple[str, NDArray[np.float32]]], sample_rate: int, title: str) -> Figure:
    """Side by side on one colour scale (80 dB below the loudest); the time axis is the first panel's length."""
    spectra = [_spectrogram_db(pcm) for _, pcm in panels]
    high = max(float(s.max()) for s in spectra)
    seconds = len(panels[0][1]) / sample_rate
    figure = _figure_class()(figsize=(4 * len(panels), 3.6))
    figure.subplots_adjust(left=0.05, right=0.92, bottom=0.15, top=0.82, wspace=0.25)
    for index, ((name, _), spectrum) in enumerate(zip(panels, spectra)):
        axis = figure.add_subplot(1, len(panels), index + 1)
        image = axis.imshow(
            spectrum,
            aspect="auto",
            origin="lower",
            cmap="magma",
            vmin=high - 80,
            vmax=high,
            extent=(0, seconds, 0, sample_rate / 2000),
        )
        axis.set_title(name)
        axis.set_xlabel("time (s)")
        if index == 0:
            axis.set_ylabel("frequency (kHz)")
    figure.colorbar(image, ax=figure.axes, label="dB")
    figure.suptitle(title)
    return figure


def level_statistics(stats: LevelStats, title: str) -> Figure:
    """Entropy, perplexity and codebook share per level, and each level's code frequencies by rank."""
    max_bits = math.log2(stats.codebook_size)
    figure = _figure_class()(figsize=(12, 7))
    figure.subplots_adjust(left=0.07, right=0.97, bottom=0.08, top=0.92, wspace=0.25, hspace=0.3)
    levels = np.arange(stats.num_levels)
    axis = figure.add_subplot(2, 2, 1)
    axis.bar(levels, np.nan_to_num(stats.entropy_bits))
    axis.axhline(max_bits, color="grey", linestyle="--", label=f"maximum {max_bits:g} bits")
    axis.set_xlabel("level")
    axis.set_ylabel("entropy (bits)")
    axis.legend(fontsize="small")
    axis = figure.add_subplot(2, 2, 2)
    axis.bar(levels, np.nan_to_num(stats.perplexity))
    axis.set_xlabel("level")
    axis.set_ylabel("perplexity")
    axis = figure.add_subplot(2, 2, 3)
    axis.bar(levels, stats.distinct_codes / stats.codebook_size)
    axis.set_xlabel("level")
    axis.set_ylabel("share of codebook used")
    axis.set_ylim(0, 1)
    axis = figure.add_subplot(2, 2, 4)
    ranked = -np.sort(-stats.probabilities, axis=1)  # each level's code frequencies, most used first
    image = axis.imshow(
        np.log10(np.maximum(ranked, 1e-7)),
        aspect="auto",
        origin="lower",
        interpolation="nearest",
        cmap="viridis",
        vmin=-7,
        vmax=0,
    )
    axis.set_xlabel("code rank (most used first)")
    axis.set_ylabel("level")
    figure.colorbar(image, ax=axis, label="log10 frequency")
    figure.suptitle(title)
    return figure


def agreement_heatmap(names: Sequence[str], agreement: NDArray[np.float64], title: str) -> Figure:
    """Implementation (rows) × level (columns): the fraction of tokens equal to the reference's, 0..1."""
    rows = max(1, len(names))
    figure = _figure_class()(figsize=(12, 1.2 + 0.4 * rows))
    figure.subplots_adjust(left=0.2, right=0.98, bottom=0.5 / (1.2 + 0.4 * rows) + 0.1, top=0.85)
    axis = figure.add_subplot(1, 1, 1)
    data = agreement if agreement.size else np.zeros((1, 1))
    image = axis.imshow(data, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0.0, vmax=1.0)
    axis.set_yticks(range(len(names)), labels=list(names))
    axis.set_xlabel("level")
    figure.colorbar(image, ax=axis, label="tokens equal to the reference")
    axis.set_title(title)
    return figure


def margin_distribution(margins: NDArray[np.float64], title: str) -> Figure:
    """Per level, the 1st, 10th and 50th percentile of the nearest-centroid margin `[K, T]` (log scale)."""
    figure = _figure_class()(figsize=(10, 4))
    figure.subplots_adjust(left=0.08, right=0.97, bottom=0.13, top=0.88)
    axis = figure.add_subplot(1, 1, 1)
    levels = np.arange(margins.shape[0])
    for quantile in (0.01, 0.1, 0.5):
        values = np.maximum(np.quantile(margins, quantile, axis=1), 1e-9) if margins.size else np.zeros(0)
        axis.plot(levels[: len(values)], values, marker=".", label=f"{round(100 * quantile)}th percentile")
    axis.set_yscale("log")
    axis.set_xlabel("level")
    axis.set_ylabel("(d2 - d1) / d1")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize="small")
    axis.set_title(title)
    return figure
