"""The CLI, in process: exit codes, messages, refusal to overwrite, no partial files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from mimistack.cli import main
from mimistack.tokens import TokenGrid


@pytest.fixture()
def weights(tiny_checkpoint: Path) -> list[str]:
    return ["--weights", str(tiny_checkpoint)]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_encode_info_decode_round_trip(
    tmp_path: Path, speech: list[Path], weights: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = tmp_path / "a.mimi"
    code, out, _ = run(capsys, "encode", str(speech[0]), "-o", str(tokens), *weights, "-q")
    assert code == 0 and "32 levels" in out
    grid = TokenGrid.load(tokens)
    assert grid.num_levels == 32 and grid.num_samples == soundfile.info(str(speech[0])).frames

    code, out, _ = run(capsys, "info", str(tokens))
    assert code == 0 and "levels present: 0-31 of 32" in out
    level_rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0].isdigit()]
    # level, bytes, bit/s, cumulative, entropy-coded bit/s
    assert [int(row[0]) for row in level_rows if len(row) == 5] == list(range(32))
    code, out, _ = run(capsys, "info", str(tokens), "--json")
    assert json.loads(out)["num_frames"] == grid.num_frames

    wav = tmp_path / "a.wav"
    code, out, err = run(capsys, "decode", str(tokens), "-o", str(wav), "--levels", "0,3,9", *weights, "-q")
    assert code == 0 and "experimental" in err
    decoded, rate = soundfile.read(str(wav), dtype="float32")
    assert rate == 24000 and len(decoded) == grid.num_samples


def test_refuses_to_overwrite_without_force(
    tmp_path: Path, speech: list[Path], weights: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "a.mimi"
    target.write_bytes(b"precious")
    code, _, err = run(capsys, "encode", str(speech[0]), "-o", str(target), *weights, "-q")
    assert code == 2 and "--force" in err and target.read_bytes() == b"precious"
    code, _, _ = run(capsys, "encode", str(speech[0]), "-o", str(target), *weights, "-q", "--force")
    assert code == 0 and TokenGrid.load(target).num_levels == 32


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(lambda p: p.write_text("hello, not audio"), "not a readable audio file", id="text"),
        pytest.param(
            lambda p: p.write_bytes(np.random.default_rng(0).bytes(5000)), "not a readable audio", id="random-bytes"
        ),
        pytest.param(lambda p: soundfile.write(str(p), np.zeros(0, dtype=np.float32), 24000), "no", id="empty"),
        pytest.param(
            lambda p: soundfile.write(str(p), np.array([0.1, np.nan] * 100, dtype=np.float32), 24000, subtype="FLOAT"),
            "NaN",
            id="nan",
        ),
    ],
)
def test_bad_audio_gets_a_clear_error_and_no_output(
    tmp_path: Path, weights: list[str], make, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.wav"
    make(source)
    target = tmp_path / "out.mimi"
    code, _, err = run(capsys, "encode", str(source), "-o", str(target), *weights, "-q")
    assert code == 2 and message in err
    assert list(tmp_path.iterdir()) == [source]  # nothing written, not even a temporary file


def test_missing_input_and_bad_levels(
    tmp_path: Path, weights: list[str], speech: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "encode", str(tmp_path / "nope.wav"), "-o", str(tmp_path / "x.mimi"), *weights)
    assert code == 2 and "not found" in err
    tokens = tmp_path / "a.mimi"
    assert run(capsys, "encode", str(speech[0]), "-o", str(tokens), *weights, "-q")[0] == 0
    code, _, err = run(capsys, "decode", str(tokens), "-o", str(tmp_path / "x.wav"), "--levels", "0-40", *weights)
    assert code == 2 and "out of range" in err and not (tmp_path / "x.wav").exists()


def test_truncated_file_decodes_the_levels_it_holds(
    tmp_path: Path, speech: list[Path], weights: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    tokens, small = tmp_path / "a.mimi", tmp_path / "small.mimi"
    assert run(capsys, "encode", str(speech[1]), "-o", str(tokens), *weights, "-q")[0] == 0
    assert run(capsys, "truncate", str(tokens), "--levels", "0-7", "-o", str(small))[0] == 0
    assert TokenGrid.load(small).levels_present == tuple(range(8))
    code, _, err = run(capsys, "decode", str(small), "-o", str(tmp_path / "x.wav"), "--levels", "0-9", *weights)
    assert code == 2 and "not in this grid" in err
    code, out, _ = run(capsys, "decode", str(small), "-o", str(tmp_path / "y.wav"), *weights, "-q")
    assert code == 0 and f"levels 0-7 ({TokenGrid.load(small).bitrate('0-7'):.0f} bit/s)" in out


def test_roundtrip_and_demo(
    tmp_path: Path, speech: list[Path], weights: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, _ = run(
        capsys, "roundtrip", str(speech[2]), "-o", str(tmp_path / "r.wav"), "--levels", "0-7", *weights, "-q"
    )
    assert code == 0 and soundfile.info(str(tmp_path / "r.wav")).frames == soundfile.info(str(speech[2])).frames
    demo = tmp_path / "demo"
    code, _, _ = run(capsys, "demo", str(speech[2]), "-o", str(demo), *weights, "-q")
    assert code == 0
    summary = json.loads((demo / "summary.json").read_text())
    assert [row["levels"] for row in summary["outputs"]] == ["0", "0-7", "0-31"]
    per_level = TokenGrid.load(demo / "tokens.mimi").bitrate("0")
    assert [row["bitrate_bps"] for row in summary["outputs"]] == [per_level, 8 * per_level, 32 * per_level]
    for row in summary["outputs"]:
        assert soundfile.info(str(demo / row["file"])).samplerate == 24000
    code, _, err = run(capsys, "demo", str(speech[2]), "-o", str(demo), *weights, "-q")
    assert code == 2 and "not empty" in err


def test_random_weights_say_so_loudly(tmp_path: Path, speech: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "demo", str(speech[2]), "-o", str(tmp_path / "d"), "--weights", "random-tiny", "-q")
    assert code == 0 and "RANDOM weights" in err and "meaningless" in out
