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
        pytest.param(
            {"codes": np.zeros((32, 1)), "num_samples": 1920, "levels_present": (40,)}, "out of range", id="present"
        ),
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


def test_token_grid_errors_are_mimistack_errors() -> None:
    from mimistack.errors import MimistackError

    assert issubclass(TokenGridError, MimistackError) and issubclass(TokenGridError, ValueError)


def test_records_convert_both_ways_and_files_keep_the_version(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mimistack import mimifile

    g = grid(3).replace(metadata={"k": "v"}).with_levels("0-9")
    record = g.to_record()
    assert isinstance(record, mimifile.MimiRecord) and record.levels_present == tuple(range(10))
    assert TokenGrid.from_record(record) == g and TokenGrid.from_record(record).metadata == {"k": "v"}
    for version in (1, 2):
        path = g.save(tmp_path / f"v{version}.mimi", version=version)
        assert TokenGrid.load(path) == g and mimifile.describe(path).version == version


def test_mimifile_sits_on_config_levels_errors_and_files_only() -> None:
    """The layer order: `tokens` sits on `mimifile`, never the other way round (no import, not even in a function)."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    import mimistack.mimifile

    allowed = {"config", "levels", "errors", "_files"}
    for source in Path(mimistack.mimifile.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 2:  # from ..x import y: the mimistack package
                assert node.module in allowed, (source.name, node.module)
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            for name in names:
                assert not name.startswith("mimistack") or name.split(".")[1] in allowed, (source.name, name)
    code = "import sys, mimistack.mimifile; assert 'mimistack.tokens' not in sys.modules, sorted(sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60).returncode == 0
