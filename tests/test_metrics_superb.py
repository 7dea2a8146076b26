"""The Codec-SUPERB / VERSA depth metrics on known answers: Codec-SUPERB's mel distance, VERSA's log-spectral
distance (each against the published definition, computed here with librosa as those projects do), and the YIN
F0 track, F0 RMSE and F0 correlation on tones of known pitch."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mimistack import metrics, spectral

SR = 24_000


def _tone(frequency: float | np.ndarray, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * SR)) / SR
    phase = 2 * np.pi * (np.cumsum(frequency) / SR if isinstance(frequency, np.ndarray) else frequency * t)
    return (amplitude * np.sin(phase)).astype(np.float32)


@pytest.fixture(scope="module")
def noisy_pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    a = (0.1 * rng.standard_normal(SR)).astype(np.float32)
    return a, (a + 0.05 * rng.standard_normal(SR)).astype(np.float32)


def test_slaney_filterbank_is_librosas() -> None:
    librosa = pytest.importorskip("librosa")
    for mels, window in ((150, 2048), (80, 512)):
        ours = spectral.slaney_mel_filterbank(SR, window, mels)
        np.testing.assert_allclose(ours, librosa.filters.mel(sr=SR, n_fft=window, n_mels=mels), atol=1e-7)


def test_mel_distance_superb_matches_the_codec_superb_definition(noisy_pair: tuple[np.ndarray, np.ndarray]) -> None:
    librosa = pytest.importorskip("librosa")
    a, b = noisy_pair
    expected = 0.0
    for mels, window in ((150, 2048), (80, 512)):
        bank = librosa.filters.mel(sr=SR, n_fft=window, n_mels=mels)
        spec = [
            bank @ np.abs(librosa.stft(x.astype(np.float64), n_fft=window, hop_length=window // 4, pad_mode="reflect"))
            for x in (a, b)
        ]
        logs = [np.log10(np.maximum(s, 1e-5) ** 2) for s in spec]
        expected += np.mean(np.abs(logs[0] - logs[1])) + np.mean(np.abs(spec[0] - spec[1]))
    assert metrics.mel_distance_superb(a, b) == pytest.approx(expected, rel=1e-6)
    assert metrics.mel_distance_superb(a, a) == 0.0


def test_mel_distance_superb_of_half_the_signal() -> None:
    """Halving loud noise: every log term is |log10(m^2) - log10(m^2 / 4)| = 2 log10 2 per resolution, and the
    magnitude terms are half the mean mel magnitude."""
    x = (0.3 * np.random.default_rng(3).standard_normal(SR)).astype(np.float32)
    mels = spectral.superb_mel_spectrograms(x)
    assert min(float(m.min()) for m in mels) > 2e-5  # no clamping, so the log terms are exact
    expected = 2 * 2 * math.log10(2) + sum(0.5 * float(m.mean()) for m in mels)
    assert metrics.mel_distance_superb(x, 0.5 * x) == pytest.approx(expected, rel=1e-9)


def test_log_spectral_distance_matches_versa(noisy_pair: tuple[np.ndarray, np.ndarray]) -> None:
    librosa = pytest.importorskip("librosa")
    ref, est = (x.astype(np.float64) for x in noisy_pair)
    eps = 1e-8
    est = est * (np.sum(ref * est) / (np.sum(est**2) + eps))
    r = np.abs(librosa.stft(ref, hop_length=384, n_fft=768)).T
    e = np.abs(librosa.stft(est, hop_length=384, n_fft=768)).T
    expected = np.mean(np.mean(np.log(r**2 / (e + eps) ** 2 + eps) ** 2, axis=1) ** 0.5)
    assert metrics.log_spectral_distance(*noisy_pair) == pytest.approx(expected, rel=1e-9)


def test_log_spectral_distance_ignores_gain_and_grows_with_noise(noisy_pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, b = noisy_pair
    assert metrics.log_spectral_distance(a, 3.0 * a) < 1e-6
    rng = np.random.default_rng(1)
    worse = (a + 0.2 * rng.standard_normal(a.size)).astype(np.float32)
    assert metrics.log_spectral_distance(a, worse) > metrics.log_spectral_distance(a, b) > 0.1


@pytest.mark.parametrize("frequency", [90.0, 200.0, 440.0])
def test_pitch_track_finds_a_tone(frequency: float) -> None:
    f0 = metrics.pitch_track(_tone(frequency))
    assert (f0 > 0).mean() > 0.95
    assert np.median(f0[f0 > 0]) == pytest.approx(frequency, rel=2e-3)


def test_pitch_track_silence_and_noise_are_unvoiced() -> None:
    silence = np.zeros(SR, dtype=np.float32)
    assert (metrics.pitch_track(silence) == 0).all()
    noise = (0.3 * np.random.default_rng(2).standard_normal(SR)).astype(np.float32)
    assert (metrics.pitch_track(noise) > 0).mean() < 0.1


def test_f0_rmse_and_correlation_known_answers() -> None:
    assert metrics.f0_rmse(_tone(200.0), _tone(220.0)) == pytest.approx(20.0, rel=0.01)
    assert metrics.f0_rmse(_tone(200.0), _tone(200.0, amplitude=0.1)) < 0.5
    t = np.arange(SR) / SR
    glide = _tone(150.0 + 100.0 * t)
    assert metrics.f0_correlation(glide, 0.3 * glide) > 0.999
    assert metrics.f0_correlation(glide, _tone(250.0 - 100.0 * t)) < -0.99  # the contour reversed


def test_f0_needs_voiced_frames() -> None:
    silence = np.zeros(SR, dtype=np.float32)
    with pytest.raises(ValueError, match="voiced"):
        metrics.f0_rmse(silence, silence)


def test_evaluate_names_the_new_metrics(noisy_pair: tuple[np.ndarray, np.ndarray]) -> None:
    a, _ = noisy_pair
    tone = _tone(200.0)
    result = metrics.evaluate(
        tone, tone, metrics=("mel_distance_superb", "log_spectral_distance", "f0_rmse", "f0_correlation")
    )
    assert result.mel_distance_superb == 0.0 and result.f0_rmse == 0.0
    # The published LSD adds eps to magnitudes: a pure tone's near-empty bins (|X| ~ 1e-8) keep it above 0 even
    # for identical signals, while broadband audio scores 0.
    assert result.log_spectral_distance is not None and result.log_spectral_distance > 0.1
    assert metrics.evaluate(a, a, metrics=("log_spectral_distance",)).log_spectral_distance == pytest.approx(
        0, abs=1e-6
    )
    assert metrics.available_metrics()["f0_rmse"] is True
