"""The pieces every analysis report is written with: column labels, number formats, CSV and Markdown tables, the
random-weights banner, the report folder and its files.

Sits on `scoring` (`AnalysisError`) and `_files` (every file is written atomically, replacing the report's own
earlier file); used by `level_sweep`, `report`, `quality` and `plots` (the labels), and by `cli.ops`
(`RANDOM_BANNER`).
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

from .._files import write_text
from .scoring import AnalysisError

RANDOM_BANNER = (
    "RANDOM WEIGHTS: this report was produced with random weights. The decoded audio is noise and "
    "every score below says nothing about Mimi's quality. Use the real weights (kyutai/mimi)."
)

COLUMNS: dict[str, tuple[str, bool]] = {
    "si_sdr": ("SI-SDR (dB)", True),
    "snr": ("SNR (dB)", True),
    "stft_distance": ("MR-STFT distance", False),
    "mel_distance": ("mel distance", False),
    "mel_distance_superb": ("mel distance (Codec-SUPERB)", False),
    "stft_distance_superb": ("STFT distance (Codec-SUPERB)", False),
    "waveform_l1": ("waveform L1", False),
    "token_agreement": ("re-encoded tokens equal", True),
    "token_edit_distance": ("re-encoded token edit distance", False),
    "log_spectral_distance": ("LSD", False),
    "f0_rmse": ("F0 RMSE (Hz)", False),
    "f0_correlation": ("F0 correlation", True),
    "stoi": ("STOI", True),
    "pesq_wb": ("PESQ-WB", True),
    "visqol": ("ViSQOL", True),
    "word_error_rate": ("WER", False),
    "speaker_similarity": ("speaker similarity", True),
    "dnsmos_overall": ("DNSMOS overall", True),
    "dnsmos_signal": ("DNSMOS signal", True),
    "dnsmos_background": ("DNSMOS background", True),
    "dnsmos_p808": ("DNSMOS P.808", True),
}
"""Metric column -> (label, higher is better)."""

Cell = str | int | float | None


def heading(column: str) -> str:
    label, higher = COLUMNS[column]
    return f"{label} {'↑' if higher else '↓'}"


def prepare_dir(out_dir: str | os.PathLike[str], force: bool) -> Path:
    """The report folder, created; one that holds anything already is refused unless `force`."""
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise AnalysisError(f"{folder} exists and is not a folder")
    if folder.exists() and any(folder.iterdir()) and not force:
        raise AnalysisError(f"{folder} exists and is not empty; pass force=True (CLI: --force) to write into it")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_report_text(path: Path, text: str) -> Path:
    """One report file; a rerun into the same folder (allowed by `prepare_dir`) replaces it."""
    return write_text(path, text, force=True)


def csv_text(header: Sequence[str], rows: Sequence[Sequence[Cell]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if value is None else value for value in row])
    return buffer.getvalue()


def number(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def csv_number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return ""
    return f"{value:.6g}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


CODEC_SUPERB_FIELDS: dict[str, str] = {
    "mel": "mel_distance_superb",
    "stft": "stft_distance_superb",
    "waveform": "waveform_l1",
    "pesq": "pesq_wb",
    "pesq-wb": "pesq_wb",
    "stoi": "stoi",
    "f0corr": "f0_correlation",
}
"""Field of a Codec-SUPERB result entry -> the mimistack metric that fills it. Codec-SUPERB's "pesq" and
"pesq-wb" are both wide-band PESQ at 16 kHz; its "f0corr" is parselmouth pitch with DTW alignment, ours is YIN
without warping (`metrics.f0_correlation`), so that one field is comparable in kind, not digit for digit."""


def codec_superb_entry(codec_name: str, scores: dict[str, float | None]) -> dict[str, dict[str, dict[str, float]]]:
    """One result entry in Codec-SUPERB's layout, `{codec: {"Speech": {field: value}, "overall": {...}}}`, from
    mean metric values (`scores`: metric name -> value); fields whose metric was not measured are left out."""
    fields = {
        field: float(value)
        for field, metric in CODEC_SUPERB_FIELDS.items()
        if (value := scores.get(metric)) is not None
    }
    return {codec_name: {"Speech": dict(fields), "overall": dict(fields)}}


def codec_superb_name(num_levels: int, random: bool) -> str:
    """The codec name of a result entry: `mimi_8q` (8 levels); `mimi-RANDOM-WEIGHTS_8q` for random weights, so that
    an entry pasted into a leaderboard cannot pass for Mimi's."""
    return f"mimi{'-RANDOM-WEIGHTS' if random else ''}_{num_levels}q"


def weights_lines(label: str, sha256: str, random: bool) -> list[str]:
    """Which weights produced a report, led by the banner when they are random."""
    lines = [f"Weights: `{label}`, sha256 `{sha256 or 'unknown'}`.", ""]
    if random:
        lines = [f"> **{RANDOM_BANNER}**", "", *lines]
    return lines
