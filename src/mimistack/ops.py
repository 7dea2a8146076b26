"""Level surgery on token grids: keep, drop, swap, replace, anonymize, splice and cut.

Surgery layer. Below it: `stats` (`LevelStats` and `level_stats`, re-exported here; the rule for combining grids,
`check_same_weights`, and `OpsError`), `tokens` (`TokenGrid`), `levels` (`Levels`) and `config`. Above it:
`cli.ops` (the `swap`, `anonymize`, `keep`, `splice` commands) and anything that decodes the results with `codec`.
Pure numpy: nothing here needs a model.

Mimi's decoder input is a sum of one term per level, so an edit on levels is an edit on that sum:

* **Dropping** a level removes its term. It is done by marking the row absent (`levels_present`), never by setting
  its codes to 0 — token 0 is a real centroid, and a zeroed row would add a real (wrong) term.
* **Swapping** (voice or style transfer) takes some levels from another utterance B: the semantic level 0 of A
  (what is said) with the acoustic levels 1-31 of B (who says it and how) is the classic split. Levels mixed from
  two utterances are outside what the decoder was trained on: expect artefacts, and judge by ear.

Different lengths (`LengthPolicy`, for `swap_levels`, `replace_levels` and `anonymize` with a voice):

* ``"loop"`` (the default of `swap_levels` and `anonymize`): the output has A's frames; B's frames are repeated
  from the start when B is shorter and trimmed when it is longer. B's local timing stays intact.
* ``"stretch"``: the output has A's frames; B is resampled in time by nearest frame, frame t of the output taking
  B's frame floor((t + 0.5) · T_B / T_A). B's whole trajectory is used, sped up or slowed down.
* ``"shortest"``: both are trimmed to the shorter one.
* ``"a"`` (the default of `replace_levels`): the output has A's frames, B is trimmed when longer, and a shorter B
  is an error — nothing is invented.

Provenance: every result carries `metadata["operation"]` (what was done, with its parameters) and
`metadata["inputs"]` (each input's weights sha256, frames, samples, levels and its own metadata, so edits of
edits keep their history). Token indices only mean something for the weights that produced them, so mixing grids
whose `weights_sha256` differ is refused unless `force=True`. `num_samples` stays the input's when the frame count
is unchanged, and becomes frames x 1920 when an edit changes the length (splice keeps the last part's tail).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args

import numpy as np
from numpy.typing import NDArray

from ._version import __version__
from .levels import Levels, LevelsLike, format_levels
from .stats import LevelStats, OpsError, check_same_weights, level_stats
from .tokens import TokenGrid

__all__ = [
    "LENGTH_POLICIES",
    "LengthPolicy",
    "LevelStats",
    "OpsError",
    "anonymize",
    "check_same_weights",
    "cut",
    "drop_levels",
    "keep_levels",
    "level_stats",
    "replace_levels",
    "splice",
    "swap_levels",
]

LengthPolicy = Literal["loop", "stretch", "shortest", "a"]
LENGTH_POLICIES: tuple[str, ...] = get_args(LengthPolicy)


# -- provenance -------------------------------------------------------------------------------------------------
def _describe_input(grid: TokenGrid) -> dict[str, Any]:
    return {
        "weights_sha256": grid.weights_sha256,
        "num_frames": grid.num_frames,
        "num_samples": grid.num_samples,
        "levels_present": format_levels(grid.levels_present or ()),
        "metadata": dict(grid.metadata),
    }


def _with_provenance(grid: TokenGrid, operation: str, inputs: Sequence[TokenGrid], **parameters: Any) -> TokenGrid:
    metadata = {
        "operation": {"name": operation, **parameters},
        "inputs": [_describe_input(g) for g in inputs],
        "mimistack_version": __version__,
    }
    return grid.replace(metadata=metadata)


def _num_samples_for(frames: int, reference: TokenGrid) -> int:
    """The reference's length when the frame count is unchanged, else whole frames."""
    return reference.num_samples if frames == reference.num_frames else frames * reference.frame_size


# -- keep / drop -------------------------------------------------------------------------------------------------
def keep_levels(grid: TokenGrid, levels: LevelsLike) -> TokenGrid:
    """Keep only `levels` (all must be present); the others are marked absent, so decoding leaves them out."""
    try:
        selected = grid.check_levels(levels)
    except ValueError as error:
        raise OpsError(f"cannot keep levels: {error}") from error
    return _with_provenance(grid.with_levels(selected), "keep", [grid], levels=str(selected))


def drop_levels(grid: TokenGrid, levels: LevelsLike) -> TokenGrid:
    """Remove `levels` (all must be present) from the grid: their terms leave the decoder's latent sum."""
    try:
        dropped = grid.check_levels(levels)
    except ValueError as error:
        raise OpsError(f"cannot drop levels: {error}") from error
    kept = [i for i in grid.present if i not in dropped]
    return _with_provenance(grid.with_levels(kept), "drop", [grid], levels=str(dropped))


# -- lengths -----------------------------------------------------------------------------------------------------
def _check_policy(length: str) -> None:
    if length not in LENGTH_POLICIES:
        raise OpsError(f"unknown length policy {length!r}; choose from {', '.join(LENGTH_POLICIES)}")


def _frame_index(source_frames: int, target_frames: int, length: str) -> NDArray[np.int64]:
    """Which source frame feeds each of `target_frames` output frames: int64 `[target_frames]`."""
    if target_frames == 0:
        return np.zeros(0, dtype=np.int64)
    if source_frames == 0:
        raise OpsError("the source grid has no frames to take levels from")
    steps = np.arange(target_frames, dtype=np.int64)
    if length == "stretch":
        return np.minimum((2 * steps + 1) * source_frames // (2 * target_frames), source_frames - 1)
    return steps % source_frames  # loop; for "a" and "shortest" the source is long enough, so this is identity


def _target_frames(a: TokenGrid, b: TokenGrid, length: str) -> int:
    if length == "shortest":
        return min(a.num_frames, b.num_frames)
    if length == "a" and b.num_frames < a.num_frames:
        raise OpsError(
            f"the source has {b.num_frames} frames, fewer than the {a.num_frames} of the grid it "
            "replaces levels in; choose a length policy: 'loop', 'stretch' or 'shortest'"
        )
    return a.num_frames


def _take_levels(a: TokenGrid, b: TokenGrid, levels: LevelsLike, length: str, force: bool) -> tuple[TokenGrid, Levels]:
    """A with `levels` taken from B, both fitted to the length policy; returns the grid and the levels taken."""
    _check_policy(length)
    weights = check_same_weights([a, b], force=force)
    try:
        taken = b.check_levels(levels)
    except ValueError as error:
        raise OpsError(f"the source grid lacks levels to take: {error}") from error
    frames = _target_frames(a, b, length)
    codes = np.array(a.codes[:, :frames])
    codes[list(taken)] = b.codes[list(taken)][:, _frame_index(b.num_frames, frames, length)]
    present = sorted(set(a.present) | set(taken))
    grid = TokenGrid(
        codes=codes,
        num_samples=_num_samples_for(frames, a),
        sample_rate=a.sample_rate,
        frame_rate=a.frame_rate,
        codebook_size=a.codebook_size,
        weights_sha256=weights or a.weights_sha256,
        levels_present=tuple(present),
    )
    return grid, taken


def replace_levels(
    grid: TokenGrid, levels: LevelsLike, source: TokenGrid, *, length: LengthPolicy = "a", force: bool = False
) -> TokenGrid:
    """`grid` with the rows of `levels` taken from `source` (see the module docstring for `length`).

    `levels` must be present in `source`; the result holds the grid's levels plus those. `force` allows grids from
    different weights.
    """
    result, taken = _take_levels(grid, source, levels, length, force)
    return _with_provenance(result, "replace", [grid, source], levels=str(taken), length=length)


def swap_levels(
    a: TokenGrid, b: TokenGrid, from_b: LevelsLike = "1-31", *, length: LengthPolicy = "loop", force: bool = False
) -> TokenGrid:
    """Voice/style transfer: levels `from_b` from B, every other level from A.

    The default takes A's semantic level 0 (the words) and B's acoustic levels 1-31 (the voice). The output has
    A's length unless `length="shortest"`; B is looped (default) or stretched to fit (see the module docstring).
    """
    result, taken = _take_levels(a, b, from_b, length, force)
    return _with_provenance(result, "swap", [a, b], levels_from_b=str(taken), length=length)


# -- anonymization -----------------------------------------------------------------------------------------------
def anonymize(
    grid: TokenGrid,
    levels: LevelsLike = "1-31",
    *,
    voice: TokenGrid | None = None,
    random: np.random.Generator | int | None = None,
    stats: LevelStats | None = None,
    length: LengthPolicy = "loop",
    force: bool = False,
) -> TokenGrid:
    """Replace the acoustic `levels` (default 1-31: who speaks, not what is said) so the speaker is harder to
    recognise.

    Exactly one source:

    * `voice`: a target speaker's grid; its levels are taken as in `swap_levels` (looped by default, see the module
      docstring for `length`).
    * `random`: a `numpy.random.Generator` or an int seed (recorded in the metadata). Each frame of each level gets
      a token drawn independently from that level's unigram distribution in `stats` (see `level_stats`), or, when
      `stats` is None, uniformly from the whole codebook. Draws are independent frame by frame (no temporal
      structure).

    The output keeps the grid's length; the levels it does not touch are unchanged.
    """
    if (voice is None) == (random is None):
        raise OpsError("anonymize needs exactly one source: voice=<TokenGrid> or random=<Generator or seed>")
    if voice is not None:
        if stats is not None:
            raise OpsError("stats only apply to random anonymization, not to a target voice")
        result, taken = _take_levels(grid, voice, levels, length, force)
        return _with_provenance(result, "anonymize", [grid, voice], levels=str(taken), source="voice", length=length)
    selected = Levels.parse(levels, grid.num_levels)
    seed = None
    if isinstance(random, (int, np.integer)) and not isinstance(random, bool):
        seed = int(random)
        random = np.random.default_rng(seed)
    if not isinstance(random, np.random.Generator):
        raise OpsError(f"random must be a numpy.random.Generator or an int seed, got {type(random).__name__}")
    probabilities = _draw_distribution(grid, selected, stats, force)
    codes = np.array(grid.codes)
    for level in selected:
        row = probabilities.get(level)
        codes[level] = (
            random.integers(0, grid.codebook_size, size=grid.num_frames)
            if row is None
            else random.choice(grid.codebook_size, size=grid.num_frames, p=row)
        )
    present = sorted(set(grid.present) | set(selected))
    result = grid.replace(codes=codes, levels_present=tuple(present))
    return _with_provenance(
        result,
        "anonymize",
        [grid],
        levels=str(selected),
        source="random",
        seed=seed,
        distribution="uniform" if stats is None else "level statistics",
        stats_grids=None if stats is None else stats.num_grids,
        stats_weights_sha256=None if stats is None else stats.weights_sha256,
    )


def _draw_distribution(
    grid: TokenGrid, levels: Levels, stats: LevelStats | None, force: bool
) -> dict[int, NDArray[np.float64]]:
    """Per level, the distribution to draw from (absent: uniform)."""
    if stats is None:
        return {}
    if stats.num_levels != grid.num_levels or stats.codebook_size != grid.codebook_size:
        raise OpsError(
            f"stats describe {stats.num_levels} levels x {stats.codebook_size} codes, the grid has "
            f"{grid.num_levels} x {grid.codebook_size}"
        )
    if stats.weights_sha256 and grid.weights_sha256 and stats.weights_sha256 != grid.weights_sha256 and not force:
        raise OpsError(
            f"stats come from weights {stats.weights_sha256[:12]}…, the grid from "
            f"{grid.weights_sha256[:12]}…; pass force=True (CLI: --mix-weights) to use them anyway"
        )
    empty = [level for level in levels if stats.tokens[level] == 0]
    if empty:
        raise OpsError(
            f"stats hold no tokens for level(s) {format_levels(empty)}; gather them from grids that have those levels"
        )
    probabilities = stats.probabilities
    return {level: probabilities[level] for level in levels}


# -- time --------------------------------------------------------------------------------------------------------
def splice(grids: Sequence[TokenGrid], *, force: bool = False) -> TokenGrid:
    """Concatenate grids in time, `[K, T1] + [K, T2] + … -> [K, ΣT]`.

    Every part but the last contributes whole frames (frames x 1920 samples); the last keeps its own tail, so
    `num_samples = 1920 · Σ_{i<n} T_i + num_samples_n`. All grids must hold the same levels (use `keep_levels`
    first) and come from the same weights (unless `force`).
    """
    grids = list(grids)
    weights = check_same_weights(grids, force=force)
    levels = {g.levels_present for g in grids}
    if len(levels) > 1:
        listed = "; ".join(f"grid {i}: {format_levels(g.levels_present or ())}" for i, g in enumerate(grids))
        raise OpsError(f"grids hold different levels ({listed}); keep the same levels in each before splicing")
    last = grids[-1]
    num_samples = sum(g.num_frames for g in grids[:-1]) * last.frame_size + last.num_samples
    codes = np.concatenate([g.codes for g in grids], axis=1)
    result = last.replace(codes=codes, num_samples=num_samples, weights_sha256=weights or last.weights_sha256)
    return _with_provenance(result, "splice", grids, parts=len(grids))


def cut(grid: TokenGrid, start_frame: int, end_frame: int | None = None) -> TokenGrid:
    """Frames `start_frame` to `end_frame` (exclusive; None: the end) of the grid, `[K, T] -> [K, end - start]`.

    A cut that reaches the end keeps the input's tail (num_samples − 1920 · start); any other cut holds whole
    frames.
    """
    end = grid.num_frames if end_frame is None else end_frame
    if not 0 <= start_frame < end <= grid.num_frames:
        raise OpsError(
            f"cannot cut frames {start_frame}-{end} from a grid of {grid.num_frames} frames: need "
            f"0 <= start < end <= {grid.num_frames}"
        )
    frames = end - start_frame
    num_samples = (
        grid.num_samples - start_frame * grid.frame_size if end == grid.num_frames else frames * grid.frame_size
    )
    result = grid.replace(codes=grid.codes[:, start_frame:end], num_samples=num_samples)
    return _with_provenance(result, "cut", [grid], start_frame=start_frame, end_frame=end)
