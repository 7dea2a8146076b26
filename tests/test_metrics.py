"""Tests for mimistack.metrics: every metric on signals whose answer is known.

Speech comes from the shared test clips (24 kHz mono WAV). Metrics whose package is missing are skipped; the
model-based ones (ViSQOL, DNSMOS, resemblyzer, pocketsphinx) run on a few seconds of audio only.
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

from mimistack import metrics, spectral
from mimistack.config import FRAME_SIZE, SAMPLE_RATE
from speech_data import speech_file

SPOKEN_TEXT = (
    "The quick brown fox jumps over the lazy dog. "
    "Please call Stella and ask her to bring these things with her from the store."
)
TRANSCRIBE_MAX_WER = 0.15  # measured 0.083 (2 of 24 words: "jumped", "calm") with pocketsphinx 5.1.1


def _load(name: str, seconds: float | None = None) -> np.ndarray:
    soundfile = pytest.importorskip("soundfile")
    path = speech_file(name)  # a missing clip is a broken checkout: it raises, never skips
    pcm, sample_rate = soundfile.read(path, dtype="float32")
    assert sample_rate == SAMPLE_RATE and pcm.ndim == 1
    return pcm if seconds is None else pcm[: round(seconds * SAMPLE_RATE)]


def _with_noise(pcm: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    """pcm plus white noise scaled to exactly `snr_db` (energy ratio), float32."""
    noise = np.random.default_rng(seed).standard_normal(pcm.size)
    signal_energy = float(np.sum(pcm.astype(np.float64) ** 2))
    noise *= np.sqrt(signal_energy / float(np.sum(noise**2)) / 10.0 ** (snr_db / 10.0))
    return (pcm + noise).astype(np.float32)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """3 s of the HTS female voice `[72000]`."""
    return _load("festival_cmu_us_slt_arctic_hts", seconds=3.0)


# --- input checks -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        pytest.param(np.array([], dtype=np.float32), "empty", id="empty"),
        pytest.param(np.array([0.1, np.nan, 0.2], dtype=np.float32), "NaN", id="nan"),
        pytest.param(np.array([0.1, np.inf, 0.2], dtype=np.float32), "infinite", id="inf"),
        pytest.param(np.zeros((2, 100), dtype=np.float32), "mono", id="two-channels"),
        pytest.param(np.zeros(100, dtype=np.int16), "float", id="int16"),
        pytest.param([0.0] * 100, "numpy array", id="list"),
    ],
)
def test_invalid_input_is_rejected(bad: object, message: str) -> None:
    good = np.ones(100, dtype=np.float32)
    with pytest.raises(ValueError, match=message):
        metrics.evaluate(good, bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=message):
        metrics.si_sdr(bad, good)  # type: ignore[arg-type]


def test_lengths_within_one_frame_are_trimmed_beyond_are_rejected(speech: np.ndarray) -> None:
    longer = np.concatenate([speech, np.zeros(FRAME_SIZE, dtype=np.float32)])
    result = metrics.evaluate(speech, longer)
    assert result.snr == pytest.approx(200.0)
    assert result.stft_distance == 0.0
    with pytest.raises(ValueError, match="more than one frame"):
        metrics.evaluate(speech, np.concatenate([longer, np.zeros(1, dtype=np.float32)]))


def test_evaluate_rejects_unknown_metric_and_missing_text(speech: np.ndarray) -> None:
    with pytest.raises(ValueError, match="unknown metrics"):
        metrics.evaluate(speech, speech, metrics=("si_sdr", "loudness"))
    with pytest.raises(ValueError, match="reference_text"):
        metrics.evaluate(speech, speech, metrics=("word_error_rate",))
    with pytest.raises(ValueError, match="sample_rate"):
        metrics.evaluate(speech, speech, sample_rate=0)


def test_silent_reference_has_no_ratio() -> None:
    silence = np.zeros(1000, dtype=np.float32)
    with pytest.raises(ValueError, match="silent"):
        metrics.si_sdr(silence, np.ones(1000, dtype=np.float32))
    with pytest.raises(ValueError, match="silent"):
        metrics.snr(silence, np.ones(1000, dtype=np.float32))


# --- pure numpy metrics -----------------------------------------------------------------------------------------


def test_si_sdr_is_scale_invariant_and_snr_is_not(speech: np.ndarray) -> None:
    assert metrics.si_sdr(speech, 3.0 * speech) > 100.0
    assert metrics.snr(speech, 3.0 * speech) == pytest.approx(10 * np.log10(1 / 4), abs=1e-6)  # noise = 2x
    assert metrics.snr(speech, speech) > 100.0


@pytest.mark.parametrize("snr_db", [0.0, 10.0, 20.0, 30.0])
def test_si_sdr_and_snr_of_known_noise(speech: np.ndarray, snr_db: float) -> None:
    noisy = _with_noise(speech, snr_db)
    assert metrics.snr(speech, noisy) == pytest.approx(snr_db, abs=0.01)
    assert metrics.si_sdr(speech, noisy) == pytest.approx(snr_db, abs=0.1)


@pytest.mark.parametrize(
    "distance",
    [
        pytest.param(metrics.multi_resolution_stft_distance, id="stft"),
        pytest.param(metrics.mel_distance, id="mel"),
    ],
)
def test_spectral_distances_zero_for_identical_and_grow_with_noise(speech: np.ndarray, distance) -> None:
    assert distance(speech, speech.copy()) == 0.0
    values = [distance(speech, _with_noise(speech, snr_db)) for snr_db in (40.0, 20.0, 10.0, 0.0)]
    assert all(value > 0.0 for value in values)
    assert values == sorted(values), values


def test_mel_filterbank_covers_the_spectrum() -> None:
    filters = spectral._mel_filterbank(SAMPLE_RATE, 1024, 80)
    assert filters.shape == (80, 513)
    assert np.all(filters.max(axis=1) > 0.0)  # no empty band
    assert np.all(np.argmax(filters, axis=1)[1:] >= np.argmax(filters, axis=1)[:-1])  # centres ascend


def test_evaluate_default_metrics(speech: np.ndarray) -> None:
    result = metrics.evaluate(speech, _with_noise(speech, 20.0))
    assert result.snr == pytest.approx(20.0, abs=0.01)
    assert result.si_sdr == pytest.approx(20.0, abs=0.1)
    assert result.stft_distance is not None and result.stft_distance > 0
    assert result.mel_distance is not None and result.mel_distance > 0
    assert (result.stoi, result.pesq_wb, result.visqol, result.dnsmos, result.word_error_rate) == (None,) * 5


# --- word error rate --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "hypothesis", "expected"),
    [
        pytest.param("the cat sat down", "the cat sat down", 0.0, id="exact"),
        pytest.param("The cat, sat DOWN!", "the cat sat down", 0.0, id="case-and-punctuation"),
        pytest.param("the cat sat down", "the dog sat down", 0.25, id="one-substitution"),
        pytest.param("the cat sat down", "the sat down", 0.25, id="one-deletion"),
        pytest.param("the cat sat down", "the big cat sat down", 0.25, id="one-insertion"),
        pytest.param("the cat sat down", "a cat sat", 0.5, id="substitution-and-deletion"),
        pytest.param("the cat sat down", "", 1.0, id="empty-hypothesis"),
        pytest.param("one two", "one two three four five six", 2.0, id="insertions-exceed-one"),
        pytest.param("she's here", "shes here", 0.5, id="apostrophe-kept-in-word"),
    ],
)
def test_word_error_rate(reference: str, hypothesis: str, expected: float) -> None:
    assert metrics.word_error_rate(reference, hypothesis) == pytest.approx(expected)


def test_word_error_rate_needs_reference_words() -> None:
    with pytest.raises(ValueError, match="no words"):
        metrics.word_error_rate(" ... ", "hello")


# --- missing packages -------------------------------------------------------------------------------------------


def test_missing_package_raises_with_install_hint(monkeypatch: pytest.MonkeyPatch, speech: np.ndarray) -> None:
    monkeypatch.setitem(sys.modules, "pystoi", None)  # makes `import pystoi` fail
    assert metrics.available_metrics()["stoi"] is False
    with pytest.raises(metrics.MissingDependencyError, match=r"pip install 'mimistack\[eval\]'") as caught:
        metrics.stoi(speech, speech)
    assert isinstance(caught.value, ImportError)


def test_available_metrics_names_every_metric() -> None:
    available = metrics.available_metrics()
    assert tuple(available) == metrics.ALL_METRICS
    assert all(available[name] for name in metrics.DEFAULT_METRICS)


# --- wrapped packages -------------------------------------------------------------------------------------------


def test_stoi(speech: np.ndarray) -> None:
    pytest.importorskip("pystoi")
    assert metrics.stoi(speech, speech) > 0.99
    noisy = [metrics.stoi(speech, _with_noise(speech, snr_db)) for snr_db in (10.0, 0.0, -10.0)]
    assert noisy == sorted(noisy, reverse=True), noisy
    # Pure noise keeps ~0.37: STOI clips the estimate to the reference's envelope, which correlates with it.
    noise = np.random.default_rng(1).standard_normal(speech.size).astype(np.float32) * 0.1
    assert metrics.stoi(speech, noise) < 0.5
    assert metrics.stoi(speech, _load("flite_awb", seconds=3.0)) < 0.3  # other words, other voice


def test_pesq_wb(speech: np.ndarray) -> None:
    pytest.importorskip("pesq")
    clean = metrics.pesq_wb(speech, speech)
    noisy = metrics.pesq_wb(speech, _with_noise(speech, 10.0))
    assert clean > 4.4
    assert noisy < clean - 2.0


def test_visqol(speech: np.ndarray) -> None:
    pytest.importorskip("visqol")
    pytest.importorskip("ai_edge_litert")
    clean = metrics.visqol(speech, speech)
    degraded = metrics.visqol(speech, _with_noise(speech, 10.0))
    assert clean > 4.5  # 4.68 is the speech-mode lattice model's score for identical signals
    assert degraded < clean - 1.0


def test_transcribe_known_sentence() -> None:
    pytest.importorskip("pocketsphinx")
    pcm = _load("festival_cmu_us_slt_arctic_hts")  # 7.5 s, the whole text
    result = metrics.evaluate(pcm, pcm, metrics=("word_error_rate",), reference_text=SPOKEN_TEXT)
    assert result.transcript is not None and "quick brown fox" in result.transcript
    assert result.word_error_rate is not None and result.word_error_rate < TRANSCRIBE_MAX_WER, result.transcript


def test_speaker_similarity_same_speaker_beats_different_speaker() -> None:
    pytest.importorskip("librosa")
    pytest.importorskip("webrtcvad")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # resemblyzer imports a deprecated scipy module
        pytest.importorskip("resemblyzer")
    female = _load("festival_cmu_us_slt_arctic_hts", seconds=7.0)
    male = _load("flite_awb", seconds=3.5)
    half = female.size // 2
    same = metrics.speaker_similarity(female[:half], female[half:])
    different = metrics.speaker_similarity(female[:half], male)
    assert same > 0.85
    assert different < same - 0.2


def test_dnsmos_clean_beats_noisy(speech: np.ndarray) -> None:
    pytest.importorskip("speechmos")
    pytest.importorskip("librosa")
    clean = metrics.dnsmos(speech)
    noisy_pcm = _with_noise(speech, 0.0)
    noisy = metrics.dnsmos(noisy_pcm / np.abs(noisy_pcm).max())
    assert isinstance(clean, metrics.DnsmosScores)
    assert 1.0 < noisy.overall < clean.overall - 1.0
    assert noisy.background < clean.background - 1.0
