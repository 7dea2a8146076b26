"""Comparing two tokenizations of the same audio, and why they differ: per-level agreement, the first differing
level of each frame, the quantizer's nearest-centroid margins (how close each choice was to a tie), and the
relative L2 / SNR between two decodings.

Shared by `parity` (implementations against a reference) and `precision` (reduced-precision paths against exact
fp32). Sits on `levels` (`CodebookTables`) and numpy; `ReferenceEncoder` runs `mimistack.torch`'s fp32 encoder,
imported when made. Codes are integer `[K, T]` (K levels, T frames); a pair is compared on the frames both have.

**Margins.** At each level the quantizer picks the centroid nearest to the residual left by the levels before it.
The relative margin of a choice is `(d2 - d1) / d1`, with `d1` and `d2` the Euclidean distances to the nearest
and second-nearest centroids; a margin near 0 is a near-tie, which any change of float rounding can flip. The
margin of a *first difference* (a frame where two tokenizations first part at level `l`) is `|d(b) - d(a)| / d(a)`
for the two tokens `a` (reference) and `b` (other) at that level, measured on the reference's residual: small
values mean the disagreement is a rounding flip of a near-tie, large ones a real difference of computation.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import MimistackError
from ..levels import CodebookTables

MAX_SNR_DB = 200.0
"""SNR is capped here, so identical decodings give a large finite number, not inf."""


class ComparisonError(MimistackError, ValueError):
    """Two tokenizations or decodings that cannot be compared (different level counts, no frames)."""


def _pair(reference: NDArray[Any], other: NDArray[Any]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    if reference.ndim != 2 or other.ndim != 2:
        raise ComparisonError(f"codes must be [K, T], got shapes {reference.shape} and {other.shape}")
    if reference.shape[0] != other.shape[0]:
        raise ComparisonError(f"codes have {reference.shape[0]} and {other.shape[0]} levels: not comparable")
    frames = min(reference.shape[1], other.shape[1])
    if frames == 0:
        raise ComparisonError("no frames to compare")
    return reference[:, :frames].astype(np.int64), other[:, :frames].astype(np.int64)


def level_agreement(reference: NDArray[Any], other: NDArray[Any]) -> NDArray[np.float64]:
    """The fraction of frames on which `other` has the reference's token, per level: float `[K]`."""
    a, b = _pair(reference, other)
    return np.asarray((a == b).mean(axis=1), dtype=np.float64)


def first_differences(reference: NDArray[Any], other: NDArray[Any]) -> NDArray[np.int64]:
    """Per frame, the lowest level whose token differs (-1 where every level agrees): int `[T]`."""
    a, b = _pair(reference, other)
    differ = a != b
    first = np.argmax(differ, axis=0)
    return np.where(differ.any(axis=0), first, -1).astype(np.int64)


def quantizer_distances(
    tables: CodebookTables, latent: NDArray[np.floating[Any]], codes: NDArray[Any]
) -> NDArray[np.float32]:
    """Euclidean distances from each level's residual to every centroid, along the path `codes` takes.

    `latent`: the encoder's float `[dimension, T]` (the quantizer's input); `codes`: `[K, T]`, whose tokens are
    subtracted to form the next acoustic residual (the semantic level quantizes the latent on its own, as in
    Mimi's split quantizer). Returns float32 `[K, T, codebook_size]`."""
    if latent.ndim != 2 or latent.shape[0] != tables.dimension:
        raise ComparisonError(f"latent must be [{tables.dimension}, T], got shape {latent.shape}")
    frames = min(latent.shape[1], codes.shape[1])
    x = np.asarray(latent[:, :frames], dtype=np.float32).T
    chosen = codes[:, :frames].astype(np.int64)
    out = np.empty((tables.num_levels, frames, tables.codebook_size), dtype=np.float32)
    level = 0
    for books, proj in (
        (tables.semantic_codebooks, tables.semantic_input_proj),
        (tables.acoustic_codebooks, tables.acoustic_input_proj),
    ):
        residual = x @ proj.T
        for book in books:
            squared = (residual**2).sum(1, keepdims=True) - 2 * residual @ book.T + (book**2).sum(1)[None]
            out[level] = np.sqrt(np.maximum(squared, 0.0))
            residual = residual - book[chosen[level]]
            level += 1
    return out


def nearest_margins(distances: NDArray[np.float32]) -> NDArray[np.float64]:
    """Relative margin `(d2 - d1) / d1` of the nearest centroid at each level and frame: float `[K, T]`."""
    two = np.partition(distances, 1, axis=-1)[..., :2].astype(np.float64)
    return np.asarray((two[..., 1] - two[..., 0]) / np.maximum(two[..., 0], 1e-12), dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class FirstDifference:
    """One frame where two tokenizations part: the frame, the level, and the two tokens' relative margin."""

    frame: int
    level: int
    margin: float


def first_difference_margins(
    distances: NDArray[np.float32], reference: NDArray[Any], other: NDArray[Any]
) -> list[FirstDifference]:
    """For each frame that differs, the first differing level and `|d(other) - d(reference)| / d(reference)` there
    (distances from `quantizer_distances` along the reference's path)."""
    a, b = _pair(reference, other)
    first = first_differences(a, b)
    found = []
    for frame in np.flatnonzero(first >= 0):
        level = int(first[frame])
        if frame >= distances.shape[1]:
            continue
        d_ref = float(distances[level, frame, a[level, frame]])
        d_other = float(distances[level, frame, b[level, frame]])
        found.append(FirstDifference(int(frame), level, abs(d_other - d_ref) / max(d_ref, 1e-12)))
    return found


def add_audio_error(
    errors: dict[int, float],
    energies: dict[int, float],
    count: int,
    reference: NDArray[np.floating[Any]],
    decoded: NDArray[np.floating[Any]],
) -> None:
    """Accumulate one clip's squared error and energy at `count` levels (an energy-weighted rel L2 over clips)."""
    relative, _ = audio_difference(reference, decoded)
    energy = float(np.sum(np.asarray(reference, dtype=np.float64) ** 2))
    errors[count] = errors.get(count, 0.0) + relative**2 * energy
    energies[count] = energies.get(count, 0.0) + energy


def weights_line(sha256: str, is_random: bool, source: str) -> str:
    """A report's first line: the weights' sha256, and plainly whether they are random."""
    if is_random:
        return f"RANDOM WEIGHTS (sha256 {sha256}): these numbers say nothing about the trained Mimi."
    return f"Weights sha256 {sha256} ({source})."


def audio_difference(reference: NDArray[np.floating[Any]], other: NDArray[np.floating[Any]]) -> tuple[float, float]:
    """(relative L2 `||other - reference|| / ||reference||`, SNR in dB capped at 200) on the common length."""
    length = min(len(reference), len(other))
    if length == 0:
        raise ComparisonError("no samples to compare")
    a = np.asarray(reference[:length], dtype=np.float64)
    b = np.asarray(other[:length], dtype=np.float64)
    signal = float(np.linalg.norm(a))
    error = float(np.linalg.norm(b - a))
    if signal == 0.0:
        return (0.0 if error == 0.0 else float("inf")), (MAX_SNR_DB if error == 0.0 else -MAX_SNR_DB)
    relative = error / signal
    snr = MAX_SNR_DB if relative == 0.0 else min(MAX_SNR_DB, -20.0 * float(np.log10(relative)))
    return relative, snr


class ReferenceEncoder:
    """The fp32 encoder of `mimistack.torch` on the CPU, for the latent (the quantizer's input) that margins are
    measured on. Needs torch; the model is built once and reused for every clip."""

    def __init__(self, tensors: dict[str, NDArray[np.float32]], config: Any) -> None:
        import torch

        from ..torch.mimi import MimiModel

        self._torch = torch
        self._model = MimiModel(config)
        self._model.load_state_dict({key: torch.from_numpy(value) for key, value in tensors.items()})
        self._model.eval()

    def latent(self, pcm: NDArray[np.float32]) -> NDArray[np.float32]:
        """pcm `[N * frame_size]` -> latent float32 `[dimension, N]` (batch mode, one pass)."""
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(pcm, dtype=np.float32))[None, None]
            latent, _ = self._model.encode_latent(x)
        out: NDArray[np.float32] = latent[0].float().numpy()
        return out


def summarize_margins(values: NDArray[np.float64] | list[float]) -> dict[str, float | int | None]:
    """count, median, 10th/90th percentile, min, max and the share under 1e-3 (near-ties) of margins."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        return {"count": 0, "median": None, "p10": None, "p90": None, "min": None, "max": None, "below_1e-3": None}
    return {
        "count": int(array.size),
        "median": float(np.median(array)),
        "p10": float(np.percentile(array, 10)),
        "p90": float(np.percentile(array, 90)),
        "min": float(array.min()),
        "max": float(array.max()),
        "below_1e-3": float((array < 1e-3).mean()),
    }
