"""Per-level unigram token statistics over a set of grids: codebook usage, entropy and perplexity (`LevelStats`),
the rule for which grids may be pooled or combined at all (`check_same_weights`), and the token-level comparison
of two grids (`token_agreement`, `token_edit_distance`).

Sits on `tokens` (`TokenGrid`) and `errors`; below both users of the statistics: `ops` (random anonymization draws
from them, and its surgery applies the same pooling rule) and `analysis` (the `mimistack stats` report). Both
re-export what they hand out (`ops.LevelStats`, `ops.level_stats`, `analysis.level_stats`). Pure numpy.

`OpsError` is defined here rather than in `ops` because the pooling rule raises it for statistics and surgery
alike; `ops` re-exports it and raises it for every other surgery request too.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from .errors import MimistackError
from .tokens import TokenGrid

logger = logging.getLogger(__name__)

__all__ = [
    "LevelStats",
    "OpsError",
    "check_same_weights",
    "edit_distance",
    "level_stats",
    "token_agreement",
    "token_edit_distance",
]


class OpsError(MimistackError, ValueError):
    """A surgery request that cannot be carried out (incompatible grids, missing levels, bad lengths)."""


def check_same_weights(grids: Sequence[TokenGrid], *, force: bool = False) -> str:
    """Make sure `grids` can be combined; returns the weights sha256 they share ("" when none is known).

    Shapes that cannot be combined (level count, codebook size, sample or frame rate) are always refused. Grids
    from different weights are refused unless `force`: the same token index names a different centroid in each
    model. A grid with no recorded weights (`weights_sha256 == ""`) is compatible with any.
    """
    if not grids:
        raise OpsError("no grids given")
    first = grids[0]
    for index, grid in enumerate(grids[1:], start=1):
        for name in ("num_levels", "codebook_size", "sample_rate", "frame_rate"):
            if getattr(grid, name) != getattr(first, name):
                raise OpsError(
                    f"grid {index} has {name} {getattr(grid, name)}, grid 0 has {getattr(first, name)}: "
                    "they come from different model configurations and cannot be combined"
                )
    known = list(dict.fromkeys(g.weights_sha256 for g in grids if g.weights_sha256))
    if len(known) > 1:
        listed = ", ".join(f"{sha[:12]}…" for sha in known)
        if not force:
            raise OpsError(
                f"grids come from different weights ({listed}); a token index names a different "
                "centroid in each model, so mixing them decodes to garbage. Re-encode with one model, "
                "or pass force=True (CLI: --mix-weights) to mix them anyway"
            )
        logger.warning("mixing grids from different weights (%s) because force=True", listed)
    return known[0] if known else ""


@dataclasses.dataclass(frozen=True, eq=False)
class LevelStats:
    """Per-level unigram token statistics over a set of grids.

    `counts`: int64 `[num_levels, codebook_size]`, how often each token occurs in each level (only levels present
    in a grid are counted); `num_grids` and `num_frames` (total over the grids); `weights_sha256` of the model that
    produced the tokens ("" if unknown).
    """

    counts: NDArray[np.int64]
    num_grids: int
    num_frames: int
    weights_sha256: str = ""

    def __post_init__(self) -> None:
        counts = np.asarray(self.counts, dtype=np.int64)
        if counts.ndim != 2 or (counts.size and counts.min() < 0):
            raise OpsError(f"counts must be non-negative [num_levels, codebook_size], got shape {counts.shape}")
        counts = counts.copy()
        counts.setflags(write=False)
        object.__setattr__(self, "counts", counts)

    @property
    def num_levels(self) -> int:
        return int(self.counts.shape[0])

    @property
    def codebook_size(self) -> int:
        return int(self.counts.shape[1])

    @property
    def tokens(self) -> NDArray[np.int64]:
        """Tokens counted per level: int64 `[num_levels]`."""
        tokens: NDArray[np.int64] = self.counts.sum(axis=1)
        return tokens

    @property
    def distinct_codes(self) -> NDArray[np.int64]:
        """How many codebook entries were used at least once, per level: int64 `[num_levels]`."""
        distinct: NDArray[np.int64] = (self.counts > 0).sum(axis=1)
        return distinct

    @property
    def probabilities(self) -> NDArray[np.float64]:
        """Unigram distribution per level: float64 `[num_levels, codebook_size]`; rows of uncounted levels are 0."""
        totals = self.tokens[:, None].astype(np.float64)
        return np.divide(self.counts, totals, out=np.zeros(self.counts.shape), where=totals > 0)

    @property
    def entropy_bits(self) -> NDArray[np.float64]:
        """Shannon entropy of each level's unigram distribution in bits: float64 `[num_levels]` (NaN if uncounted).

        At most log2(codebook_size) = 11 bits for Mimi; lower means the level's tokens are more predictable (and
        entropy coding could store them in fewer bits).
        """
        p = self.probabilities
        terms = np.zeros_like(p)
        np.multiply(p, np.log2(p, out=np.zeros_like(p), where=p > 0), out=terms, where=p > 0)
        entropy = -terms.sum(axis=1)
        return np.where(self.tokens > 0, entropy, np.nan)

    @property
    def perplexity(self) -> NDArray[np.float64]:
        """2 ** entropy: the effective number of equally likely codes per level, float64 `[num_levels]`."""
        return np.exp2(self.entropy_bits)

    @classmethod
    def from_grids(cls, grids: Sequence[TokenGrid], *, force: bool = False) -> LevelStats:
        """Count tokens over `grids` (refuses grids from different weights unless `force`)."""
        grids = list(grids)
        weights = check_same_weights(grids, force=force)
        counts = np.zeros((grids[0].num_levels, grids[0].codebook_size), dtype=np.int64)
        for grid in grids:
            for level in grid.present:
                counts[level] += np.bincount(grid.codes[level], minlength=grid.codebook_size)
        return cls(
            counts=counts,
            num_grids=len(grids),
            num_frames=sum(g.num_frames for g in grids),
            weights_sha256=weights,
        )


def level_stats(grids: Sequence[TokenGrid], *, force: bool = False) -> LevelStats:
    """Per-level codebook usage, entropy and perplexity over `grids` (see `LevelStats`)."""
    return LevelStats.from_grids(grids, force=force)


# -- token-level comparison of two grids ---------------------------------------------------------------------------
def _shared_levels(a: TokenGrid, b: TokenGrid) -> tuple[int, ...]:
    if a.num_levels != b.num_levels or a.codebook_size != b.codebook_size:
        raise OpsError(
            f"grids of {a.num_levels} levels x {a.codebook_size} entries and {b.num_levels} x {b.codebook_size} "
            "cannot be compared token by token"
        )
    return tuple(sorted(set(a.present) & set(b.present)))


def token_agreement(a: TokenGrid, b: TokenGrid) -> dict[int, float]:
    """Per level present in both grids: the fraction of frames whose tokens are equal, frame t against frame t.

    Frames one grid has and the other lacks count as disagreements (so grids of different lengths agree < 1)."""
    out = {}
    for level in _shared_levels(a, b):
        frames = max(a.num_frames, b.num_frames)
        common = min(a.num_frames, b.num_frames)
        same = int(np.count_nonzero(a.codes[level, :common] == b.codes[level, :common]))
        out[level] = same / frames if frames else 1.0
    return out


def edit_distance(x: NDArray[np.integer], y: NDArray[np.integer]) -> int:
    """Levenshtein distance between two token sequences (insertions, deletions and substitutions cost 1).

    One numpy pass per token of `x`: the insertion chain along a row is a running minimum of `row - j` (+ j)."""
    n = int(y.shape[0])
    index = np.arange(n + 1)
    previous = index.copy()
    for i, token in enumerate(x, start=1):
        substitution = previous[:-1] + (y != token)
        best = np.empty(n + 1, dtype=np.int64)
        best[0] = i
        best[1:] = np.minimum(previous[1:] + 1, substitution)
        previous = np.minimum.accumulate(best - index) + index
    return int(previous[-1])


def token_edit_distance(a: TokenGrid, b: TokenGrid) -> dict[int, float]:
    """Per level present in both grids: the Levenshtein distance between the two token rows, divided by the longer
    row's length (0: identical; a token inserted or dropped costs 1, not a shift of everything after it, which is
    what `token_agreement` would count)."""
    out = {}
    for level in _shared_levels(a, b):
        longest = max(a.num_frames, b.num_frames)
        distance = edit_distance(a.codes[level].astype(np.int64), b.codes[level].astype(np.int64))
        out[level] = distance / longest if longest else 0.0
    return out
