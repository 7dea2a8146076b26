"""Token-level measures between two grids (`stats.token_agreement`, `stats.token_edit_distance`) and the
entropy-coded bitrate per level that `mimistack info` reports, each on known answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mimistack.cli import main
from mimistack.stats import OpsError, edit_distance, token_agreement, token_edit_distance
from mimistack.tokens import TokenGrid


def grid(codes: np.ndarray, codebook_size: int = 2048) -> TokenGrid:
    frames = codes.shape[1]
    return TokenGrid(
        codes=codes.astype(np.uint16),
        num_samples=frames * 1920,
        sample_rate=24_000,
        frame_rate=12.5,
        codebook_size=codebook_size,
    )


@pytest.mark.parametrize(
    ("x", "y", "distance"),
    [
        pytest.param([], [], 0, id="empty"),
        pytest.param([1, 2, 3], [], 3, id="all-deleted"),
        pytest.param([], [4, 5], 2, id="all-inserted"),
        pytest.param([1, 2, 3], [1, 2, 3], 0, id="equal"),
        pytest.param([1, 2, 3], [1, 9, 3], 1, id="substitution"),
        pytest.param([1, 2, 3, 4], [0, 1, 2, 3, 4], 1, id="insertion"),
        pytest.param([5, 1, 2, 3], [1, 2, 3], 1, id="deletion"),
        pytest.param(list(b"kitten"), list(b"sitting"), 3, id="kitten-sitting"),
        pytest.param(list(b"flaw"), list(b"lawn"), 2, id="flaw-lawn"),
    ],
)
def test_edit_distance_known_answers(x: list[int], y: list[int], distance: int) -> None:
    assert edit_distance(np.array(x, dtype=np.int64), np.array(y, dtype=np.int64)) == distance


def test_edit_distance_matches_the_textbook_recursion_on_random_rows() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        x, y = rng.integers(0, 4, rng.integers(0, 12)), rng.integers(0, 4, rng.integers(0, 12))
        table = np.zeros((len(x) + 1, len(y) + 1), dtype=int)
        table[:, 0], table[0, :] = np.arange(len(x) + 1), np.arange(len(y) + 1)
        for i in range(1, len(x) + 1):
            for j in range(1, len(y) + 1):
                table[i, j] = min(
                    table[i - 1, j] + 1, table[i, j - 1] + 1, table[i - 1, j - 1] + int(x[i - 1] != y[j - 1])
                )
        assert edit_distance(x, y) == table[-1, -1]


def test_a_shift_ruins_agreement_but_costs_one_edit() -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 2048, size=(32, 20))
    shifted = codes.copy()
    shifted[5] = np.concatenate([[7], codes[5, :-1]])  # one token inserted at the front of level 5, the last dropped
    shifted[9, 3] = (codes[9, 3] + 1) % 2048  # one substitution in level 9
    a, b = grid(codes), grid(shifted)
    agreement, distance = token_agreement(a, b), token_edit_distance(a, b)
    assert agreement[0] == 1.0 and distance[0] == 0.0
    assert agreement[9] == pytest.approx(19 / 20) and distance[9] == pytest.approx(1 / 20)
    assert agreement[5] < 0.2 and distance[5] == pytest.approx(2 / 20)  # insert + delete
    assert set(token_agreement(a, b.with_levels("0-7"))) == set(range(8))  # only the levels both hold


def test_grids_of_different_lengths_and_shapes() -> None:
    codes = np.arange(32 * 10).reshape(32, 10) % 2048
    longer = grid(np.concatenate([codes, codes[:, :5]], axis=1))
    assert token_agreement(grid(codes), longer)[0] == pytest.approx(10 / 15)
    assert token_edit_distance(grid(codes), longer)[0] == pytest.approx(5 / 15)
    with pytest.raises(OpsError, match="cannot be compared"):
        token_agreement(grid(codes), grid(codes % 64, codebook_size=64))


def test_info_reports_the_entropy_coded_bitrate_per_level(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 2048, size=(32, 125))
    codes[1] = 7  # one constant level: almost free to code
    path = grid(codes).save(tmp_path / "x.mimi")
    assert main(["info", str(path), "--json"]) == 0
    needed = {int(k): v for k, v in json.loads(capsys.readouterr().out)["entropy_coded_bitrate"].items()}
    assert set(needed) == set(range(32))
    assert needed[1] < 10  # 125 equal tokens
    assert all(130 < needed[level] < 160 for level in (0, *range(2, 32)))  # random tokens: about 11 bits each
    assert main(["info", str(path)]) == 0
    text = capsys.readouterr().out
    assert "entropy-coded bit/s" in text and "nominal 137.5 bit/s" in text
