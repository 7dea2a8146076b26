"""What each level carries, measured: level sweeps, per-level token statistics and quality tables, with reports.

Measurement layer. Below it: `codec` (decoding), `metrics` (every score), `stats` (`LevelStats`, re-exported here
with `level_stats`), `tokens`, `levels`, `audio` (reading and writing audio) and `_files` (every report file).
Above it: `cli.ops` (`mimistack sweep`, `stats`, `quality`). Plots use matplotlib's object API with the Agg canvas
(no pyplot, no display), from the `[eval]` extra.

* `sweep(codec, pcm, out_dir=...)` (`level_sweep`) decodes every prefix 1..32, each level alone ("solo") and all
  levels but one ("without"), scores each against the original and writes `results.csv`, `results.md`, PNG plots,
  the decoded wav files and an `index.html` report with a player per setting.
* `level_stats(grids)` (`mimistack.stats`) and `write_stats_report` (`report`) give per-level codebook usage,
  entropy and perplexity.
* `prefix_quality(codec, files)` and `write_quality_report` (`quality`) give mean STOI / PESQ-WB per prefix over
  many files: the per-level table that papers publish.

Underneath: `scoring` (metric names, scoring one decoding, random weights), `render` (tables, banner, files) and
`plots` (the figures). Every report states the sha256 of the weights that produced it, and warns loudly when they
are random: audio decoded with random weights is noise, and its scores say nothing about Mimi.
"""

from __future__ import annotations

from ..stats import LevelStats, level_stats
from .level_sweep import SweepResult, SweepRow, SweepSetting, sweep, sweep_settings
from .quality import DEFAULT_QUALITY_PREFIXES, QualityTable, prefix_quality, quality_markdown, write_quality_report
from .render import RANDOM_BANNER
from .report import write_stats_report
from .scoring import DEFAULT_SWEEP_METRICS, AnalysisError, Progress, weights_are_random

__all__ = [
    "DEFAULT_QUALITY_PREFIXES",
    "DEFAULT_SWEEP_METRICS",
    "RANDOM_BANNER",
    "AnalysisError",
    "LevelStats",
    "Progress",
    "QualityTable",
    "SweepResult",
    "SweepRow",
    "SweepSetting",
    "level_stats",
    "prefix_quality",
    "quality_markdown",
    "sweep",
    "sweep_settings",
    "weights_are_random",
    "write_quality_report",
    "write_stats_report",
]
