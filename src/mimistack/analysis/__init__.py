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
  many files: the per-level table that papers publish. `sweep` and `quality` also write `codec_superb.json`, the
  prefixes as Codec-SUPERB result entries.
* `run_parity(weights, clips, out_dir=...)` (`parity`) holds every installed Mimi implementation (moshi, transformers,
  rustymimi, mimistack torch and ONNX) to one reference, per level; `run_precision(...)` (`precision`) holds the
  reduced-precision paths of this machine to exact fp32, with the quantizer's near-tie margins (`agreement`).

Underneath: `agreement` (per-level token agreement, first differences, margins), `variants` (the ONNX graphs of
every variant), `scoring` (metric names, scoring one decoding, random weights, entropy-coded bit rates), `render`
(tables, banner, files, Codec-SUPERB entries) and `plots` (the figures). Every report states the sha256 of the
weights that produced it, and warns loudly when they are random: audio decoded with random weights is noise, and
its scores say nothing about Mimi.
"""

from __future__ import annotations

from ..stats import LevelStats, level_stats
from .level_sweep import SweepResult, SweepRow, SweepSetting, decode_level_sets, sweep, sweep_settings
from .parity import IMPLEMENTATIONS, ParityResult, run_parity
from .precision import PRECISION_PATHS, PrecisionResult, run_precision
from .quality import DEFAULT_QUALITY_PREFIXES, QualityTable, prefix_quality, quality_markdown, write_quality_report
from .render import RANDOM_BANNER
from .report import write_stats_report
from .scoring import DEFAULT_SWEEP_METRICS, AnalysisError, Progress, weights_are_random

__all__ = [
    "DEFAULT_QUALITY_PREFIXES",
    "DEFAULT_SWEEP_METRICS",
    "IMPLEMENTATIONS",
    "PRECISION_PATHS",
    "RANDOM_BANNER",
    "AnalysisError",
    "LevelStats",
    "ParityResult",
    "PrecisionResult",
    "Progress",
    "QualityTable",
    "SweepResult",
    "SweepRow",
    "SweepSetting",
    "decode_level_sets",
    "level_stats",
    "prefix_quality",
    "quality_markdown",
    "run_parity",
    "run_precision",
    "sweep",
    "sweep_settings",
    "weights_are_random",
    "write_quality_report",
    "write_stats_report",
]
