"""Tests for `mimistack.cli_ops`, run in-process: exit codes, messages and the files the commands write."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from mimistack.audio import load_audio, save_audio
from mimistack.cli import main
from mimistack.tokens import TokenGrid

FRAME = 1920


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, speech: list[Path], tiny_checkpoint: Path) -> dict[str, Path]:
    """Two short clips of different lengths, their .mimi files (tiny random weights), and a foreign .mimi."""
    folder = tmp_path_factory.mktemp("cli-ops")
    paths = {"a_wav": folder / "a.wav", "b_wav": folder / "b.wav"}
    save_audio(paths["a_wav"], load_audio(speech[0])[:30_000])  # 16 frames
    save_audio(paths["b_wav"], load_audio(speech[1])[:20_000])  # 11 frames
    for name in ("a", "b"):
        paths[name] = folder / f"{name}.mimi"
        assert (
            main(["encode", str(paths[f"{name}_wav"]), "-o", str(paths[name]), "--weights", str(tiny_checkpoint), "-q"])
            == 0
        )
    foreign = TokenGrid.load(paths["b"]).replace(weights_sha256="f" * 64)
    paths["foreign"] = foreign.save(folder / "foreign.mimi")
    return paths


def run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def weights(checkpoint: Path) -> list[str]:
    return ["--weights", str(checkpoint), "-q"]


# -- surgery -----------------------------------------------------------------------------------------------------
def test_swap_to_wav_has_a_length(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    code, out, err = run(
        capsys,
        "swap",
        files["a"],
        files["b"],
        "-o",
        tmp_path / "s.wav",
        "--length",
        "stretch",
        *weights(tiny_checkpoint),
    )
    assert code == 0, err
    assert "length: stretch" in out
    assert load_audio(tmp_path / "s.wav").shape == (30_000,)


def test_swap_audio_inputs_to_mimi_with_the_shortest_length(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    code, _, err = run(
        capsys,
        "swap",
        files["a_wav"],
        files["b_wav"],
        "-o",
        tmp_path / "s.mimi",
        "--from-b",
        "4-31",
        "--length",
        "shortest",
        *weights(tiny_checkpoint),
    )
    assert code == 0, err
    swapped, a, b = (TokenGrid.load(p) for p in (tmp_path / "s.mimi", files["a"], files["b"]))
    assert swapped.num_frames == b.num_frames == 11
    assert np.array_equal(swapped.codes[:4], a.codes[:4, :11])
    assert np.array_equal(swapped.codes[4:], b.codes[4:])
    assert swapped.metadata["operation"] == {"name": "swap", "levels_from_b": "4-31", "length": "shortest"}


def test_swap_refuses_tokens_from_other_weights(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    code, _, err = run(
        capsys, "swap", files["a"], files["foreign"], "-o", tmp_path / "s.wav", *weights(tiny_checkpoint)
    )
    assert code == 2
    assert "foreign.mimi was encoded with weights ffffffffffff" in err and "--mix-weights" in err
    assert not (tmp_path / "s.wav").exists()
    code, _, err = run(capsys, "swap", files["a"], files["foreign"], "-o", tmp_path / "s.mimi")  # no model needed
    assert code == 2 and "different weights" in err
    code, _, err = run(capsys, "swap", files["a"], files["foreign"], "-o", tmp_path / "s.mimi", "--mix-weights")
    assert code == 0, err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["swap", "{missing}", "{b}", "-o", "{out}.mimi"], "input file not found", id="missing-file"),
        pytest.param(["swap", "{a}", "{b}", "-o", "{out}.mimi", "--from-b", "1-40"], "out of range", id="bad-levels"),
        pytest.param(["swap", "{a}", "{b}", "-o", "{out}.mimi", "--from-b", "x"], "cannot parse", id="unparsable"),
        pytest.param(["swap", "{a}", "{b}", "-o", "{out}.mp3"], "output must end in .mimi", id="bad-output"),
        pytest.param(["keep", "{a}", "--levels", "40", "-o", "{out}.mimi"], "out of range", id="keep-out-of-range"),
        pytest.param(["keep", "{a_wav}", "--levels", "0-7", "-o", "{out}.mimi"], "not a .mimi", id="keep-audio"),
        pytest.param(["drop", "{a}", "--levels", "0-7", "-o", "{out}.wav"], "must end in .mimi", id="drop-to-wav"),
        pytest.param(["splice", "{a}", "{foreign}", "-o", "{out}.mimi"], "different weights", id="splice-weights"),
        pytest.param(["keep", "{a}", "--levels", "0-7", "-o", "{b}"], "exists; pass --force", id="no-overwrite"),
        pytest.param(["anonymize", "{a}", "-o", "{out}.mimi"], "--voice TARGET or --random", id="no-source"),
        pytest.param(
            ["anonymize", "{a}", "-o", "{out}.mimi", "--voice", "{b}", "--random"],
            "exclude each other",
            id="two-sources",
        ),
        pytest.param(
            ["anonymize", "{a}", "-o", "{out}.mimi", "--seed", "3"], "only apply to --random", id="stray-seed"
        ),
        pytest.param(
            ["anonymize", "{a}", "-o", "{out}.mimi", "--random", "--levels", "0-99"],
            "out of range",
            id="anonymize-levels",
        ),
        pytest.param(["sweep", "{a}", "-o", "{out}"], "give the audio file", id="sweep-mimi"),
        pytest.param(["sweep", "{a_wav}", "-o", "{out}", "--metrics", "loudness"], "unknown metric", id="sweep-metric"),
        pytest.param(["quality", "{a_wav}", "-o", "{out}", "--prefixes", "8,x"], "--prefixes", id="quality-prefixes"),
        pytest.param(["quality", "{out}", "-o", "{out}q"], "input file not found", id="quality-missing"),
    ],
)
def test_bad_input_exits_2_with_a_message(
    capsys: pytest.CaptureFixture[str],
    files: dict[str, Path],
    tiny_checkpoint: Path,
    tmp_path: Path,
    argv: list[str],
    message: str,
) -> None:
    names = {
        **{k: str(v) for k, v in files.items()},
        "missing": str(tmp_path / "missing.wav"),
        "out": str(tmp_path / "out"),
    }
    args = [item.format(**names) for item in argv]
    if args[0] in ("swap", "anonymize", "sweep", "quality"):
        args += weights(tiny_checkpoint)
    code, out, err = run(capsys, *args)
    assert code == 2, (out, err)
    assert f"mimistack {args[0]}: error:" in err and message in err
    assert not list(tmp_path.glob("out*"))


def test_keep_drop_and_splice(capsys: pytest.CaptureFixture[str], files: dict[str, Path], tmp_path: Path) -> None:
    assert run(capsys, "keep", files["a"], "--levels", "0-7", "-o", tmp_path / "a8.mimi")[0] == 0
    assert run(capsys, "drop", files["b"], "--levels", "8-31", "-o", tmp_path / "b8.mimi")[0] == 0
    a8, b8 = TokenGrid.load(tmp_path / "a8.mimi"), TokenGrid.load(tmp_path / "b8.mimi")
    assert a8.levels_present == b8.levels_present == tuple(range(8))
    code, out, err = run(capsys, "splice", tmp_path / "a8.mimi", tmp_path / "b8.mimi", "-o", tmp_path / "ab.mimi")
    assert code == 0, err
    spliced = TokenGrid.load(tmp_path / "ab.mimi")
    assert spliced.num_frames == 27 and spliced.num_samples == 16 * FRAME + 20_000
    assert spliced.levels_present == tuple(range(8))
    assert "27 frames" in out
    code, _, err = run(capsys, "splice", files["a"], tmp_path / "b8.mimi", "-o", tmp_path / "x.mimi")
    assert code == 2 and "different levels" in err


def test_anonymize_random_is_reproducible_with_a_seed(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], tmp_path: Path
) -> None:
    for name in ("one", "two"):
        code, out, err = run(
            capsys,
            "anonymize",
            files["a"],
            "-o",
            tmp_path / f"{name}.mimi",
            "--random",
            "--seed",
            "5",
            "--stats",
            files["b"],
        )
        assert code == 0, err
        assert "seed 5" in out and "level statistics of 1 file(s)" in out
    one, two, a, b = (TokenGrid.load(p) for p in (tmp_path / "one.mimi", tmp_path / "two.mimi", files["a"], files["b"]))
    assert one == two
    assert np.array_equal(one.codes[0], a.codes[0])
    for level in (1, 17, 31):  # drawn from B's per-level statistics: only tokens B used at that level
        assert set(one.codes[level].tolist()) <= set(b.codes[level].tolist())
    code, out, _ = run(capsys, "anonymize", files["a"], "-o", tmp_path / "fresh.mimi", "--random")
    assert code == 0 and "uniform, seed " in out


def test_anonymize_with_a_voice_to_wav(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    code, _, err = run(
        capsys,
        "anonymize",
        files["a_wav"],
        "-o",
        tmp_path / "anon.wav",
        "--voice",
        files["b"],
        *weights(tiny_checkpoint),
    )
    assert code == 0, err
    assert load_audio(tmp_path / "anon.wav").shape == (30_000,)


# -- analysis ----------------------------------------------------------------------------------------------------
def test_sweep_command_writes_the_full_report(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    out_dir = tmp_path / "sweep"
    code, out, err = run(
        capsys,
        "sweep",
        files["a_wav"],
        "-o",
        out_dir,
        "--metrics",
        "snr",
        "--no-plots",
        "--max-seconds",
        "0.5",
        *weights(tiny_checkpoint),
    )
    assert code == 0, err
    assert "96 settings" in out and "RANDOM WEIGHTS" in err
    with (out_dir / "results.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 96 and set(rows[0]) >= {"setting", "levels", "bitrate_bps", "snr", "audio"}
    assert (out_dir / "index.html").read_text().count("<audio controls") == 97
    assert load_audio(out_dir / "audio" / "prefix_32.wav").shape == (12_000,)
    code, _, err = run(capsys, "sweep", files["a_wav"], "-o", out_dir, *weights(tiny_checkpoint))
    assert code == 2 and "not empty; pass --force" in err


def test_stats_command_reads_mimi_and_encodes_audio(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    code, out, err = run(
        capsys, "stats", files["a"], files["b_wav"], "-o", tmp_path / "stats", *weights(tiny_checkpoint)
    )
    assert code == 0, err
    assert "2 file(s), 27 frames" in out and "RANDOM WEIGHTS" in err
    text = (tmp_path / "stats" / "stats.md").read_text()
    assert TokenGrid.load(files["a"]).weights_sha256 in text and "RANDOM WEIGHTS" in text
    code, _, err = run(capsys, "stats", files["a"], files["foreign"], "-o", tmp_path / "mixed")
    assert code == 2 and "different weights" in err


def test_quality_command_finds_audio_in_folders(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    code, out, err = run(
        capsys,
        "quality",
        files["a_wav"].parent,
        "-o",
        tmp_path / "q",
        "--prefixes",
        "1,32",
        "--metrics",
        "snr",
        "--limit",
        "1",
        *weights(tiny_checkpoint),
    )
    assert code == 0, err
    assert "1 file(s)" in out and "| 32 |" in out
    with (tmp_path / "q" / "quality_per_file.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(Path(row["file"]).name, row["levels"]) for row in rows] == [("a.wav", "1"), ("a.wav", "32")]
