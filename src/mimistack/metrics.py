"""Objective metrics: compare a reference recording with a codec's output, or score one recording alone.

Measurement layer (the `[eval]` extra). Below it: `mimistack.config` (sample rate, frame size). Above it:
`mimistack.analysis` (per-level sweeps and reports) and the CLI, which call `evaluate`.

Two kinds of metric live here:

- pure numpy, always available: `si_sdr`, `snr`, `multi_resolution_stft_distance`, `mel_distance`,
  `mel_distance_superb` (Codec-SUPERB's mel distance), `log_spectral_distance` (VERSA's LSD), `f0_rmse` and
  `f0_correlation` (YIN pitch on voiced frames), `word_error_rate` (on text);
- wrappers around optional packages, each raising `MissingDependencyError` with the exact install command when
  its package is missing: `stoi` (pystoi), `pesq_wb` (pesq), `visqol` (visqol-python), `transcribe` (pocketsphinx),
  `speaker_similarity` (resemblyzer), `dnsmos` (speechmos).

Every signal is mono PCM, a float 1-D array `[N]` in [-1, 1]. Two-signal metrics trim both to the shorter one
and refuse a length difference of more than one token frame (80 ms), which a codec's padding can explain but a
wrong file cannot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import importlib.util
import logging
import re
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any

import numpy as np

from .config import FRAME_SIZE, SAMPLE_RATE
from .errors import MimistackError

__all__ = [
    "ALL_METRICS",
    "DEFAULT_METRICS",
    "DnsmosScores",
    "MetricResult",
    "MissingDependencyError",
    "available_metrics",
    "dnsmos",
    "evaluate",
    "f0_correlation",
    "f0_rmse",
    "log_spectral_distance",
    "mel_distance",
    "mel_distance_superb",
    "multi_resolution_stft_distance",
    "pesq_wb",
    "pitch_track",
    "si_sdr",
    "snr",
    "speaker_similarity",
    "stft_distance_superb",
    "stoi",
    "transcribe",
    "visqol",
    "waveform_l1",
    "word_error_rate",
]

logger = logging.getLogger(__name__)

_EVAL_HINT = "pip install 'mimistack[eval]'"
# Exact commands, for packages that the `[eval]` extra cannot install by itself.
_RESEMBLYZER_HINT = (
    "pip install --no-deps resemblyzer && pip install librosa webrtcvad-wheels "
    "(--no-deps: resemblyzer's own requirements would pull another torch and an unbuildable webrtcvad)"
)
_DNSMOS_HINT = "pip install speechmos librosa requests"
_VISQOL_HINT = "pip install 'visqol-python[lattice]'"

# metric name -> (modules it imports, install hint). Metric names are also `MetricResult` field names.
_REQUIREMENTS: dict[str, tuple[tuple[str, ...], str]] = {
    "si_sdr": ((), ""),
    "snr": ((), ""),
    "stft_distance": ((), ""),
    "mel_distance": ((), ""),
    "mel_distance_superb": ((), ""),
    "stft_distance_superb": ((), ""),
    "waveform_l1": ((), ""),
    "log_spectral_distance": ((), ""),
    "f0_rmse": ((), ""),
    "f0_correlation": ((), ""),
    "stoi": (("pystoi",), f"{_EVAL_HINT} (or: pip install pystoi)"),
    "pesq_wb": (("pesq",), f"{_EVAL_HINT} (or: pip install pesq)"),
    "visqol": (("visqol", "ai_edge_litert"), _VISQOL_HINT),
    "word_error_rate": (("pocketsphinx",), f"{_EVAL_HINT} (or: pip install pocketsphinx)"),
    "speaker_similarity": (("resemblyzer", "librosa", "webrtcvad", "torch"), _RESEMBLYZER_HINT),
    "dnsmos": (("speechmos", "librosa", "requests"), _DNSMOS_HINT),
}

ALL_METRICS: tuple[str, ...] = tuple(_REQUIREMENTS)
"""Every name `evaluate` accepts."""
DEFAULT_METRICS: tuple[str, ...] = ("si_sdr", "snr", "stft_distance", "mel_distance")
"""The metrics `evaluate` computes by default: pure numpy, fast, no model."""

_MAX_RATIO_DB = 200.0
"""Energy ratios are capped here, so an exact (scaled) copy gives a large finite number, not inf."""
_PESQ_RATE = 16_000
_STFT_SIZES = (512, 1024, 2048)
_MAGNITUDE_FLOOR = 1e-5


class MissingDependencyError(MimistackError, ImportError):
    """An optional package that a metric needs is not installed; the message says how to install it."""


# ---------------------------------------------------------------------------------------------------------------
# Input checks


def _check_pcm(pcm: Any, name: str) -> np.ndarray:
    """Validate one mono float signal `[N]` and return it as float64."""
    if not isinstance(pcm, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(pcm).__name__}")
    if not np.issubdtype(pcm.dtype, np.floating):
        raise ValueError(f"{name} must be float PCM in [-1, 1] (float32), got dtype {pcm.dtype}")
    if pcm.ndim != 1:
        raise ValueError(f"{name} must be mono, shape [N], got shape {pcm.shape}")
    if pcm.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(pcm)):
        bad = int(np.count_nonzero(~np.isfinite(pcm)))
        raise ValueError(f"{name} has {bad} NaN or infinite samples")
    return pcm.astype(np.float64)


def _check_rate(sample_rate: int) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    return int(sample_rate)


def _check_pair(reference: Any, estimate: Any, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """Validate two signals `[N]`, `[M]` and trim both to min(N, M); |N - M| may be at most one frame (80 ms)."""
    ref = _check_pcm(reference, "reference")
    est = _check_pcm(estimate, "estimate")
    tolerance = round(FRAME_SIZE * sample_rate / SAMPLE_RATE)
    if abs(ref.size - est.size) > tolerance:
        raise ValueError(
            f"reference has {ref.size} samples and estimate {est.size}: they differ by more than one frame "
            f"({tolerance} samples at {sample_rate} Hz), so they are not the same recording"
        )
    length = min(ref.size, est.size)
    return ref[:length], est[:length]


def _require(metric: str, module: str) -> ModuleType:
    """Import `module` for `metric`, or raise `MissingDependencyError` with the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        hint = _REQUIREMENTS[metric][1]
        raise MissingDependencyError(f"{metric} needs the {module!r} module: {hint}") from error


def _resample(pcm: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    """Resample `[N]` to `[N * target_rate / sample_rate]` (float32), soxr high quality."""
    if sample_rate == target_rate:
        return pcm.astype(np.float32)
    import soxr

    resampled: np.ndarray = soxr.resample(pcm.astype(np.float32), sample_rate, target_rate, quality="HQ")
    return resampled.astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Pure numpy metrics


def _ratio_db(signal_energy: float, noise_energy: float) -> float:
    noise_energy = max(noise_energy, signal_energy * 10.0 ** (-_MAX_RATIO_DB / 10.0))
    return float(10.0 * np.log10(signal_energy / noise_energy))


def si_sdr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Scale-invariant signal-to-distortion ratio in dB (Le Roux et al., 2019); higher is better.

    Both signals `[N]` are made zero-mean; the reference is scaled to best match the estimate, and what remains
    is distortion. An exact scaled copy gives 200 dB (the cap), not inf.
    """
    ref, est = _check_pair(reference, estimate)
    ref = ref - ref.mean()
    est = est - est.mean()
    ref_energy = float(ref @ ref)
    if ref_energy == 0.0:
        raise ValueError("reference is silent (constant): SI-SDR is undefined")
    target = (float(ref @ est) / ref_energy) * ref
    noise = est - target
    return _ratio_db(float(target @ target), float(noise @ noise))


def snr(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Signal-to-noise ratio in dB, where the noise is `estimate - reference` (not scale invariant).

    Signals `[N]`. An exact copy gives 200 dB (the cap), not inf.
    """
    ref, est = _check_pair(reference, estimate)
    ref_energy = float(ref @ ref)
    if ref_energy == 0.0:
        raise ValueError("reference is silent (all zeros): SNR is undefined")
    noise = est - ref
    return _ratio_db(ref_energy, float(noise @ noise))


def _stft_magnitude(pcm: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    """Magnitude STFT of `[N]` -> `[frames, n_fft // 2 + 1]`, periodic Hann window, centred with zero padding."""
    padded = np.pad(pcm, (n_fft // 2, n_fft // 2))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
    return np.abs(np.fft.rfft(frames * window, axis=-1))


def multi_resolution_stft_distance(
    reference: np.ndarray, estimate: np.ndarray, *, fft_sizes: Sequence[int] = _STFT_SIZES
) -> float:
    """Multi-resolution STFT distance (as in Parallel WaveGAN / auraloss); 0 for identical signals, lower is better.

    For each FFT size (hop = size / 4, Hann window) on the magnitudes S_ref, S_est `[frames, bins]`:
    spectral convergence ‖S_ref − S_est‖_F / ‖S_ref‖_F plus the mean |log S_ref − log S_est| (magnitudes floored
    at 1e-5); the result is the mean of that sum over the sizes.
    """
    ref, est = _check_pair(reference, estimate)
    if not fft_sizes or any(int(size) < 2 for size in fft_sizes):
        raise ValueError(f"fft_sizes must be sizes of at least 2, got {tuple(fft_sizes)}")
    distances = []
    for n_fft in fft_sizes:
        ref_mag = _stft_magnitude(ref, int(n_fft), int(n_fft) // 4)
        est_mag = _stft_magnitude(est, int(n_fft), int(n_fft) // 4)
        ref_norm = float(np.linalg.norm(ref_mag))
        difference = float(np.linalg.norm(ref_mag - est_mag))
        convergence = difference / ref_norm if ref_norm > 0.0 else (0.0 if difference == 0.0 else 1.0)
        log_ref = np.log(np.maximum(ref_mag, _MAGNITUDE_FLOOR))
        log_est = np.log(np.maximum(est_mag, _MAGNITUDE_FLOOR))
        distances.append(convergence + float(np.mean(np.abs(log_ref - log_est))))
    return float(np.mean(distances))


def _hz_to_mel(frequency: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + frequency / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@functools.lru_cache(maxsize=8)
def _mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """Triangular mel filters `[n_mels, n_fft // 2 + 1]` (HTK mel scale, 0 Hz to Nyquist, each of unit area)."""
    fft_frequencies = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(0.0, _hz_to_mel(np.array(sample_rate / 2.0)), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (fft_frequencies - lower) / (centre - lower)
    falling = (upper - fft_frequencies) / (upper - centre)
    filters = np.maximum(0.0, np.minimum(rising, falling))
    return np.asarray(filters * (2.0 / (upper - lower)))


def mel_distance(
    reference: np.ndarray,
    estimate: np.ndarray,
    *,
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = 1024,
    hop_length: int = 256,
    n_mels: int = 80,
) -> float:
    """Mean absolute difference of log10 mel magnitude spectrograms `[frames, n_mels]`; 0 for identical signals.

    The usual vocoder/codec "mel loss": Hann-windowed magnitude STFT, triangular HTK-scale mel filters up to
    Nyquist, magnitudes floored at 1e-5 before the log.
    """
    sample_rate = _check_rate(sample_rate)
    ref, est = _check_pair(reference, estimate, sample_rate)
    filters = _mel_filterbank(sample_rate, n_fft, n_mels)
    ref_mel = _stft_magnitude(ref, n_fft, hop_length) @ filters.T
    est_mel = _stft_magnitude(est, n_fft, hop_length) @ filters.T
    log_ref = np.log10(np.maximum(ref_mel, _MAGNITUDE_FLOOR))
    log_est = np.log10(np.maximum(est_mel, _MAGNITUDE_FLOOR))
    return float(np.mean(np.abs(log_ref - log_est)))


# ---------------------------------------------------------------------------------------------------------------
# Codec-SUPERB / VERSA spectral distances and pitch


def _stft_magnitude_reflect(pcm: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    """Magnitude STFT `[frames, n_fft // 2 + 1]` as `torch.stft(center=True)` and `librosa.stft` compute it: periodic
    Hann window of `n_fft`, the signal reflect-padded by `n_fft // 2` on both sides, `1 + N // hop` frames."""
    pad = n_fft // 2
    if pcm.size <= pad:
        raise ValueError(f"the signal ({pcm.size} samples) is too short for a {n_fft}-point STFT")
    padded = np.pad(pcm, (pad, pad), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop_length]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
    return np.abs(np.fft.rfft(frames * window, axis=-1))


def _slaney_hz_to_mel(frequency: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa's default, `htk=False`): linear below 1 kHz, logarithmic above."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    logstep = np.log(6.4) / 27.0
    frequency = np.asarray(frequency, dtype=np.float64)
    mel = frequency / f_sp
    return np.where(
        frequency >= min_log_hz,
        min_log_hz / f_sp + np.log(np.maximum(frequency, 1e-12) / min_log_hz) / logstep,
        mel,
    )


def _slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    mel = np.asarray(mel, dtype=np.float64)
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


@functools.lru_cache(maxsize=8)
def slaney_mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """`librosa.filters.mel(sr, n_fft, n_mels, fmin, fmax)` with its defaults (Slaney scale, Slaney area
    normalisation), in numpy: `[n_mels, n_fft // 2 + 1]`. What audiotools (and so Codec-SUPERB) uses."""
    top = sample_rate / 2.0 if fmax is None else float(fmax)
    fft_frequencies = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    edges = _slaney_mel_to_hz(
        np.linspace(_slaney_hz_to_mel(np.array(fmin)), _slaney_hz_to_mel(np.array(top)), n_mels + 2)
    )
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_frequencies[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    return np.asarray(weights * (2.0 / (edges[2 : n_mels + 2] - edges[:n_mels]))[:, None])


_SUPERB_MEL_BANDS = ((150, 2048), (80, 512))
_SUPERB_CLAMP = 1e-5


def superb_mel_spectrograms(pcm: np.ndarray, sample_rate: int = SAMPLE_RATE) -> list[np.ndarray]:
    """The two mel magnitude spectrograms `[frames, n_mels]` Codec-SUPERB's mel distance compares (150 mels at a
    2048-sample window, 80 at 512, hop a quarter of the window)."""
    signal = _check_pcm(pcm, "pcm")
    sample_rate = _check_rate(sample_rate)
    return [
        _stft_magnitude_reflect(signal, window, window // 4) @ slaney_mel_filterbank(sample_rate, window, mels).T
        for mels, window in _SUPERB_MEL_BANDS
    ]


def mel_distance_superb(reference: np.ndarray, estimate: np.ndarray, *, sample_rate: int = SAMPLE_RATE) -> float:
    """Codec-SUPERB's mel distance; 0 for identical signals, lower is better.

    Definition (Codec-SUPERB `src/codec_metrics/mel_loss.py` and `SoundCodec/metrics.py: MelSpectrogramLoss`, the
    DAC mel loss through audiotools): for (n_mels, window) in ((150, 2048), (80, 512)), hop = window / 4, Hann
    window, centred reflect-padded STFT magnitudes, mel filters of `librosa.filters.mel` (Slaney), fmin 0, fmax
    Nyquist, at the files' own rate (no resampling):
    `sum over both of mean|log10(max(M_ref, 1e-5)^2) - log10(max(M_est, 1e-5)^2)| + mean|M_ref - M_est|`
    (log weight 1, magnitude weight 1, pow 2).
    """
    sample_rate = _check_rate(sample_rate)
    ref, est = _check_pair(reference, estimate, sample_rate)
    total = 0.0
    for ref_mel, est_mel in zip(superb_mel_spectrograms(ref, sample_rate), superb_mel_spectrograms(est, sample_rate)):
        log_ref = np.log10(np.maximum(ref_mel, _SUPERB_CLAMP) ** 2)
        log_est = np.log10(np.maximum(est_mel, _SUPERB_CLAMP) ** 2)
        total += float(np.mean(np.abs(log_ref - log_est))) + float(np.mean(np.abs(ref_mel - est_mel)))
    return total


def stft_distance_superb(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Codec-SUPERB's STFT distance ("stft" in its results); 0 for identical signals, lower is better.

    Definition (Codec-SUPERB `SoundCodec/metrics.py: MultiScaleSTFTLoss`, DAC's loss): for windows 2048 and 512,
    hop = window / 4, Hann, centred reflect-padded STFT magnitudes S:
    `sum over both of mean|log10(max(S_ref, 1e-5)^2) - log10(max(S_est, 1e-5)^2)| + mean|S_ref - S_est|`.
    """
    ref, est = _check_pair(reference, estimate)
    total = 0.0
    for window in (2048, 512):
        ref_mag = _stft_magnitude_reflect(ref, window, window // 4)
        est_mag = _stft_magnitude_reflect(est, window, window // 4)
        log_ref = np.log10(np.maximum(ref_mag, _SUPERB_CLAMP) ** 2)
        log_est = np.log10(np.maximum(est_mag, _SUPERB_CLAMP) ** 2)
        total += float(np.mean(np.abs(log_ref - log_est))) + float(np.mean(np.abs(ref_mag - est_mag)))
    return total


def waveform_l1(reference: np.ndarray, estimate: np.ndarray) -> float:
    """Mean absolute sample difference ("waveform" in Codec-SUPERB's results: `L1Loss` on the audio)."""
    ref, est = _check_pair(reference, estimate)
    return float(np.mean(np.abs(ref - est)))


def log_spectral_distance(
    reference: np.ndarray,
    estimate: np.ndarray,
    *,
    sample_rate: int = SAMPLE_RATE,
    fft_seconds: float = 0.032,
    hop_seconds: float = 0.016,
    eps: float = 1e-8,
) -> float:
    """Log-spectral distance (LSD), as VERSA and the URGENT challenge define it; 0 for a scaled copy, lower is
    better.

    Codec-SUPERB itself defines no LSD (its spectral measure is the STFT and mel distance); this is the definition
    of VERSA (`versa/utterance_metrics/...` after URGENT 2025 `evaluation_metrics/calculate_intrusive_se_metrics.py:
    lsd_metric`): the estimate is first scaled by `sum(ref * est) / (sum(est^2) + eps)`; with centred STFT
    magnitudes R, E `[frames, bins]` (n_fft = 32 ms, hop = 16 ms, Hann),
    `LSD = mean over frames of sqrt(mean over bins of ln(R^2 / (E + eps)^2 + eps)^2)`. As published, eps is
    added to magnitudes, so signals with near-empty bins (|X| ~ 1e-8, e.g. a pure tone) score above 0 even
    against themselves; broadband audio scores 0 against a scaled copy.
    """
    sample_rate = _check_rate(sample_rate)
    ref, est = _check_pair(reference, estimate, sample_rate)
    est = est * (float(ref @ est) / (float(est @ est) + eps))
    n_fft, hop = int(sample_rate * fft_seconds), int(sample_rate * hop_seconds)
    ref_spec = _stft_magnitude(ref, n_fft, hop)  # librosa.stft's defaults: centred, zero-padded, periodic Hann
    est_spec = _stft_magnitude(est, n_fft, hop)
    ratio = np.log(ref_spec**2 / (est_spec + eps) ** 2 + eps) ** 2
    return float(np.mean(np.sqrt(np.mean(ratio, axis=1))))


_F0_MIN, _F0_MAX = 50.0, 800.0
_YIN_THRESHOLD = 0.15
_F0_HOP_SECONDS = 0.01
_SILENCE_DB = 40.0


def pitch_track(
    pcm: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    *,
    f0_min: float = _F0_MIN,
    f0_max: float = _F0_MAX,
    hop_seconds: float = _F0_HOP_SECONDS,
    threshold: float = _YIN_THRESHOLD,
) -> np.ndarray:
    """F0 in Hz every `hop_seconds` (0 where unvoiced), by YIN (de Cheveigné & Kawahara, JASA 2002).

    pyworld, the usual choice, does not import on current setuptools here, so this numpy YIN stands in: per frame
    (window = 2 periods of `f0_min`), the cumulative-mean-normalised difference function d'(tau); the first tau in
    [sr/f0_max, sr/f0_min] with d'(tau) < `threshold`, moved to its local minimum and refined by parabolic
    interpolation, gives f0 = sr / tau. A frame is voiced when such a tau exists and its RMS is within 40 dB of
    the loudest frame's.
    """
    signal = _check_pcm(pcm, "pcm")
    sample_rate = _check_rate(sample_rate)
    if not 0 < f0_min < f0_max < sample_rate / 2:
        raise ValueError(f"need 0 < f0_min < f0_max < Nyquist, got {f0_min}, {f0_max}")
    tau_min, tau_max = max(2, int(sample_rate / f0_max)), int(np.ceil(sample_rate / f0_min))
    width = tau_max  # integration window
    hop = max(1, round(hop_seconds * sample_rate))
    span = width + tau_max + 1
    count = 1 + len(signal) // hop
    padded = np.pad(signal, (span // 2, span))
    frames = np.lib.stride_tricks.sliding_window_view(padded, span)[::hop][:count]
    size = 1 << int(np.ceil(np.log2(2 * span)))
    spectrum = np.fft.rfft(frames, size, axis=1)
    head = np.fft.rfft(frames[:, :width], size, axis=1)
    correlation = np.fft.irfft(np.conj(head) * spectrum, size, axis=1)[:, : tau_max + 1]
    squares = np.concatenate([np.zeros((len(frames), 1)), np.cumsum(frames**2, axis=1)], axis=1)
    energy_0 = squares[:, width][:, None]
    taus = np.arange(tau_max + 1)
    energy_tau = squares[:, taus + width] - squares[:, taus]
    difference = np.maximum(energy_0 + energy_tau - 2.0 * correlation, 0.0)
    cumulative = np.cumsum(difference[:, 1:], axis=1)
    normalised = np.ones_like(difference)
    normalised[:, 1:] = difference[:, 1:] * taus[1:] / np.maximum(cumulative, 1e-12)
    rms = np.sqrt(energy_0[:, 0] / width)
    loud = rms > (rms.max() * 10.0 ** (-_SILENCE_DB / 20.0) if rms.max() > 0 else np.inf)
    f0 = np.zeros(len(frames))
    for index in np.flatnonzero(loud):
        row = normalised[index]
        below = np.flatnonzero(row[tau_min : tau_max + 1] < threshold)
        if below.size == 0:
            continue
        tau = tau_min + int(below[0])
        while tau + 1 <= tau_max and row[tau + 1] < row[tau]:
            tau += 1
        shift = 0.0
        if tau_min < tau < tau_max:
            a, b, c = row[tau - 1], row[tau], row[tau + 1]
            denominator = a - 2 * b + c
            shift = 0.5 * (a - c) / denominator if denominator > 0 else 0.0
        f0[index] = sample_rate / (tau + shift)
    return f0


def _voiced_pair(reference: np.ndarray, estimate: np.ndarray, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    sample_rate = _check_rate(sample_rate)
    ref, est = _check_pair(reference, estimate, sample_rate)
    f0_ref, f0_est = pitch_track(ref, sample_rate), pitch_track(est, sample_rate)
    voiced = (f0_ref > 0) & (f0_est > 0)
    if voiced.sum() < 2:
        raise ValueError("fewer than 2 frames are voiced in both signals: no F0 to compare")
    return f0_ref[voiced], f0_est[voiced]


def f0_rmse(reference: np.ndarray, estimate: np.ndarray, *, sample_rate: int = SAMPLE_RATE) -> float:
    """Root-mean-square F0 difference in Hz over the frames voiced in both (`pitch_track`, 10 ms frames, no time
    warping: a codec keeps time); lower is better. Raises ValueError when fewer than 2 frames are voiced in both."""
    f0_ref, f0_est = _voiced_pair(reference, estimate, sample_rate)
    return float(np.sqrt(np.mean((f0_ref - f0_est) ** 2)))


def f0_correlation(reference: np.ndarray, estimate: np.ndarray, *, sample_rate: int = SAMPLE_RATE) -> float:
    """Pearson correlation of the two F0 tracks over the frames voiced in both (as Codec-SUPERB's F0 correlation
    and VERSA's F0CORR, without their time warping); higher is better. A flat track in either gives 0."""
    f0_ref, f0_est = _voiced_pair(reference, estimate, sample_rate)
    a, b = f0_ref - f0_ref.mean(), f0_est - f0_est.mean()
    denominator = float(np.sqrt((a @ a) * (b @ b)))
    return float(a @ b) / denominator if denominator > 0 else 0.0


def _words(text: str) -> list[str]:
    """Normalise for scoring: case-folded words; punctuation other than in-word apostrophes is dropped."""
    return [word.strip("'") for word in re.findall(r"[\w']+", text.casefold()) if word.strip("'")]


def word_error_rate(reference_text: str, hypothesis_text: str) -> float:
    """(substitutions + deletions + insertions) / reference words, after normalising case and punctuation.

    A word-level Levenshtein distance; can exceed 1 when the hypothesis has many extra words.
    """
    reference = _words(reference_text)
    hypothesis = _words(hypothesis_text)
    if not reference:
        raise ValueError("reference_text has no words: the word error rate is undefined")
    # distances[j] = edits between the reference prefix so far and hypothesis[:j]
    distances = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, start=1):
        diagonal, distances[0] = distances[0], i
        for j, hyp_word in enumerate(hypothesis, start=1):
            substitution = diagonal + (ref_word != hyp_word)
            diagonal = distances[j]
            distances[j] = min(substitution, distances[j] + 1, distances[j - 1] + 1)
    return distances[-1] / len(reference)


# ---------------------------------------------------------------------------------------------------------------
# Wrappers around optional packages


def stoi(
    reference: np.ndarray, estimate: np.ndarray, sample_rate: int = SAMPLE_RATE, *, extended: bool = False
) -> float:
    """Short-time objective intelligibility (Taal et al., 2011), about 0..1, higher is better (pystoi).

    Signals `[N]`; pystoi resamples to its own 10 kHz. `extended=True` gives ESTOI.
    """
    sample_rate = _check_rate(sample_rate)
    ref, est = _check_pair(reference, estimate, sample_rate)
    pystoi = _require("stoi", "pystoi")
    return float(pystoi.stoi(ref, est, sample_rate, extended=extended))


def pesq_wb(reference: np.ndarray, estimate: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """Wide-band PESQ (ITU-T P.862.2) MOS-LQO, about 1..4.64, higher is better (pesq).

    Signals `[N]` are resampled to the 16 kHz that wide-band PESQ requires.
    """
    sample_rate = _check_rate(sample_rate)
    ref, est = _check_pair(reference, estimate, sample_rate)
    pesq = _require("pesq_wb", "pesq")
    ref16 = _resample(ref, sample_rate, _PESQ_RATE)
    est16 = _resample(est, sample_rate, _PESQ_RATE)
    try:
        return float(pesq.pesq(_PESQ_RATE, ref16, est16, "wb"))
    except pesq.PesqError as error:
        raise ValueError(f"PESQ could not score this pair: {type(error).__name__}: {error}") from error


@functools.cache
def _visqol_api() -> Any:
    visqol_module = _require("visqol", "visqol")
    _require("visqol", "ai_edge_litert")
    api = visqol_module.VisqolApi()
    # The lattice mapper is what the C++ ViSQOL uses in speech mode; never let it fall back silently.
    api.create(mode="speech", use_lattice_model=True)
    logger.debug("ViSQOL speech-mode model loaded")
    return api


def visqol(reference: np.ndarray, estimate: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """ViSQOL v3 speech-mode MOS-LQO, about 1..4.7 (4.68 for identical speech), higher is better (visqol-python).

    Signals `[N]` are resampled to 16 kHz, the rate of speech mode.
    """
    sample_rate = _check_rate(sample_rate)
    ref, est = _check_pair(reference, estimate, sample_rate)
    api = _visqol_api()
    ref16 = _resample(ref, sample_rate, _PESQ_RATE).astype(np.float64)
    est16 = _resample(est, sample_rate, _PESQ_RATE).astype(np.float64)
    return float(api.measure_from_arrays(ref16, est16, _PESQ_RATE).moslqo)


_decoder_lock = threading.Lock()


@functools.cache
def _speech_decoder() -> Any:
    pocketsphinx = _require("word_error_rate", "pocketsphinx")
    decoder = pocketsphinx.Decoder(loglevel="FATAL")  # default config: the en-us model shipped in the wheel
    logger.debug("pocketsphinx en-us decoder loaded")
    return decoder


def transcribe(pcm: np.ndarray, sample_rate: int = SAMPLE_RATE) -> str:
    """English transcript of `[N]` by pocketsphinx's offline en-us model (lower case, no punctuation).

    A weak recogniser, useful to compare the same utterance before and after a codec, not as an absolute score.
    """
    sample_rate = _check_rate(sample_rate)
    audio = _check_pcm(pcm, "pcm")
    decoder = _speech_decoder()
    audio16 = _resample(audio, sample_rate, 16_000)
    raw = (np.clip(audio16, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
    with _decoder_lock:  # one shared decoder; its utterance state is not thread-safe
        decoder.start_utt()
        decoder.process_raw(raw, full_utt=True)
        decoder.end_utt()
        hypothesis = decoder.hyp()
    return hypothesis.hypstr if hypothesis is not None else ""


@functools.cache
def _voice_encoder() -> Any:
    with warnings.catch_warnings():
        # resemblyzer 0.1.4 imports scipy.ndimage.morphology, deprecated since SciPy 1.8
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=".*scipy.ndimage.morphology.*")
        for module in _REQUIREMENTS["speaker_similarity"][0]:
            _require("speaker_similarity", module)
        resemblyzer = _require("speaker_similarity", "resemblyzer")
    encoder = resemblyzer.VoiceEncoder(device="cpu", verbose=False)
    logger.debug("resemblyzer voice encoder loaded")
    return encoder, resemblyzer


@contextlib.contextmanager
def _single_torch_thread() -> Iterator[None]:
    """Run torch on one thread inside the block, then restore the caller's setting.

    The voice encoder's LSTM runs hundreds of tiny steps; with several OpenMP threads each step ends in a
    spin-wait barrier, which on a busy machine made one embedding ~50x slower (7.6 s instead of 0.1 s on 2 cores).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


_encoder_lock = threading.Lock()


def _speaker_embedding(pcm: np.ndarray, sample_rate: int) -> np.ndarray:
    encoder, resemblyzer = _voice_encoder()
    rate = resemblyzer.hparams.sampling_rate
    wav = resemblyzer.preprocess_wav(_resample(pcm, sample_rate, rate), source_sr=rate)
    if wav.size == 0:
        raise ValueError("no speech left after silence trimming: cannot embed the speaker")
    with _encoder_lock, _single_torch_thread():
        return np.asarray(encoder.embed_utterance(wav))


def speaker_similarity(a: np.ndarray, b: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """Cosine similarity of resemblyzer speaker embeddings of `[N]` and `[M]`, -1..1 (in practice 0..1).

    Different lengths are fine: each signal is embedded on its own. Same-speaker speech scores about 0.8-0.95.
    """
    sample_rate = _check_rate(sample_rate)
    first = _check_pcm(a, "a")
    second = _check_pcm(b, "b")
    embedding_a = _speaker_embedding(first, sample_rate)
    embedding_b = _speaker_embedding(second, sample_rate)
    norm = float(np.linalg.norm(embedding_a) * np.linalg.norm(embedding_b))
    return float(embedding_a @ embedding_b) / norm if norm > 0.0 else 0.0


@dataclasses.dataclass(frozen=True)
class DnsmosScores:
    """DNSMOS P.835 predictions (about 1..5, higher is better) of one recording, no reference needed."""

    overall: float  # OVRL: overall quality
    signal: float  # SIG: speech distortion
    background: float  # BAK: background noise
    p808: float  # P.808 overall MOS, from a second model


def dnsmos(pcm: np.ndarray, sample_rate: int = SAMPLE_RATE) -> DnsmosScores:
    """Non-intrusive DNSMOS scores of `[N]` (speechmos, Microsoft's ONNX models).

    Resampled to 16 kHz and clipped to [-1, 1]; a clip shorter than the model's 9 s window is repeated to
    fill it.
    """
    sample_rate = _check_rate(sample_rate)
    audio = _check_pcm(pcm, "pcm")
    for module in _REQUIREMENTS["dnsmos"][0]:
        _require("dnsmos", module)
    speechmos_dnsmos = _require("dnsmos", "speechmos.dnsmos")
    audio16 = np.clip(_resample(audio, sample_rate, speechmos_dnsmos.SR), -1.0, 1.0)
    # speechmos fills its window by doubling a short clip, which can overshoot into 3 windows; cycling the clip to
    # exactly one window scores the same repeated speech at a third of the cost.
    window = int(speechmos_dnsmos.INPUT_LENGTH * speechmos_dnsmos.SR)
    if audio16.size < window:
        audio16 = np.resize(audio16, window)
    scores = speechmos_dnsmos.run(audio16, speechmos_dnsmos.SR)
    return DnsmosScores(
        overall=float(scores["ovrl_mos"]),
        signal=float(scores["sig_mos"]),
        background=float(scores["bak_mos"]),
        p808=float(scores["p808_mos"]),
    )


# ---------------------------------------------------------------------------------------------------------------
# All together


@dataclasses.dataclass(frozen=True)
class MetricResult:
    """What `evaluate` measured; a field is None when its metric was not asked for."""

    si_sdr: float | None = None  # dB
    snr: float | None = None  # dB
    stft_distance: float | None = None  # multi-resolution STFT distance
    mel_distance: float | None = None  # log10-mel L1
    mel_distance_superb: float | None = None  # Codec-SUPERB's two-resolution mel distance
    stft_distance_superb: float | None = None  # Codec-SUPERB's two-resolution STFT distance
    waveform_l1: float | None = None  # mean absolute sample difference
    log_spectral_distance: float | None = None  # VERSA / URGENT LSD (natural-log power ratio)
    f0_rmse: float | None = None  # Hz, on frames voiced in both
    f0_correlation: float | None = None  # Pearson, on frames voiced in both
    stoi: float | None = None
    pesq_wb: float | None = None
    visqol: float | None = None
    word_error_rate: float | None = None  # of the estimate's transcript against reference_text
    transcript: str | None = None  # the estimate's transcript, set with word_error_rate
    speaker_similarity: float | None = None
    dnsmos: DnsmosScores | None = None  # of the estimate


def evaluate(
    reference: np.ndarray,
    estimate: np.ndarray,
    *,
    sample_rate: int = SAMPLE_RATE,
    metrics: Sequence[str] = DEFAULT_METRICS,
    reference_text: str | None = None,
) -> MetricResult:
    """Compute the named `metrics` (see `ALL_METRICS`) of `estimate` `[M]` against `reference` `[N]`.

    Both are trimmed to the shorter one; they may differ by at most one frame (1920 samples at 24 kHz).
    `word_error_rate` transcribes the estimate and needs `reference_text`.
    """
    if isinstance(metrics, str):
        metrics = (metrics,)
    unknown = [name for name in metrics if name not in _REQUIREMENTS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(ALL_METRICS)}")
    if "word_error_rate" in metrics and not reference_text:
        raise ValueError("word_error_rate needs reference_text, the words spoken in the reference")
    sample_rate = _check_rate(sample_rate)
    ref, est = _check_pair(reference, estimate, sample_rate)

    values: dict[str, Any] = {}
    for name in dict.fromkeys(metrics):
        if name == "si_sdr":
            values[name] = si_sdr(ref, est)
        elif name == "snr":
            values[name] = snr(ref, est)
        elif name == "stft_distance":
            values[name] = multi_resolution_stft_distance(ref, est)
        elif name == "mel_distance":
            values[name] = mel_distance(ref, est, sample_rate=sample_rate)
        elif name == "mel_distance_superb":
            values[name] = mel_distance_superb(ref, est, sample_rate=sample_rate)
        elif name == "stft_distance_superb":
            values[name] = stft_distance_superb(ref, est)
        elif name == "waveform_l1":
            values[name] = waveform_l1(ref, est)
        elif name == "log_spectral_distance":
            values[name] = log_spectral_distance(ref, est, sample_rate=sample_rate)
        elif name == "f0_rmse":
            values[name] = f0_rmse(ref, est, sample_rate=sample_rate)
        elif name == "f0_correlation":
            values[name] = f0_correlation(ref, est, sample_rate=sample_rate)
        elif name == "stoi":
            values[name] = stoi(ref, est, sample_rate)
        elif name == "pesq_wb":
            values[name] = pesq_wb(ref, est, sample_rate)
        elif name == "visqol":
            values[name] = visqol(ref, est, sample_rate)
        elif name == "word_error_rate":
            values["transcript"] = transcribe(est, sample_rate)
            values[name] = word_error_rate(reference_text or "", values["transcript"])
        elif name == "speaker_similarity":
            values[name] = speaker_similarity(ref, est, sample_rate)
        elif name == "dnsmos":
            values[name] = dnsmos(est, sample_rate)
    return MetricResult(**values)


def _installed(module: str) -> bool:
    if module in sys.modules:  # also honours a module blocked with sys.modules[name] = None
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def available_metrics() -> dict[str, bool]:
    """Metric name -> whether the packages it needs are installed (checked without importing them)."""
    return {name: all(_installed(module) for module in modules) for name, (modules, _) in _REQUIREMENTS.items()}
