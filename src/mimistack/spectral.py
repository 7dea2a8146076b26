"""Signal measures in pure numpy, always available: the input checks every metric shares, SI-SDR and SNR,
spectral distances (multi-resolution STFT, mel, Codec-SUPERB's mel and STFT distances, waveform L1, VERSA's
log-spectral distance) and pitch (YIN, F0 RMSE and correlation on voiced frames).

Sits on `config` only (the measurement layer, below `metrics`); used by `metrics`, which adds the metrics of
optional packages and `evaluate`, and re-exports the public names here. Every signal is mono PCM, a float 1-D
array `[N]` in [-1, 1]; two-signal measures trim both to the shorter one and refuse a length difference of more
than one token frame (80 ms).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from .config import FRAME_SIZE, SAMPLE_RATE

_MAX_RATIO_DB = 200.0
"""Energy ratios are capped here, so an exact (scaled) copy gives a large finite number, not inf."""
_STFT_SIZES = (512, 1024, 2048)
_MAGNITUDE_FLOOR = 1e-5


# ---------------------------------------------------------------------------------------------------------------
# Input checks


def check_pcm(pcm: Any, name: str) -> np.ndarray:
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


def check_rate(sample_rate: int) -> int:
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int | np.integer) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    return int(sample_rate)


def check_pair(reference: Any, estimate: Any, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """Validate two signals `[N]`, `[M]` and trim both to min(N, M); |N - M| may be at most one frame (80 ms)."""
    ref = check_pcm(reference, "reference")
    est = check_pcm(estimate, "estimate")
    tolerance = round(FRAME_SIZE * sample_rate / SAMPLE_RATE)
    if abs(ref.size - est.size) > tolerance:
        raise ValueError(
            f"reference has {ref.size} samples and estimate {est.size}: they differ by more than one frame "
            f"({tolerance} samples at {sample_rate} Hz), so they are not the same recording"
        )
    length = min(ref.size, est.size)
    return ref[:length], est[:length]


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
    ref, est = check_pair(reference, estimate)
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
    ref, est = check_pair(reference, estimate)
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
    ref, est = check_pair(reference, estimate)
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
    sample_rate = check_rate(sample_rate)
    ref, est = check_pair(reference, estimate, sample_rate)
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
    signal = check_pcm(pcm, "pcm")
    sample_rate = check_rate(sample_rate)
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
    sample_rate = check_rate(sample_rate)
    ref, est = check_pair(reference, estimate, sample_rate)
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
    ref, est = check_pair(reference, estimate)
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
    ref, est = check_pair(reference, estimate)
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
    sample_rate = check_rate(sample_rate)
    ref, est = check_pair(reference, estimate, sample_rate)
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
    signal = check_pcm(pcm, "pcm")
    sample_rate = check_rate(sample_rate)
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
    sample_rate = check_rate(sample_rate)
    ref, est = check_pair(reference, estimate, sample_rate)
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
