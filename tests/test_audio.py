"""Tests for `mimistack.audio`: loading any format/rate/channel count, streaming, validation and atomic saving."""

from __future__ import annotations

import logging
import tracemalloc
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile

from mimistack.audio import (
    AudioError,
    AudioWriter,
    audio_info,
    iter_audio,
    load_audio,
    save_audio,
    validate_pcm,
)
from speech_data import speech_files

SPEECH = speech_files()


def tone(rate: int, seconds: float, frequency: float = 440.0, channels: int = 1) -> np.ndarray:
    """float32 `[n, channels]`: a sine at `frequency` in channel 0, its octave below (quieter) in the others."""
    t = np.arange(round(rate * seconds)) / rate
    columns = [0.5 * np.sin(2 * np.pi * frequency * t)]
    columns += [0.25 * np.sin(2 * np.pi * frequency / 2 * t)] * (channels - 1)
    return np.stack(columns, axis=1).astype(np.float32)


def peak_frequency(pcm: np.ndarray, rate: int = 24_000) -> float:
    spectrum = np.abs(np.fft.rfft(pcm * np.hanning(pcm.shape[0])))
    return float(np.fft.rfftfreq(pcm.shape[0], 1 / rate)[np.argmax(spectrum)])


def encode_with_pyav(path: Path, codec: str, rate: int, samples: np.ndarray) -> Path:
    """Write `samples [n, 2]` with an FFmpeg encoder (the container follows the suffix)."""
    with av.open(str(path), "w") as output:
        stream = output.add_stream(codec, rate=rate)
        stream.layout = "stereo"
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples.T), format="fltp", layout="stereo")
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            output.mux(packet)
        for packet in stream.encode(None):
            output.mux(packet)
    return path


# -- loading ----------------------------------------------------------------------------------------------------
def test_speech_wav_loads_unchanged() -> None:
    reference, rate = soundfile.read(SPEECH[0], dtype="float32")
    assert rate == 24_000
    pcm = load_audio(SPEECH[0])
    assert pcm.dtype == np.float32 and pcm.ndim == 1
    np.testing.assert_array_equal(pcm, reference)


@pytest.mark.parametrize("chunk_seconds", [0.08, 1.0, 30.0])
def test_iter_audio_chunks_concatenate_to_load_audio(chunk_seconds: float) -> None:
    chunks = list(iter_audio(SPEECH[-1], chunk_seconds=chunk_seconds))
    size = round(chunk_seconds * 24_000)
    assert all(chunk.shape == (size,) for chunk in chunks[:-1]) and 0 < chunks[-1].shape[0] <= size
    np.testing.assert_array_equal(np.concatenate(chunks), load_audio(SPEECH[-1]))


def test_44k_stereo_is_mixed_to_mono_and_resampled(tmp_path: Path) -> None:
    path = tmp_path / "stereo.flac"
    soundfile.write(path, tone(44_100, 2.0, channels=2), 44_100)
    pcm = load_audio(path)
    assert abs(pcm.shape[0] - 48_000) <= 1
    assert peak_frequency(pcm) == pytest.approx(440, abs=1)
    # the mean of the channels: the 440 Hz tone at half amplitude (0.25), its octave at 0.125
    spectrum = np.abs(np.fft.rfft(pcm[:24_000])) / 12_000
    assert spectrum[440] == pytest.approx(0.25, abs=0.01) and spectrum[220] == pytest.approx(0.125, abs=0.01)
    for chunk_seconds in (0.05, 0.3):
        np.testing.assert_allclose(np.concatenate(list(iter_audio(path, chunk_seconds=chunk_seconds))), pcm, atol=1e-6)


def test_8k_audio_is_upsampled(tmp_path: Path) -> None:
    path = tmp_path / "phone.wav"
    soundfile.write(path, tone(8_000, 1.5, frequency=1000), 8_000, subtype="PCM_16")
    pcm = load_audio(path)
    assert abs(pcm.shape[0] - 36_000) <= 1
    assert peak_frequency(pcm) == pytest.approx(1000, abs=1)
    assert np.abs(pcm).max() == pytest.approx(0.5, abs=0.02)
    assert load_audio(path, sample_rate=16_000).shape[0] in (23_999, 24_000, 24_001)


def test_ogg_vorbis_through_soundfile(tmp_path: Path) -> None:
    path = tmp_path / "a.ogg"
    soundfile.write(path, tone(48_000, 1.0), 48_000, format="OGG", subtype="VORBIS")
    assert audio_info(path).decoder == "soundfile"
    pcm = load_audio(path)
    assert abs(pcm.shape[0] - 24_000) <= 1 and peak_frequency(pcm) == pytest.approx(440, abs=1)


@pytest.mark.parametrize(
    ("suffix", "codec", "rate"), [(".mp3", "libmp3lame", 44_100), (".opus", "libopus", 48_000), (".m4a", "aac", 44_100)]
)
def test_compressed_formats_through_pyav(tmp_path: Path, suffix: str, codec: str, rate: int) -> None:
    path = encode_with_pyav(tmp_path / f"a{suffix}", codec, rate, tone(rate, 2.0, channels=2))
    info = audio_info(path)
    assert (info.decoder, info.sample_rate, info.channels) == ("pyav", rate, 2)
    assert info.duration == pytest.approx(2.0, abs=0.05)
    pcm = load_audio(path)
    assert pcm.shape[0] == pytest.approx(48_000, abs=1200)  # encoders add priming/padding
    assert peak_frequency(pcm) == pytest.approx(440, abs=1)
    np.testing.assert_allclose(np.concatenate(list(iter_audio(path, chunk_seconds=0.25))), pcm, atol=1e-6)


def test_audio_info_of_a_wav(tmp_path: Path) -> None:
    path = tmp_path / "x.wav"
    soundfile.write(path, tone(16_000, 0.5, channels=3), 16_000, subtype="PCM_24")
    info = audio_info(path)
    assert (info.sample_rate, info.channels, info.num_frames, info.duration) == (16_000, 3, 8000, 0.5)
    assert info.format == "WAV (PCM_24)" and info.path == path


def test_iter_audio_keeps_memory_bounded(tmp_path: Path) -> None:
    path = tmp_path / "long.wav"
    seconds = 60
    soundfile.write(path, np.zeros((44_100 * seconds, 2), dtype=np.int16), 44_100)
    whole = 44_100 * seconds * 2 * 4  # the file as float32 stereo: 21 MB
    tracemalloc.start()
    try:
        total = sum(chunk.shape[0] for chunk in iter_audio(path, chunk_seconds=1.0))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == pytest.approx(24_000 * seconds, abs=2)
    assert peak < whole / 5


# -- errors -----------------------------------------------------------------------------------------------------
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match=r"nope\.wav: no such file"):
        load_audio(tmp_path / "nope.wav")
    with pytest.raises(AudioError, match="no such file"):
        iter_audio(tmp_path / "nope.wav")  # at once, not on first next()
    with pytest.raises(AudioError, match="not a file"):
        load_audio(tmp_path)


@pytest.mark.parametrize("name", ["noise.wav", "noise.mp3", "noise.flac"])
def test_random_bytes_are_not_audio(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(AudioError, match=rf"{name}: not a readable audio file \(") as caught:
        load_audio(path)
    assert "soundfile: " in str(caught.value) and "pyav: " in str(caught.value)
    with pytest.raises(AudioError, match="not a readable audio file"):
        audio_info(path)


def test_text_file_renamed_wav(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("These are not samples.\n" * 50)
    with pytest.raises(AudioError, match=r"notes\.wav: not a readable audio file.*soundfile: .*pyav: ") as caught:
        load_audio(path)
    assert isinstance(caught.value, ValueError)


def test_empty_wav(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    soundfile.write(path, np.zeros((0,), dtype=np.float32), 24_000)
    assert audio_info(path).num_frames == 0
    with pytest.raises(AudioError, match=r"empty\.wav: the file holds no audio samples"):
        load_audio(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples_are_rejected(tmp_path: Path, bad: float) -> None:
    path = tmp_path / "bad.wav"
    samples = np.zeros(48_000, dtype=np.float32)
    samples[30_000] = bad
    soundfile.write(path, samples, 24_000, subtype="FLOAT")
    with pytest.raises(
        AudioError,
        match=r"bad\.wav: 1 sample\(s\) are NaN or infinite, the first at sample 30000 "
        r"\(1\.250 s\)",
    ):
        load_audio(path)


def test_bad_arguments() -> None:
    with pytest.raises(AudioError, match="chunk_seconds"):
        iter_audio("x.wav", chunk_seconds=0)
    with pytest.raises(AudioError, match="sample_rate"):
        load_audio("x.wav", sample_rate=0)


# -- validation -------------------------------------------------------------------------------------------------
def test_validate_pcm_converts_and_checks() -> None:
    out = validate_pcm(np.linspace(-1, 1, 5))
    assert out.dtype == np.float32 and out.shape == (5,) and out.flags.c_contiguous
    assert validate_pcm(np.zeros((1, 1, 7))).shape == (7,)
    for bad, message in [
        (np.zeros((2, 5)), r"mono \[N\]"),
        (np.float32(0.5), r"mono \[N\]"),
        (np.zeros(0), "no samples"),
        (np.array([0.0, np.nan]), "NaN"),
        (np.array([1, 2], dtype=np.int16), "floating point"),
        (["a"], "floating point"),
    ]:
        with pytest.raises(AudioError, match=message):
            validate_pcm(bad)


# -- saving -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "subtype", "tolerance"),
    [("a.wav", None, 1 / 32_768), ("a.wav", "FLOAT", 0.0), ("a.flac", None, 1 / 32_768), ("a.flac", "PCM_24", 1e-6)],
)
def test_save_audio_round_trip(tmp_path: Path, name: str, subtype: str | None, tolerance: float) -> None:
    pcm = tone(24_000, 0.5)[:, 0]
    path = save_audio(tmp_path / name, pcm, subtype=subtype)
    back, rate = soundfile.read(path, dtype="float32")
    assert rate == 24_000
    np.testing.assert_allclose(back, pcm, atol=tolerance)
    assert soundfile.info(path).subtype == (subtype or "PCM_16")
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_save_audio_refuses_to_overwrite(tmp_path: Path) -> None:
    path = save_audio(tmp_path / "a.wav", np.zeros(100, dtype=np.float32))
    with pytest.raises(FileExistsError, match=r"a\.wav already exists"):
        save_audio(path, np.ones(10, dtype=np.float32) * 0.5)
    assert soundfile.info(path).frames == 100
    save_audio(path, np.ones(10, dtype=np.float32) * 0.5, force=True)
    assert soundfile.info(path).frames == 10


def test_save_audio_errors_leave_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match=r"use \.wav or \.flac"):
        save_audio(tmp_path / "a.mp3", np.zeros(10))
    with pytest.raises(AudioError, match="FLAC cannot hold subtype 'FLOAT'"):
        save_audio(tmp_path / "a.flac", np.zeros(10), subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        save_audio(tmp_path / "a.wav", np.array([0.0, np.nan]))
    assert not list(tmp_path.iterdir())


def test_save_audio_clips_integer_formats(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mimistack.audio"):
        path = save_audio(tmp_path / "loud.wav", np.array([0.0, 1.5, -2.0, 0.5]))
    assert "clipping 2 sample(s)" in caplog.text
    back, _ = soundfile.read(path, dtype="float32")
    np.testing.assert_allclose(back, [0.0, 32_767 / 32_768, -1.0, 0.5], atol=1 / 32_768)


def test_audio_writer_writes_incrementally_and_atomically(tmp_path: Path) -> None:
    pcm = tone(24_000, 1.0)[:, 0]
    path = tmp_path / "stream.flac"
    with AudioWriter(path) as writer:
        for start in range(0, pcm.shape[0], 7_000):
            writer.write(pcm[start : start + 7_000])
            assert not path.exists()
        writer.write(np.zeros(0, dtype=np.float32))
    assert writer.num_samples == 24_000
    np.testing.assert_allclose(load_audio(path), pcm, atol=1 / 32_768)

    with pytest.raises(RuntimeError), AudioWriter(path, force=True) as failing:
        failing.write(np.zeros(1000, dtype=np.float32))
        raise RuntimeError("decoder crashed")
    np.testing.assert_allclose(load_audio(path), pcm, atol=1 / 32_768)  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["stream.flac"]
    with pytest.raises(FileExistsError, match=r"stream\.flac"):
        AudioWriter(path)
