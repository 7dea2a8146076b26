"""Objective metrics: compare a reference recording with a codec's output, or score one recording alone.

Measurement layer (the `[eval]` extra). Below it: `mimistack.config` (sample rate, frame size). Above it:
`mimistack.analysis` (per-level sweeps and reports) and the CLI, which call `evaluate`.

Two kinds of metric live here:

- pure numpy, always available (defined in `mimistack.spectral`, re-exported here): `si_sdr`, `snr`,
  `multi_resolution_stft_distance`, `mel_distance`, `mel_distance_superb` (Codec-SUPERB's mel distance),
  `stft_distance_superb`, `waveform_l1`, `log_spectral_distance` (VERSA's LSD), `f0_rmse` and `f0_correlation`
  (YIN pitch on voiced frames), and `word_error_rate` (on text);
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

from .config import SAMPLE_RATE
from .errors import MimistackError
from .spectral import (
    check_pair,
    check_pcm,
    check_rate,
    f0_correlation,
    f0_rmse,
    log_spectral_distance,
    mel_distance,
    mel_distance_superb,
    multi_resolution_stft_distance,
    pitch_track,
    si_sdr,
    snr,
    stft_distance_superb,
    waveform_l1,
)

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

_PESQ_RATE = 16_000


class MissingDependencyError(MimistackError, ImportError):
    """An optional package that a metric needs is not installed; the message says how to install it."""


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
    sample_rate = check_rate(sample_rate)
    ref, est = check_pair(reference, estimate, sample_rate)
    pystoi = _require("stoi", "pystoi")
    return float(pystoi.stoi(ref, est, sample_rate, extended=extended))


def pesq_wb(reference: np.ndarray, estimate: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """Wide-band PESQ (ITU-T P.862.2) MOS-LQO, about 1..4.64, higher is better (pesq).

    Signals `[N]` are resampled to the 16 kHz that wide-band PESQ requires.
    """
    sample_rate = check_rate(sample_rate)
    ref, est = check_pair(reference, estimate, sample_rate)
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
    sample_rate = check_rate(sample_rate)
    ref, est = check_pair(reference, estimate, sample_rate)
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
    sample_rate = check_rate(sample_rate)
    audio = check_pcm(pcm, "pcm")
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
    sample_rate = check_rate(sample_rate)
    first = check_pcm(a, "a")
    second = check_pcm(b, "b")
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
    sample_rate = check_rate(sample_rate)
    audio = check_pcm(pcm, "pcm")
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
    sample_rate = check_rate(sample_rate)
    ref, est = check_pair(reference, estimate, sample_rate)

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
