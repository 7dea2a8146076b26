"""The per-level statistics report: `stats.csv`, `stats.md` and `stats.png` (codebook usage, entropy and
perplexity per level) for a `LevelStats`.

Sits on `stats` (`LevelStats`), `render` (tables, files) and `plots` (`level_statistics`); used by `cli.ops`
(`mimistack stats`) and re-exported by `mimistack.analysis`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .._version import __version__
from ..config import MimiConfig
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
    coded_bitrate: Mapping[int, float] | None = None,
    comparisons: Mapping[str, tuple[Mapping[int, float], Mapping[int, float]]] | None = None,
    against: str = "",
) -> dict[str, Path]:
    """Write `stats.csv`, `stats.md` and `stats.png` (codebook usage, entropy, perplexity per level).

    `coded_bitrate`: level -> the entropy-coded bit/s its tokens need (`scoring.coded_bitrates(grids)`), added as
    a column next to the nominal fixed-width rate. `comparisons`: file -> (per-level token agreement, per-level
    normalised edit distance) against the grid `against` (`stats.token_agreement`, `stats.token_edit_distance`),
    written as `comparison.csv` and a section of `stats.md`."""
    folder = prepare_dir(out_dir, force)
    max_bits = math.log2(stats.codebook_size)
    nominal = max_bits * MimiConfig().frame_rate
    entropy, perplexity, distinct, tokens = stats.entropy_bits, stats.perplexity, stats.distinct_codes, stats.tokens
    coded = dict(coded_bitrate or {})
    header = ["level", "tokens", "distinct_codes", "codebook_usage", "entropy_bits", "perplexity", "max_entropy_bits"]
    if coded:
        header += ["entropy_coded_bps", "nominal_bps"]
    rows: list[list[Cell]] = [
        [
            level,
            int(tokens[level]),
            int(distinct[level]),
            f"{distinct[level] / stats.codebook_size:.6g}",
            csv_number(float(entropy[level])),
            csv_number(float(perplexity[level])),
            f"{max_bits:g}",
            *([csv_number(coded.get(level)), f"{nominal:g}"] if coded else []),
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
    if coded:
        lines += [
            f"Entropy-coded bit/s: what the adaptive range coder of `.mimi` files needs for these tokens, against "
            f"the nominal {nominal:g} bit/s per level of fixed-width tokens.",
            "",
        ]
    lines += markdown_table(
        ["level", "tokens", "distinct codes", "usage", "entropy (bits)", "perplexity"]
        + (["entropy-coded bit/s"] if coded else []),
        [
            [
                str(level),
                str(int(tokens[level])),
                str(int(distinct[level])),
                f"{distinct[level] / stats.codebook_size:.1%}",
                number(float(entropy[level])),
                number(float(perplexity[level]), 1),
                *([number(coded.get(level), 1)] if coded else []),
            ]
            for level in range(stats.num_levels)
        ],
    )
    if comparisons:
        lines += ["", f"## Tokens against `{against}`", ""]
        lines += [
            "Per file: the share of tokens equal to the reference's, frame t against frame t (`token_agreement`), "
            "and the edit distance per level over the longer row's length (`token_edit_distance`), both averaged "
            "over the levels the two share.",
            "",
        ]
        lines += markdown_table(
            ["file", "tokens equal", "level 0 equal", "edit distance"],
            [
                [
                    name,
                    f"{100 * float(np.mean(list(agreement.values()))):.2f} %" if agreement else "–",
                    f"{100 * agreement[0]:.2f} %" if 0 in agreement else "–",
                    number(float(np.mean(list(distance.values()))) if distance else None, 4),
                ]
                for name, (agreement, distance) in comparisons.items()
            ],
        )
        comparison_rows: list[list[Cell]] = [
            [name, level, csv_number(agreement[level]), csv_number(distance.get(level))]
            for name, (agreement, distance) in comparisons.items()
            for level in sorted(agreement)
        ]
        files["comparison"] = write_report_text(
            folder / "comparison.csv",
            csv_text(["file", "level", "token_agreement", "token_edit_distance"], comparison_rows),
        )
    files["markdown"] = write_report_text(folder / "stats.md", "\n".join(lines) + "\n")

    title = ("RANDOM WEIGHTS — " if random_weights else "") + "Per-level codebook usage"
    files["plot"] = figures.save_png(figures.level_statistics(stats, title), folder / "stats.png")
    return files
