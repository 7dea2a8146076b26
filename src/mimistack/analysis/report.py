"""The per-level statistics report: `stats.csv`, `stats.md` and `stats.png` (codebook usage, entropy and
perplexity per level) for a `LevelStats`.

Sits on `stats` (`LevelStats`), `render` (tables, files) and `plots` (`level_statistics`); used by `cli.ops`
(`mimistack stats`) and re-exported by `mimistack.analysis`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._version import __version__
from ..stats import LevelStats
from . import plots as figures
from .render import Cell, csv_number, csv_text, markdown_table, number, prepare_dir, weights_lines, write_report_text


def write_stats_report(
    stats: LevelStats,
    out_dir: str | os.PathLike[str],
    *,
    force: bool = False,
    weights_label: str = "",
    random_weights: bool = False,
    sources: Sequence[str] = (),
) -> dict[str, Path]:
    """Write `stats.csv`, `stats.md` and `stats.png` (codebook usage, entropy, perplexity per level)."""
    folder = prepare_dir(out_dir, force)
    max_bits = math.log2(stats.codebook_size)
    entropy, perplexity, distinct, tokens = stats.entropy_bits, stats.perplexity, stats.distinct_codes, stats.tokens
    header = ["level", "tokens", "distinct_codes", "codebook_usage", "entropy_bits", "perplexity", "max_entropy_bits"]
    rows: list[list[Cell]] = [
        [
            level,
            int(tokens[level]),
            int(distinct[level]),
            f"{distinct[level] / stats.codebook_size:.6g}",
            csv_number(float(entropy[level])),
            csv_number(float(perplexity[level])),
            f"{max_bits:g}",
        ]
        for level in range(stats.num_levels)
    ]
    files = {"csv": write_report_text(folder / "stats.csv", csv_text(header, rows))}

    lines = [
        "# Per-level token statistics",
        "",
        f"{stats.num_grids} grid(s), {stats.num_frames} frames; codebook of {stats.codebook_size} "
        f"(at most {max_bits:g} bits per token). mimistack {__version__}.",
        "",
    ]
    lines += weights_lines(weights_label or "unknown", stats.weights_sha256, random_weights)
    if sources:
        lines += ["Files: " + ", ".join(f"`{name}`" for name in sources), ""]
    counted = tokens > 0
    if counted.any():
        lines += [
            f"Mean entropy {np.nanmean(entropy):.3f} bits per token over the counted levels; summed over "
            f"them, {np.nansum(entropy):.1f} bits per frame against {max_bits * counted.sum():g} for fixed-width "
            "tokens (what a memoryless entropy coder could reach).",
            "",
        ]
    lines += markdown_table(
        ["level", "tokens", "distinct codes", "usage", "entropy (bits)", "perplexity"],
        [
            [
                str(level),
                str(int(tokens[level])),
                str(int(distinct[level])),
                f"{distinct[level] / stats.codebook_size:.1%}",
                number(float(entropy[level])),
                number(float(perplexity[level]), 1),
            ]
            for level in range(stats.num_levels)
        ],
    )
    files["markdown"] = write_report_text(folder / "stats.md", "\n".join(lines) + "\n")

    title = ("RANDOM WEIGHTS — " if random_weights else "") + "Per-level codebook usage"
    files["plot"] = figures.save_png(figures.level_statistics(stats, title), folder / "stats.png")
    return files
