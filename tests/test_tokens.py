from __future__ import annotations

import numpy as np
import pytest

from mimistack.tokens import TokenGrid, TokenGridError


def grid(frames: int = 4, samples: int | None = None) -> TokenGrid:
    codes = np.arange(32 * frames).reshape(32, frames) % 2048
    return TokenGrid(codes=codes, num_samples=frames * 1920 if samples is None else samples, weights_sha256="ab")


def test_grid_basics() -> None:
    g = grid(4, 4 * 1920 - 5)
    assert g.codes.dtype == np.uint16 and g.num_levels == 32 and g.num_frames == 4
    assert g.duration == pytest.approx((4 * 1920 - 5) / 24000)
    assert g.bitrate("0-7") == pytest.approx(1100)
    assert g.present.indices == tuple(range(32))
    with pytest.raises(ValueError):
        g.codes[0, 0] = 1  # read-only


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"codes": np.zeros((32, 3)), "num_samples": 1920}, "frames do not match", id="frames"),
        pytest.param({"codes": np.full((32, 1), 2048), "num_samples": 1920}, "0-2047", id="range"),
        pytest.param({"codes": np.zeros(5), "num_samples": 0}, "num_levels, T", id="ndim"),
        pytest.param({"codes": np.zeros((32, 1)), "num_samples": 1920, "levels_present": (40,)}, "out of range",
                     id="present"),
    ],
)
def test_invalid_grids(kwargs: dict, message: str) -> None:
    with pytest.raises(TokenGridError, match=message):
        TokenGrid(**kwargs)


def test_with_levels_marks_absent_levels() -> None:
    g = grid().with_levels("0-3")
    assert g.levels_present == (0, 1, 2, 3)
    assert not g.codes[4:].any()
    with pytest.raises(TokenGridError, match="not in this grid"):
        g.check_levels("0-7")
