"""What an analysis measures and whether the measurement means anything: the metric names a request may use, the
columns they fill, scoring one decoding against the original, and recognising random weights.

The bottom of `analysis/`: sits on `metrics` (every score) and `codec` (`RANDOM_WEIGHTS`); used by `level_sweep`,
`quality`, `render` (`AnalysisError`) and `cli.ops` (`DEFAULT_SWEEP_METRICS`, `weights_are_random`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from safetensors import safe_open

from .. import metrics as metrics_module
from ..codec import RANDOM_WEIGHTS, Codec
from ..errors import MimistackError
from ..mimifile import measure_coding
from ..tokens import TokenGrid

logger = logging.getLogger(__name__)

DEFAULT_SWEEP_METRICS: tuple[str, ...] = (*metrics_module.DEFAULT_METRICS, "stoi", "pesq_wb")
"""The cheap numpy metrics plus STOI and wide-band PESQ; WER is added when a reference text is given."""
DNSMOS_FIELDS = ("overall", "signal", "background", "p808")

Progress = Callable[[int, int, str], None]
"""progress(done, total, label): called as work advances."""
Scores = dict[str, float | None]
"""Metric column -> value (None where the metric could not score the pair)."""


class AnalysisError(MimistackError, ValueError):
    """An analysis request that cannot be carried out (bad metrics, an output folder in the way, no input)."""


def weights_are_random(codec: Codec) -> bool:
    """True for `random`/`random-tiny` and for checkpoints written by `mimistack.testing` (their metadata says so)."""
    if codec.source in RANDOM_WEIGHTS:
        return True
    path = Path(codec.source)
    if path.suffix == ".safetensors" and path.is_file():
        try:
            with safe_open(str(path), framework="numpy") as handle:
                note: str = (handle.metadata() or {}).get("mimistack_note", "")
        except (OSError, ValueError) as error:  # unreadable here means the codec could not have loaded it either
            logger.debug("could not read metadata of %s: %s", path, error)
            return False
        return note.startswith("random weights")
    return False


def coded_bitrates(grids: Sequence[TokenGrid]) -> dict[int, float]:
    """Per level present in every grid: the bit/s the adaptive range coder of `.mimi` files needs for these
    tokens (`mimifile.measure_coding`), next to the nominal fixed-width rate (137.5 bit/s for Mimi)."""
    grids = [grid for grid in grids if grid.num_frames]
    if not grids:
        return {}
    measured = measure_coding(grids)
    rate = grids[0].frame_rate
    return {level: bits * rate for level, bits in zip(measured.levels, measured.range_bits_per_token, strict=True)}


def metric_columns(names: Sequence[str]) -> tuple[str, ...]:
    """The table columns `names` fill: one per metric, four for DNSMOS."""
    columns: list[str] = []
    for name in names:
        columns += [f"dnsmos_{field}" for field in DNSMOS_FIELDS] if name == "dnsmos" else [name]
    return tuple(columns)


def resolve_metrics(requested: Sequence[str] | None, reference_text: str | None) -> tuple[str, ...]:
    """The metrics to compute, checked up front (known, scorable with what was given, installed), so that a
    sweep never fails after minutes of decoding."""
    if isinstance(requested, str):
        requested = [requested]
    names = list(DEFAULT_SWEEP_METRICS if requested is None else requested)
    if reference_text and "word_error_rate" not in names:
        names.append("word_error_rate")
    unknown = [name for name in names if name not in metrics_module.ALL_METRICS]
    if unknown:
        raise AnalysisError(f"unknown metric(s) {unknown}; choose from {', '.join(metrics_module.ALL_METRICS)}")
    if "word_error_rate" in names and not reference_text:
        raise AnalysisError("word_error_rate needs the words spoken in the input (reference_text / --text)")
    available = metrics_module.available_metrics()
    missing = [name for name in names if not available[name]]
    if missing:
        raise metrics_module.MissingDependencyError(
            f"metric(s) {', '.join(missing)} need packages that are not installed: pip install 'mimistack[eval]'; "
            "calling the metric itself (mimistack.metrics) names the exact command for the others"
        )
    return tuple(dict.fromkeys(names))


def score(
    reference: NDArray[np.float32],
    estimate: NDArray[np.float32],
    names: Sequence[str],
    sample_rate: int,
    reference_text: str | None,
) -> tuple[Scores, str | None, list[str]]:
    """Each metric on its own, so that one that cannot score this pair (PESQ on silence…) leaves a gap, not a crash.

    Returns the scores, the transcript of `estimate` (when the word error rate was computed) and the errors."""
    values: Scores = {}
    transcript = None
    errors: list[str] = []
    for name in names:
        try:
            result = metrics_module.evaluate(
                reference, estimate, sample_rate=sample_rate, metrics=(name,), reference_text=reference_text
            )
        except ValueError as error:
            errors.append(f"{name}: {error}")
            values.update({column: None for column in metric_columns([name])})
            continue
        if name == "dnsmos":
            scores = result.dnsmos
            values.update({f"dnsmos_{field}": getattr(scores, field) for field in DNSMOS_FIELDS})
        else:
            values[name] = getattr(result, name)
        if name == "word_error_rate":
            transcript = result.transcript
    return values, transcript, errors
