"""Tests for `mimistack.analysis`: the level sweep end to end on a random tiny checkpoint, per-level statistics and
the per-prefix quality table."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import pytest

from mimistack import analysis, metrics
from mimistack.analysis import AnalysisError, SweepResult, scoring
from mimistack.audio import load_audio
from mimistack.codec import Codec
from mimistack.levels import Levels
from mimistack.tokens import TokenGrid

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SWEEP_METRICS = ("snr", "mel_distance")  # cheap; STOI and PESQ run in the quality-table test
SECONDS = 1.2


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def clip(speech: list[Path]) -> np.ndarray:
    return load_audio(speech[0])[: round(SECONDS * 24_000)]


@pytest.fixture(scope="module")
def swept(tiny_codec: Codec, clip: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> SweepResult:
    pytest.importorskip("matplotlib")
    calls: list[tuple[int, int, str]] = []
    result = analysis.sweep(
        tiny_codec,
        clip,
        out_dir=tmp_path_factory.mktemp("sweep") / "report",
        metrics=SWEEP_METRICS,
        input_name="clip.wav",
        progress=lambda done, total, label: calls.append((done, total, label)),
    )
    # 94 distinct level sets decoded first, then the 96 settings scored
    assert calls[0] == (0, 94, "decoding prefix_01") and calls[-1] == (96, 96, "done")
    assert (0, 96, "prefix_01") in calls
    return result


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


EXPECTED_NAMES = (
    [f"prefix_{n:02d}" for n in range(1, 33)]
    + [f"solo_{n:02d}" for n in range(32)]
    + [f"without_{n:02d}" for n in range(32)]
)


def test_sweep_settings_cover_prefixes_solos_and_leave_outs() -> None:
    settings = analysis.sweep_settings(32)
    assert [s.name for s in settings] == EXPECTED_NAMES
    by_name = {s.name: s for s in settings}
    assert by_name["prefix_08"].levels == Levels.prefix(8)
    assert by_name["solo_05"].levels.indices == (5,)
    assert by_name["without_05"].levels.indices == tuple(i for i in range(32) if i != 5)
    assert not by_name["prefix_08"].experimental and by_name["solo_05"].experimental


def test_sweep_csv_lists_every_setting_with_its_bitrate(swept: SweepResult, tiny_codec: Codec) -> None:
    rows = _csv_rows(swept.out_dir / "results.csv")
    assert [row["setting"] for row in rows] == EXPECTED_NAMES
    bits_per_level = tiny_codec.frame_rate * math.log2(tiny_codec.codebook_size)
    for row in rows:
        levels = Levels.parse(row["levels"])
        assert int(row["num_levels"]) == len(levels)
        assert float(row["bitrate_bps"]) == pytest.approx(len(levels) * bits_per_level)
        assert row["experimental"] == str(not levels.is_prefix).lower()
        assert (swept.out_dir / row["audio"]).is_file()
        for name in SWEEP_METRICS:
            assert math.isfinite(float(row[name]))
    assert {row["levels"] for row in rows if row["setting"].startswith("without")} == {
        str(Levels(tuple(i for i in range(32) if i != n))) for n in range(32)
    }


def test_sweep_scores_are_the_metrics_of_the_decoded_audio(
    swept: SweepResult, tiny_codec: Codec, clip: np.ndarray
) -> None:
    grid = tiny_codec.encode(clip)
    for name, levels in (("prefix_32", "all"), ("solo_07", "7"), ("without_00", "1-31")):
        expected = metrics.evaluate(clip, tiny_codec.decode(grid, levels), metrics=SWEEP_METRICS)
        row = swept.row(name)
        assert row.values["snr"] == pytest.approx(expected.snr, abs=1e-6)
        assert row.values["mel_distance"] == pytest.approx(expected.mel_distance, abs=1e-6)
    on_disk = load_audio(swept.out_dir / swept.row("solo_07").audio_file)
    np.testing.assert_allclose(on_disk, tiny_codec.decode(grid, "7"), atol=1e-4)  # 16-bit wav


def test_batched_decoding_gives_the_samples_of_codec_decode(tiny_codec: Codec, clip: np.ndarray) -> None:
    """One encoder pass, the decoder on stacked latents: batch 1 is `Codec.decode` exactly; larger batches agree
    to float rounding, and an odd batch size (sets left over in the last call) changes nothing."""
    from mimistack.analysis.level_sweep import decode_level_sets

    grid = tiny_codec.encode(clip)
    sets = [setting.levels for setting in analysis.sweep_settings(32)][::9]  # prefixes, solos and leave-outs
    one = decode_level_sets(tiny_codec, grid, sets, batch_size=1)
    batched = decode_level_sets(tiny_codec, grid, sets, batch_size=4)
    assert set(one) == set(batched) == set(sets)
    for levels in sets:
        expected = tiny_codec.decode(grid, levels)
        np.testing.assert_array_equal(one[levels], expected)
        assert batched[levels].shape == expected.shape
        assert np.linalg.norm(batched[levels] - expected) <= 1e-5 * np.linalg.norm(expected)
    with pytest.raises(AnalysisError, match="batch_size"):
        decode_level_sets(tiny_codec, grid, sets, batch_size=0)


def test_batched_sweep_scores_match(tiny_codec: Codec, clip: np.ndarray, swept: SweepResult, tmp_path: Path) -> None:
    batched = analysis.sweep(
        tiny_codec, clip, out_dir=tmp_path / "b", metrics=SWEEP_METRICS, plots=False, batch_size=16
    )
    for row in swept.rows:
        other = batched.row(row.setting.name)
        assert other.values["snr"] == pytest.approx(row.values["snr"], abs=1e-4)
    assert batched.timings["decode_seconds"] > 0 and batched.timings["score_seconds"] > 0


def test_identical_level_sets_are_decoded_once(swept: SweepResult) -> None:
    assert swept.row("solo_00").audio_file == swept.row("prefix_01").audio_file
    assert swept.row("without_31").values == swept.row("prefix_31").values
    assert len(list((swept.out_dir / "audio").glob("*.wav"))) == 94 + 1  # 96 settings, 2 repeats, + original


def test_sweep_html_has_a_player_per_setting_and_states_the_weights(swept: SweepResult) -> None:
    page = (swept.out_dir / "index.html").read_text()
    rows = re.findall(r'<tr id="([a-z]+_\d\d)">(.*?)</tr>', page, flags=re.S)
    assert [name for name, _ in rows] == EXPECTED_NAMES
    for name, cells in rows:
        (source,) = re.findall(r'<audio controls preload="none" src="([^"]+)">', cells)
        assert source == swept.row(name).audio_file and (swept.out_dir / source).is_file()
    assert 'src="audio/original.wav"' in page
    assert swept.weights_sha256 in page and len(swept.weights_sha256) == 64
    assert "RANDOM WEIGHTS" in page
    for image in ("quality_vs_levels", "per_level", "spectrograms", "token_grid"):
        assert f'src="{image}.png"' in page
        assert (swept.out_dir / f"{image}.png").read_bytes()[:8] == PNG_MAGIC


def test_sweep_markdown_has_three_tables_and_the_weights(swept: SweepResult) -> None:
    text = (swept.out_dir / "results.md").read_text()
    assert text.count("\n## ") == 4  # prefixes, solos, leave-outs, and the bit rate of each level's tokens
    assert "## Tokens: the bit rate each level needs" in text
    assert len(swept.coded_bitrate) == 32 and all(
        0 < bps < 200 for bps in swept.coded_bitrate.values()
    )  # 15 frames: byte overheads
    assert swept.weights_sha256 in text and "RANDOM WEIGHTS" in text
    assert len(re.findall(r"^\| (prefix|solo|without)_\d\d \|", text, flags=re.M)) == 96
    assert TokenGrid.load(swept.out_dir / "tokens.mimi").num_frames == math.ceil(SECONDS * 12.5)


def test_sweep_exports_codec_superb_entries_and_token_measures(
    tiny_codec: Codec, clip: np.ndarray, tmp_path: Path
) -> None:
    import json

    result = analysis.sweep(
        tiny_codec,
        clip,
        out_dir=tmp_path / "s",
        metrics=("mel_distance_superb", "stft_distance_superb", "waveform_l1", "snr"),
        plots=False,
        reencode=True,
    )
    data = json.loads((tmp_path / "s" / "codec_superb.json").read_text())
    assert list(data) == [f"mimi-RANDOM-WEIGHTS_{k}q" for k in range(1, 33)]
    entry = data["mimi-RANDOM-WEIGHTS_8q"]
    assert set(entry) == {"Speech", "overall"} and set(entry["overall"]) == {"mel", "stft", "waveform"}
    assert entry["overall"]["mel"] == pytest.approx(result.row("prefix_08").values["mel_distance_superb"])
    row = result.row("prefix_32")
    assert row.values["token_agreement"] is not None and 0.0 < row.values["token_agreement"] <= 1.0
    assert row.values["token_edit_distance"] is not None and 0.0 <= row.values["token_edit_distance"] < 1.0
    assert "token_agreement" in (tmp_path / "s" / "results.csv").read_text().splitlines()[0]


def test_sweep_refuses_a_folder_in_use_and_unknown_metrics(
    tiny_codec: Codec, clip: np.ndarray, swept: SweepResult, tmp_path: Path
) -> None:
    with pytest.raises(AnalysisError, match="not empty"):
        analysis.sweep(tiny_codec, clip, out_dir=swept.out_dir, metrics=("snr",))
    with pytest.raises(AnalysisError, match="unknown metric"):
        analysis.sweep(tiny_codec, clip, out_dir=tmp_path / "x", metrics=("loudness",))
    with pytest.raises(AnalysisError, match="reference_text"):
        analysis.sweep(tiny_codec, clip, out_dir=tmp_path / "y", metrics=("word_error_rate",))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_reference_text_adds_the_word_error_rate() -> None:
    assert scoring.resolve_metrics(None, None) == analysis.DEFAULT_SWEEP_METRICS
    assert scoring.resolve_metrics(("snr",), "the words")[-1] == "word_error_rate"
    assert scoring.metric_columns(("snr", "dnsmos")) == (
        "snr",
        "dnsmos_overall",
        "dnsmos_signal",
        "dnsmos_background",
        "dnsmos_p808",
    )


def test_random_weights_are_recognised(tiny_codec: Codec, tiny_checkpoint: Path, tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.numpy import save_file

    assert analysis.weights_are_random(tiny_codec)  # the checkpoint's metadata says so
    with safe_open(str(tiny_checkpoint), framework="numpy") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
        metadata = {k: v for k, v in (handle.metadata() or {}).items() if k != "mimistack_note"}
    save_file(tensors, str(tmp_path / "unmarked.safetensors"), metadata=metadata)
    assert not analysis.weights_are_random(Codec.load(tmp_path / "unmarked.safetensors"))


# -- statistics --------------------------------------------------------------------------------------------------
def test_stats_report_matches_the_statistics(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    codes = np.zeros((32, 4), dtype=np.uint16)
    codes[0] = [0, 0, 1, 2]
    codes[1] = [3, 3, 3, 3]
    grid = TokenGrid(codes=codes, num_samples=4 * 1920, codebook_size=8, weights_sha256="c" * 64, levels_present=(0, 1))
    stats = analysis.level_stats([grid, grid])
    files = analysis.write_stats_report(stats, tmp_path / "stats", weights_label="crafted", random_weights=True)
    rows = _csv_rows(files["csv"])
    assert len(rows) == 32
    assert float(rows[0]["entropy_bits"]) == pytest.approx(1.5)
    assert float(rows[0]["perplexity"]) == pytest.approx(2**1.5, rel=1e-5)
    assert (rows[0]["tokens"], rows[0]["distinct_codes"]) == ("8", "3")
    assert float(rows[1]["entropy_bits"]) == 0.0
    assert rows[2]["entropy_bits"] == "" and rows[2]["tokens"] == "0"  # an absent level is not counted
    text = files["markdown"].read_text()
    assert "c" * 64 in text and "RANDOM WEIGHTS" in text
    assert files["plot"].read_bytes()[:8] == PNG_MAGIC
    assert "entropy_coded_bps" not in rows[0]  # only when asked for


def test_stats_report_lists_the_entropy_coded_bitrate(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    codes = np.zeros((32, 200), dtype=np.uint16)
    codes[1] = rng.integers(0, 2048, 200)  # level 1 uniform: about 11 bits a token; level 0 constant: almost none
    grid = TokenGrid(codes=codes, num_samples=200 * 1920, codebook_size=2048)
    coded = scoring.coded_bitrates([grid])
    assert set(coded) == set(range(32)) and coded[0] < 10 < 130 < coded[1] < 160
    files = analysis.write_stats_report(analysis.level_stats([grid]), tmp_path / "s", coded_bitrate=coded)
    rows = _csv_rows(files["csv"])
    assert float(rows[1]["entropy_coded_bps"]) == pytest.approx(coded[1], rel=1e-5)
    assert rows[1]["nominal_bps"] == "137.5"
    assert "entropy-coded bit/s" in files["markdown"].read_text()


# -- per-prefix quality ------------------------------------------------------------------------------------------
def test_prefix_quality_averages_per_prefix(tiny_codec: Codec, speech: list[Path], tmp_path: Path) -> None:
    clips = []
    for index, source in enumerate(speech[:2]):
        path = tmp_path / f"clip{index}.wav"
        from mimistack.audio import save_audio

        save_audio(path, load_audio(source)[: 24_000 + 500 * index])
        clips.append(path)
    pytest.importorskip("pystoi")
    pytest.importorskip("pesq")
    table = analysis.prefix_quality(tiny_codec, clips, prefixes=(32, 1), metrics=("snr", "stoi", "pesq_wb"))
    assert table.prefixes == (1, 32) and table.metrics == ("snr", "stoi", "pesq_wb")
    expected = []
    for path in clips:
        pcm = load_audio(path)
        expected.append(
            metrics.evaluate(pcm, tiny_codec.decode(tiny_codec.encode(pcm), "0"), metrics=("snr", "stoi", "pesq_wb"))
        )
    for name in ("snr", "stoi", "pesq_wb"):
        values = [getattr(result, name) for result in expected]
        assert table.mean(1, name) == (pytest.approx(np.mean(values)), pytest.approx(np.std(values)), 2)
    mean, _, _ = table.mean(1, "snr")
    files = analysis.write_quality_report(table, tmp_path / "quality")
    summary = _csv_rows(files["csv"])
    assert [row["levels"] for row in summary] == ["1", "32"]
    assert float(summary[0]["snr_mean"]) == pytest.approx(mean, rel=1e-5)
    assert len(_csv_rows(files["per_file"])) == 4
    assert "STOI ↑ mean ± std (n)" in files["markdown"].read_text()
    assert tiny_codec.weights_sha256 in files["markdown"].read_text()
    import json

    superb = json.loads(files["codec_superb"].read_text())
    assert list(superb) == ["mimi-RANDOM-WEIGHTS_1q", "mimi-RANDOM-WEIGHTS_32q"]
    fields = superb["mimi-RANDOM-WEIGHTS_1q"]["overall"]
    assert set(fields) == {"stoi", "pesq", "pesq-wb"}  # snr has no Codec-SUPERB field
    assert fields["stoi"] == pytest.approx(table.mean(1, "stoi")[0])
    with pytest.raises(AnalysisError, match="prefixes must lie"):
        analysis.prefix_quality(tiny_codec, clips, prefixes=(0, 8))


def test_stats_against_a_reference_lists_token_agreement_and_edit_distance(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from mimistack.cli.main import main

    codes = np.random.default_rng(0).integers(0, 2048, (32, 10)).astype(np.uint16)
    shifted = np.concatenate([codes[:, :1], codes[:, :-1]], axis=1)  # one token inserted at the start of every row
    a = TokenGrid(codes=codes, num_samples=10 * 1920, codebook_size=2048)
    b = TokenGrid(codes=shifted, num_samples=10 * 1920, codebook_size=2048)
    a.save(tmp_path / "a.mimi")
    b.save(tmp_path / "b.mimi")
    out = tmp_path / "report"
    assert main(["stats", str(tmp_path / "b.mimi"), "--against", str(tmp_path / "a.mimi"), "-o", str(out), "-q"]) == 0
    rows = _csv_rows(out / "comparison.csv")
    assert len(rows) == 32 and rows[0]["file"] == "b.mimi"
    # shifted by one frame: position-wise agreement collapses, the edit distance sees two edits in ten tokens
    assert all(float(row["token_agreement"]) <= 0.3 for row in rows)
    assert all(float(row["token_edit_distance"]) == pytest.approx(0.2) for row in rows)
    text = (out / "stats.md").read_text()
    assert "## Tokens against `a.mimi`" in text and "entropy-coded bit/s" in text
    missing = tmp_path / "none.mimi"
    assert main(["stats", str(tmp_path / "b.mimi"), "--against", str(missing), "-o", str(tmp_path / "r2")]) == 2
