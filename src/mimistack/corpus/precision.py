"""What precision a tokenize-corpus run encoded in, and, for a reduced-precision run, how far its codes are from
exact fp32: the manifest's `precision` record.

`float32` without `--fast`, one file per encode call (the CPU default) is the exact path: its codes equal
`Codec.encode(load_audio(file))`. Anything else (`--dtype bfloat16`/`float16`, `--fast`, batching, another device)
rounds differently and can flip near-tied tokens, and on the residual chain one flipped level flips later ones.
For a reduced-precision torch run, `measure_agreement` re-encodes the first files of the folder's shards with the
same weights in strict float32, one file per call (on the run's device when this process has it, else the CPU),
and records the share of tokens that are equal, overall and per level.

Sits on `reader` (the rows as written), `workers` (`decode_file`: the same decoding as the run), `layout`,
`codec` and `engine.options`; used by `pipeline`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TypedDict

import numpy as np

from ..codec import Codec
from ..engine.options import EngineOptions, OnnxOptions, TorchOptions
from ..weights import WeightsRef
from .reader import open as open_corpus
from .workers import decode_file

logger = logging.getLogger(__name__)

DEFAULT_AGREEMENT_FILES = 8
PRECISION_REPORT = (
    "mimistack precision CLIPS --weights W -o report/ : per-level margins and each reduced-precision path against "
    "fp32 on your own clips (docs/analysis.md)"
)


class Agreement(TypedDict):
    """Codes of a run against strict float32 on the same files."""

    reference: str
    files: int
    audio_seconds: float
    tokens_equal: float
    level_0_equal: float
    per_level_equal: list[float]
    see: str
    """Where to look further: `mimistack precision` (margins per level, every reduced-precision path)."""


class Precision(TypedDict):
    engine: str
    device: str
    dtype: str
    fast: bool
    batch_seconds: float
    exact: bool
    """float32, the exact path, one file per call: codes equal `Codec.encode` on the same device."""
    agreement: Agreement | None
    """Measured for reduced-precision torch runs (None otherwise, or when nothing could be compared)."""


def describe(options: EngineOptions, batch_seconds: float) -> Precision:
    """The precision record of a run (`agreement` still to be measured)."""
    dtype: str = "float32"
    fast = False
    if isinstance(options, TorchOptions):
        dtype, fast = options.dtype, options.fast
    elif isinstance(options, OnnxOptions):
        dtype = f"onnx {options.variant}"
    exact = dtype in ("float32", "onnx fp32") and not fast and batch_seconds == 0
    return Precision(
        engine=options.name,
        device=options.device,
        dtype=dtype,
        fast=fast,
        batch_seconds=batch_seconds,
        exact=exact,
        agreement=None,
    )


def reduced(options: EngineOptions) -> bool:
    """Whether a run rounds below float32 (the runs whose manifests get a measured agreement)."""
    return isinstance(options, TorchOptions) and (options.dtype != "float32" or options.fast)


def measure_agreement(folder: Path, weights: WeightsRef | str, options: TorchOptions, files: int) -> Agreement | None:
    """Re-encode the first `files` rows of the folder in strict float32 (one file per call) and compare tokens."""
    device = options.device
    try:
        reference = Codec.load(weights, TorchOptions(device=device, dtype="float32"))
    except Exception as error:  # a driver without the run's device (a CPU head of a GPU cluster)
        logger.info("float32 reference on %s unavailable (%s); measuring on the CPU", device, error)
        device = "cpu"
        reference = Codec.load(weights, TorchOptions(device=device, dtype="float32"))
    equal = np.zeros(reference.config.num_levels, dtype=np.int64)
    frames, count, seconds = 0, 0, 0.0
    for record in open_corpus(folder):
        if count >= files:
            break
        pcm, reason = decode_file(record.source_path, reference.sample_rate)
        if pcm is None:
            logger.warning("agreement: %s no longer decodes (%s); skipped", record.source_path, reason)
            continue
        exact = reference.encode(pcm).codes
        codes = record.grid.codes
        if exact.shape != codes.shape:
            continue
        equal += (exact == codes).sum(axis=1)
        frames += codes.shape[1]
        count += 1
        seconds += record.grid.duration
    if not frames:
        return None
    per_level = equal / frames
    return Agreement(
        reference=f"torch float32 on {device}, one file per call",
        files=count,
        audio_seconds=round(seconds, 3),
        tokens_equal=round(float(per_level.mean()), 6),
        level_0_equal=round(float(per_level[0]), 6),
        per_level_equal=[round(float(v), 6) for v in per_level],
        see=PRECISION_REPORT,
    )
