"""Tests for `mimistack.ops`: level surgery keeps lengths and provenance right, and its results decode."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mimistack import ops
from mimistack.audio import load_audio
from mimistack.codec import Codec
from mimistack.levels import latent_from_codes
from mimistack.ops import LevelStats, OpsError
from mimistack.tokens import TokenGrid

FRAME = 1920
SHA_A = "a" * 64
SHA_B = "b" * 64
Pair = tuple[TokenGrid, TokenGrid]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def crafted(
    frames: int,
    *,
    num_samples: int | None = None,
    weights: str = SHA_A,
    offset: int = 0,
    codebook_size: int = 2048,
    present: tuple[int, ...] | None = None,
) -> TokenGrid:
    """A grid whose token at (level, t) is offset + 50·level + t, so every token says where it came from."""
    levels = np.arange(32)[:, None]
    codes = (offset + 50 * levels + np.arange(frames)[None, :]) % codebook_size
    return TokenGrid(
        codes=codes,
        num_samples=frames * FRAME if num_samples is None else num_samples,
        codebook_size=codebook_size,
        weights_sha256=weights,
        levels_present=present,
        metadata={"source": f"crafted-{frames}"},
    )


@pytest.fixture(scope="module")
def speech_grids(tiny_codec: Codec, speech: list[Path]) -> Pair:
    """Two encoded speech clips of different lengths (1.5 s and 0.9 s, neither a whole number of frames)."""
    first = load_audio(speech[0])[:36_000]
    second = load_audio(speech[1])[:21_700]
    return tiny_codec.encode(first), tiny_codec.encode(second)


# -- keep / drop -------------------------------------------------------------------------------------------------
def test_keep_levels_marks_the_rest_absent_and_records_provenance() -> None:
    grid = crafted(5, num_samples=4 * FRAME + 11)
    kept = ops.keep_levels(grid, "0-7")
    assert kept.levels_present == tuple(range(8))
    assert np.array_equal(kept.codes[:8], grid.codes[:8])
    assert (kept.num_frames, kept.num_samples, kept.weights_sha256) == (5, 4 * FRAME + 11, SHA_A)
    assert kept.metadata["operation"] == {"name": "keep", "levels": "0-7"}
    (source,) = kept.metadata["inputs"]
    assert source["weights_sha256"] == SHA_A and source["levels_present"] == "0-31"
    assert source["metadata"] == {"source": "crafted-5"}


def test_drop_levels_keeps_the_others() -> None:
    dropped = ops.drop_levels(crafted(3), "1-31")
    assert dropped.levels_present == (0,)
    assert dropped.metadata["operation"]["name"] == "drop"
    twice = ops.drop_levels(ops.drop_levels(crafted(3), "8-31"), "4-7")
    assert twice.levels_present == (0, 1, 2, 3)
    assert twice.metadata["inputs"][0]["metadata"]["operation"] == {"name": "drop", "levels": "8-31"}


@pytest.mark.parametrize(
    ("operation", "levels", "message"),
    [
        pytest.param(ops.keep_levels, "40", "out of range", id="keep-out-of-range"),
        pytest.param(ops.drop_levels, "8-31", "not in this grid", id="drop-absent"),
        pytest.param(ops.keep_levels, "0-", "cannot parse", id="keep-unparsable"),
    ],
)
def test_keep_and_drop_refuse_bad_levels(operation: Callable[..., TokenGrid], levels: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        operation(crafted(3, present=tuple(range(8))), levels)


def test_dropping_is_not_zeroing(tiny_codec: Codec, speech_grids: Pair) -> None:
    grid, _ = speech_grids
    dropped = tiny_codec.decode(ops.drop_levels(grid, "8-31"))
    codes = np.array(grid.codes)
    codes[8:] = 0
    zeroed = tiny_codec.decode(grid.replace(codes=codes))
    assert dropped.shape == zeroed.shape == (grid.num_samples,)
    np.testing.assert_allclose(dropped, tiny_codec.decode(grid, "0-7"), atol=1e-6)
    # Token 0 is a real centroid: zeroed rows add 24 real (small, late-residual) terms to the latent.
    tables = tiny_codec.engine.tables
    dropped_latent = latent_from_codes(tables, grid.codes, "0-7")
    zeroed_latent = latent_from_codes(tables, codes, "all")
    assert np.linalg.norm(dropped_latent - zeroed_latent) > 0.01 * np.linalg.norm(dropped_latent)  # ~5% here
    # The random tiny decoder barely reacts to its input, but the difference is far above float noise (~1e-6).
    assert np.max(np.abs(dropped - zeroed)) > 2e-5


# -- swap / replace ----------------------------------------------------------------------------------------------
SWAP_CASES = [
    # (A frames, B frames, policy, expected output frames, B frame feeding each output frame)
    pytest.param(6, 3, "loop", [0, 1, 2, 0, 1, 2], id="loop-B-shorter"),
    pytest.param(3, 6, "loop", [0, 1, 2], id="loop-B-longer"),
    pytest.param(6, 3, "stretch", [0, 0, 1, 1, 2, 2], id="stretch-B-shorter"),
    pytest.param(3, 6, "stretch", [1, 3, 5], id="stretch-B-longer"),
    pytest.param(6, 3, "shortest", [0, 1, 2], id="shortest-B-shorter"),
    pytest.param(3, 6, "shortest", [0, 1, 2], id="shortest-B-longer"),
    pytest.param(3, 6, "a", [0, 1, 2], id="a-B-longer"),
    pytest.param(4, 4, "a", [0, 1, 2, 3], id="a-same-length"),
]


@pytest.mark.parametrize(("a_frames", "b_frames", "length", "b_index"), SWAP_CASES)
def test_swap_fits_lengths_by_policy(a_frames: int, b_frames: int, length: str, b_index: list[int]) -> None:
    a = crafted(a_frames, num_samples=(a_frames - 1) * FRAME + 5)
    b = crafted(b_frames, offset=1000)
    swapped = ops.swap_levels(a, b, "1-31", length=length)  # type: ignore[arg-type]
    frames = len(b_index)
    assert swapped.num_frames == frames
    assert swapped.num_samples == (a.num_samples if frames == a_frames else frames * FRAME)
    assert np.array_equal(swapped.codes[0], a.codes[0, :frames])
    assert np.array_equal(swapped.codes[1:], b.codes[1:][:, b_index])
    assert swapped.levels_present == tuple(range(32))
    assert swapped.metadata["operation"] == {"name": "swap", "levels_from_b": "1-31", "length": length}
    assert [i["num_frames"] for i in swapped.metadata["inputs"]] == [a_frames, b_frames]


def test_length_a_refuses_a_shorter_source_and_unknown_policies_are_refused() -> None:
    with pytest.raises(OpsError, match="choose a length policy"):
        ops.replace_levels(crafted(6), "1-31", crafted(3))
    with pytest.raises(OpsError, match="unknown length policy"):
        ops.swap_levels(crafted(3), crafted(3), length="wrap")  # type: ignore[arg-type]


def test_replace_levels_takes_only_the_named_levels() -> None:
    a, source = crafted(4), crafted(4, offset=1000)
    replaced = ops.replace_levels(a, "0,5", source)
    changed = [level for level in range(32) if not np.array_equal(replaced.codes[level], a.codes[level])]
    assert changed == [0, 5]
    assert np.array_equal(replaced.codes[[0, 5]], source.codes[[0, 5]])


def test_replace_adds_levels_the_grid_lacked_and_needs_them_in_the_source() -> None:
    a = crafted(4, present=(0,))
    replaced = ops.replace_levels(a, "1-3", crafted(4, offset=7))
    assert replaced.levels_present == (0, 1, 2, 3)
    with pytest.raises(OpsError, match="lacks levels"):
        ops.replace_levels(crafted(4), "1-3", a)


def test_grids_from_different_weights_are_refused_unless_forced() -> None:
    a, b = crafted(4), crafted(4, weights=SHA_B)
    with pytest.raises(OpsError, match="different weights"):
        ops.swap_levels(a, b)
    with pytest.raises(OpsError, match="different weights"):
        ops.splice([a, b])
    mixed = ops.swap_levels(a, b, force=True)
    assert mixed.weights_sha256 == SHA_A
    assert [i["weights_sha256"] for i in mixed.metadata["inputs"]] == [SHA_A, SHA_B]
    assert ops.swap_levels(a, crafted(4, weights="")).weights_sha256 == SHA_A  # unknown weights mix with any


def test_grids_from_different_configurations_are_refused_even_when_forced() -> None:
    with pytest.raises(OpsError, match="codebook_size"):
        ops.swap_levels(crafted(4), crafted(4, codebook_size=64), force=True)


def test_swapped_speech_decodes_at_the_policy_length(tiny_codec: Codec, speech_grids: Pair) -> None:
    a, b = speech_grids
    assert a.num_frames > b.num_frames
    for length in ("loop", "stretch"):
        pcm = tiny_codec.decode(ops.swap_levels(a, b, length=length))
        assert pcm.shape == (a.num_samples,) and np.isfinite(pcm).all()
    shortest = ops.swap_levels(a, b, length="shortest")
    assert tiny_codec.decode(shortest).shape == (b.num_frames * FRAME,)
    reversed_swap = ops.swap_levels(b, a)  # B longer than A: trimmed, A's exact length kept
    assert tiny_codec.decode(reversed_swap).shape == (b.num_samples,)


# -- statistics and anonymization --------------------------------------------------------------------------------
def test_level_stats_entropy_matches_a_hand_computed_value() -> None:
    codes = np.zeros((32, 4), dtype=np.uint16)
    codes[0] = [0, 0, 1, 2]  # p = 1/2, 1/4, 1/4 -> 1.5 bits
    codes[1] = [5, 5, 5, 5]  # one code -> 0 bits
    codes[2] = [1, 2, 3, 4]  # four equally likely codes -> 2 bits
    grid = TokenGrid(
        codes=codes, num_samples=4 * FRAME, codebook_size=8, weights_sha256=SHA_A, levels_present=(0, 1, 2)
    )
    stats = ops.level_stats([grid])
    assert stats.entropy_bits[0] == pytest.approx(1.5)
    assert stats.perplexity[0] == pytest.approx(2**1.5)
    assert stats.entropy_bits[1] == 0.0 and stats.perplexity[1] == 1.0
    assert stats.entropy_bits[2] == pytest.approx(2.0)
    assert list(stats.distinct_codes[:4]) == [3, 1, 4, 0]
    assert math.isnan(stats.entropy_bits[3])  # absent level: nothing counted
    assert stats.counts[0].tolist() == [2, 1, 1, 0, 0, 0, 0, 0]
    assert (stats.num_grids, stats.num_frames, stats.weights_sha256) == (1, 4, SHA_A)
    doubled = ops.level_stats([grid, grid])
    assert np.array_equal(doubled.counts, 2 * stats.counts)
    np.testing.assert_allclose(doubled.entropy_bits[:3], stats.entropy_bits[:3])


def test_anonymize_random_is_reproducible_and_leaves_level_zero() -> None:
    grid = crafted(40)
    first = ops.anonymize(grid, random=7)
    again = ops.anonymize(grid, random=np.random.default_rng(7))
    other = ops.anonymize(grid, random=8)
    assert np.array_equal(first.codes, again.codes)
    assert not np.array_equal(first.codes[1:], other.codes[1:])
    assert np.array_equal(first.codes[0], grid.codes[0])
    assert (first.num_frames, first.num_samples) == (grid.num_frames, grid.num_samples)
    assert first.metadata["operation"]["seed"] == 7
    assert first.metadata["operation"]["distribution"] == "uniform"
    assert len(np.unique(first.codes[1:])) > 500  # uniform over 2048 codes: ~1240 tokens hit many of them


def test_anonymize_random_draws_from_the_level_statistics() -> None:
    counts = np.zeros((32, 2048), dtype=np.int64)
    counts[:, 3] = 3
    counts[:, 9] = 1  # every level: token 3 with p = 0.75, token 9 with p = 0.25
    stats = LevelStats(counts=counts, num_grids=1, num_frames=4, weights_sha256=SHA_A)
    anonymized = ops.anonymize(crafted(2000), "1-31", random=1, stats=stats)
    drawn = anonymized.codes[1:]
    assert set(np.unique(drawn).tolist()) == {3, 9}
    assert np.mean(drawn == 3) == pytest.approx(0.75, abs=0.01)
    assert anonymized.metadata["operation"]["distribution"] == "level statistics"


def test_anonymize_refuses_unusable_statistics_and_sources() -> None:
    counts = np.zeros((32, 2048), dtype=np.int64)
    counts[0, 1] = 1
    stats = LevelStats(counts=counts, num_grids=1, num_frames=1, weights_sha256=SHA_A)
    with pytest.raises(OpsError, match="no tokens for level"):
        ops.anonymize(crafted(3), "1-31", random=0, stats=stats)
    foreign = LevelStats(counts=counts + 1, num_grids=1, num_frames=1, weights_sha256=SHA_B)
    with pytest.raises(OpsError, match="stats come from weights"):
        ops.anonymize(crafted(3), random=0, stats=foreign)
    with pytest.raises(OpsError, match="exactly one source"):
        ops.anonymize(crafted(3))
    with pytest.raises(OpsError, match="exactly one source"):
        ops.anonymize(crafted(3), voice=crafted(3), random=0)


def test_anonymize_with_a_voice_loops_it_to_length() -> None:
    grid, voice = crafted(5), crafted(2, offset=500)
    anonymized = ops.anonymize(grid, voice=voice)
    assert np.array_equal(anonymized.codes[1:], voice.codes[1:][:, [0, 1, 0, 1, 0]])
    assert anonymized.metadata["operation"]["source"] == "voice"


def test_anonymized_speech_decodes(tiny_codec: Codec, speech_grids: Pair) -> None:
    grid, other = speech_grids
    stats = ops.level_stats([other])
    pcm = tiny_codec.decode(ops.anonymize(grid, random=0, stats=stats))
    assert pcm.shape == (grid.num_samples,) and np.isfinite(pcm).all()


# -- splice / cut ------------------------------------------------------------------------------------------------
def test_splice_concatenates_and_keeps_the_last_tail() -> None:
    a, b = crafted(3, num_samples=2 * FRAME + 100), crafted(2, num_samples=FRAME + 7, offset=300)
    spliced = ops.splice([a, b])
    assert spliced.num_frames == 5
    assert spliced.num_samples == 3 * FRAME + FRAME + 7
    assert np.array_equal(spliced.codes, np.concatenate([a.codes, b.codes], axis=1))
    assert spliced.metadata["operation"] == {"name": "splice", "parts": 2}


def test_splice_refuses_different_levels() -> None:
    with pytest.raises(OpsError, match="different levels"):
        ops.splice([crafted(2), crafted(2, present=(0, 1))])


def test_cut_then_splice_gives_back_the_grid() -> None:
    grid = crafted(7, num_samples=6 * FRAME + 3)
    head, tail = ops.cut(grid, 0, 4), ops.cut(grid, 4)
    assert (head.num_frames, head.num_samples) == (4, 4 * FRAME)
    assert (tail.num_frames, tail.num_samples) == (3, 2 * FRAME + 3)
    rebuilt = ops.splice([head, tail])
    assert np.array_equal(rebuilt.codes, grid.codes) and rebuilt.num_samples == grid.num_samples
    assert rebuilt.metadata["inputs"][1]["metadata"]["operation"] == {"name": "cut", "start_frame": 4, "end_frame": 7}


@pytest.mark.parametrize(("start", "end"), [(3, 3), (-1, 2), (0, 8), (5, 2)])
def test_cut_refuses_bad_ranges(start: int, end: int) -> None:
    with pytest.raises(OpsError, match="cannot cut"):
        ops.cut(crafted(7), start, end)


def test_spliced_speech_decodes_its_first_part_unchanged(tiny_codec: Codec, speech_grids: Pair) -> None:
    a, b = speech_grids
    spliced = ops.splice([a, b])
    pcm = tiny_codec.decode(spliced)
    assert pcm.shape == (a.num_frames * FRAME + b.num_samples,)
    # The decoder is causal: what follows A cannot change how A's frames decode.
    np.testing.assert_allclose(pcm[: a.num_samples], tiny_codec.decode(a), atol=1e-5)


def test_provenance_survives_a_mimi_file(tmp_path: Path) -> None:
    swapped = ops.swap_levels(crafted(4), crafted(2, offset=9), length="stretch")
    loaded = TokenGrid.load(swapped.save(tmp_path / "swapped.mimi"))
    assert loaded == swapped
    assert loaded.metadata["operation"] == swapped.metadata["operation"]
    assert loaded.metadata["inputs"][1]["num_frames"] == 2
