"""What each level carries, measured: level sweeps, per-level token statistics and quality tables, with reports.

Measurement layer. Below it: `codec` (decoding), `metrics` (every score), `ops` (`LevelStats`, re-exported here as
`level_stats`), `tokens`, `levels`, `audio` (writing the wav files). Above it: `cli_ops` (`mimistack sweep`,
`stats`, `quality`). Plots use matplotlib's object API with the Agg canvas (no pyplot, no display), from the
`[eval]` extra.

* `sweep(codec, pcm, out_dir=...)` decodes every prefix 1..32, each level alone ("solo") and all levels but one
  ("without"), scores each against the original and writes `results.csv`, `results.md`, PNG plots, the decoded
  wav files and an `index.html` report with a player per setting.
* `level_stats(grids)` and `write_stats_report` give per-level codebook usage, entropy and perplexity.
* `prefix_quality(codec, files)` and `write_quality_report` give mean STOI / PESQ-WB per prefix over many files:
  the per-level table that papers publish.

Every report states the sha256 of the weights that produced it, and warns loudly when they are random: audio
decoded with random weights is noise, and its scores say nothing about Mimi.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import html
import io
import logging
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from . import __version__
from . import metrics as metrics_module
from .audio import save_audio, validate_pcm
from .levels import Levels
from .ops import LevelStats, level_stats
from .tokens import TokenGrid

if TYPE_CHECKING:
    from .codec import Codec

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SWEEP_METRICS",
    "QualityTable",
    "SweepResult",
    "SweepRow",
    "SweepSetting",
    "level_stats",
    "prefix_quality",
    "sweep",
    "sweep_settings",
    "weights_are_random",
    "write_quality_report",
    "write_stats_report",
]

DEFAULT_SWEEP_METRICS: tuple[str, ...] = (*metrics_module.DEFAULT_METRICS, "stoi", "pesq_wb")
"""The cheap numpy metrics plus STOI and wide-band PESQ; WER is added when a reference text is given."""
DEFAULT_QUALITY_PREFIXES: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
RANDOM_BANNER = ("RANDOM WEIGHTS: this report was produced with random weights. The decoded audio is noise and "
                 "every score below says nothing about Mimi's quality. Use the real weights (kyutai/mimi).")
SPECTROGRAM_PREFIXES = (1, 8, 32)

Progress = Callable[[int, int, str], None]
"""progress(done, total, label): called as work advances."""
SettingKind = Literal["prefix", "solo", "without"]

# metric column -> (label, higher is better)
_COLUMNS: dict[str, tuple[str, bool]] = {
    "si_sdr": ("SI-SDR (dB)", True),
    "snr": ("SNR (dB)", True),
    "stft_distance": ("MR-STFT distance", False),
    "mel_distance": ("mel distance", False),
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
_DNSMOS_FIELDS = ("overall", "signal", "background", "p808")


def _heading(column: str) -> str:
    label, higher = _COLUMNS[column]
    return f"{label} {'↑' if higher else '↓'}"


class AnalysisError(ValueError):
    """An analysis request that cannot be carried out (bad metrics, an output folder in the way, no input)."""


# -- small helpers -----------------------------------------------------------------------------------------------
def weights_are_random(codec: Codec) -> bool:
    """True for `random`/`random-tiny` and for checkpoints written by `mimistack.testing` (their metadata says so)."""
    from .codec import RANDOM_WEIGHTS

    if codec.source in RANDOM_WEIGHTS:
        return True
    path = Path(codec.source)
    if path.suffix == ".safetensors" and path.is_file():
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="numpy") as handle:
                note = (handle.metadata() or {}).get("mimistack_note", "")
        except (OSError, ValueError) as error:  # unreadable here means the codec could not have loaded it either
            logger.debug("could not read metadata of %s: %s", path, error)
            return False
        return note.startswith("random weights")
    return False


def _prepare_dir(out_dir: str | os.PathLike[str], force: bool) -> Path:
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise AnalysisError(f"{folder} exists and is not a folder")
    if folder.exists() and any(folder.iterdir()) and not force:
        raise AnalysisError(f"{folder} exists and is not empty; pass force=True (CLI: --force) to write into it")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _write_bytes(path: Path, data: bytes) -> Path:
    """Atomic write: a temporary file beside `path`, then os.replace."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(name, path)
    finally:
        if os.path.exists(name):
            os.unlink(name)
    return path


def _write_text(path: Path, text: str) -> Path:
    return _write_bytes(path, text.encode("utf-8"))


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if value is None else value for value in row])
    return buffer.getvalue()


def _number(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _csv_number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return ""
    return f"{value:.6g}"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def _weights_lines(label: str, sha256: str, random: bool) -> list[str]:
    lines = [f"Weights: `{label}`, sha256 `{sha256 or 'unknown'}`.", ""]
    if random:
        lines = [f"> **{RANDOM_BANNER}**", "", *lines]
    return lines


def _figure_module() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise metrics_module.MissingDependencyError(
            "plots need matplotlib: pip install 'mimistack[eval]' (or: pip install matplotlib)") from error
    return Figure


def _save_figure(figure: Any, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    return _write_bytes(path, buffer.getvalue())


# -- sweep -------------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SweepSetting:
    """One decoded setting: a prefix of `count` levels, one level alone, or every level but one."""

    kind: SettingKind
    levels: Levels
    level: int  # the prefix length for "prefix", else the level soloed or left out

    @property
    def name(self) -> str:
        return f"{self.kind}_{self.level:02d}"

    @property
    def description(self) -> str:
        if self.kind == "prefix":
            return f"levels 0-{self.level - 1}" if self.level > 1 else "level 0"
        if self.kind == "solo":
            return f"level {self.level} alone"
        return f"all but level {self.level}"

    @property
    def experimental(self) -> bool:
        """Non-prefix subsets are valid arithmetic but outside what the decoder was trained on."""
        return not self.levels.is_prefix


def sweep_settings(num_levels: int) -> list[SweepSetting]:
    """Every prefix 1..K, every level alone, and every level left out: 3·K settings (K = `num_levels`)."""
    prefixes = [SweepSetting("prefix", Levels.prefix(count, num_levels), count) for count in range(1, num_levels + 1)]
    solos = [SweepSetting("solo", Levels((level,), num_levels), level) for level in range(num_levels)]
    without = [SweepSetting("without", Levels(tuple(i for i in range(num_levels) if i != level), num_levels), level)
               for level in range(num_levels)]
    return prefixes + solos + without


@dataclasses.dataclass(frozen=True)
class SweepRow:
    """The scores of one setting. `values`: metric column -> value (None where the metric could not score it)."""

    setting: SweepSetting
    bitrate: float  # bit/s of the levels decoded, fixed-width tokens
    values: dict[str, float | None]
    transcript: str | None
    audio_file: str  # relative to the report folder
    errors: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """What `sweep` measured and wrote."""

    rows: list[SweepRow]
    columns: tuple[str, ...]  # metric columns, in order
    out_dir: Path
    files: dict[str, Path]  # "csv", "markdown", "html", plot names -> path
    weights_label: str
    weights_sha256: str
    random_weights: bool
    duration: float  # seconds of input audio
    num_frames: int
    reference_text: str | None
    original_transcript: str | None

    def row(self, name: str) -> SweepRow:
        for row in self.rows:
            if row.setting.name == name:
                return row
        raise KeyError(f"no setting named {name!r}")


def _metric_columns(names: Sequence[str]) -> tuple[str, ...]:
    columns: list[str] = []
    for name in names:
        columns += [f"dnsmos_{field}" for field in _DNSMOS_FIELDS] if name == "dnsmos" else [name]
    return tuple(columns)


def _resolve_metrics(requested: Sequence[str] | None, reference_text: str | None) -> tuple[str, ...]:
    if isinstance(requested, str):
        requested = [requested]
    names = list(DEFAULT_SWEEP_METRICS if requested is None else requested)
    if reference_text and "word_error_rate" not in names:
        names.append("word_error_rate")
    unknown = [name for name in names if name not in metrics_module.ALL_METRICS]
    if unknown:
        raise AnalysisError(f"unknown metric(s) {unknown}; choose from {', '.join(metrics_module.ALL_METRICS)}")
    if "word_error_rate" in names and not reference_text:
        raise AnalysisError("word_error_rate needs the words spoken in the input (reference_text / --text)")
    available = metrics_module.available_metrics()
    missing = [name for name in names if not available[name]]
    if missing:
        raise metrics_module.MissingDependencyError(
            f"metric(s) {', '.join(missing)} need packages that are not installed: pip install 'mimistack[eval]'; "
            "calling the metric itself (mimistack.metrics) names the exact command for the others")
    return tuple(dict.fromkeys(names))


def _score(reference: np.ndarray, estimate: np.ndarray, names: Sequence[str], sample_rate: int,
           reference_text: str | None) -> tuple[dict[str, float | None], str | None, list[str]]:
    """Each metric on its own, so that one that cannot score this pair (PESQ on silence…) leaves a gap, not a crash."""
    values: dict[str, float | None] = {}
    transcript = None
    errors: list[str] = []
    for name in names:
        try:
            result = metrics_module.evaluate(reference, estimate, sample_rate=sample_rate, metrics=(name,),
                                             reference_text=reference_text)
        except ValueError as error:
            errors.append(f"{name}: {error}")
            values.update({column: None for column in _metric_columns([name])})
            continue
        if name == "dnsmos":
            scores = result.dnsmos
            values.update({f"dnsmos_{field}": getattr(scores, field) for field in _DNSMOS_FIELDS})
        else:
            values[name] = getattr(result, name)
        if name == "word_error_rate":
            transcript = result.transcript
    return values, transcript, errors


def sweep(codec: Codec, pcm: Any, *, out_dir: str | os.PathLike[str], metrics: Sequence[str] | None = None,
          reference_text: str | None = None, force: bool = False, progress: Progress | None = None,
          input_name: str = "input", weights_label: str | None = None, plots: bool = True) -> SweepResult:
    """Decode every prefix, solo and leave-one-out level set of `pcm` (float32 `[N]` at the codec's rate) and
    report how each scores against the original.

    `metrics`: names from `mimistack.metrics.ALL_METRICS` (default `DEFAULT_SWEEP_METRICS`; `word_error_rate` is
    added when `reference_text` is given). Writes into `out_dir` (refused if not empty, unless `force`):
    `results.csv`, `results.md`, `index.html`, `quality_vs_levels.png`, `per_level.png`, `token_grid.png`,
    `spectrograms.png`, `tokens.mimi` and `audio/*.wav`. Identical level sets (level 0 alone = the 1-level
    prefix; all but the last = the 31-level prefix) are decoded once and share a wav file.
    """
    names = _resolve_metrics(metrics, reference_text)
    columns = _metric_columns(names)
    original = validate_pcm(pcm)
    if original.size == 0:
        raise AnalysisError("the input holds no audio")
    folder = _prepare_dir(out_dir, force)
    (folder / "audio").mkdir(exist_ok=True)
    label = weights_label or codec.source or "unknown"
    random_weights = weights_are_random(codec)
    if random_weights:
        logger.warning("sweeping with random weights (%s): the scores say nothing about Mimi", label)

    grid = codec.encode(original)
    grid = grid.replace(metadata={"source": input_name, "mimistack_version": __version__})
    files: dict[str, Path] = {"tokens": grid.save(folder / "tokens.mimi", force=True)}
    files["original"] = save_audio(folder / "audio" / "original.wav", original, codec.sample_rate, force=True)
    original_transcript = None
    if reference_text:
        original_transcript = metrics_module.transcribe(original, codec.sample_rate)

    settings = sweep_settings(codec.num_levels)
    decoded: dict[tuple[int, ...], tuple[np.ndarray, str, dict[str, float | None], str | None, list[str]]] = {}
    rows = []
    for done, setting in enumerate(settings):
        if progress is not None:
            progress(done, len(settings), setting.name)
        key = setting.levels.indices
        if key not in decoded:
            estimate = codec.decode(grid, setting.levels)
            audio_file = f"audio/{setting.name}.wav"
            save_audio(folder / audio_file, estimate, codec.sample_rate, force=True)
            decoded[key] = (estimate, audio_file, *_score(original, estimate, names, codec.sample_rate,
                                                          reference_text))
        _, audio_file, values, transcript, errors = decoded[key]
        rows.append(SweepRow(setting, codec.config.bitrate(len(setting.levels)), dict(values), transcript,
                             audio_file, tuple(errors)))
    if progress is not None:
        progress(len(settings), len(settings), "done")

    result = SweepResult(rows=rows, columns=columns, out_dir=folder, files=files, weights_label=label,
                         weights_sha256=codec.weights_sha256, random_weights=random_weights,
                         duration=grid.duration, num_frames=grid.num_frames, reference_text=reference_text,
                         original_transcript=original_transcript)
    if plots:
        files.update(_sweep_plots(result, grid, original, decoded, codec))
    files["csv"] = _write_text(folder / "results.csv", _sweep_csv(result))
    files["markdown"] = _write_text(folder / "results.md", _sweep_markdown(result, input_name))
    files["html"] = _write_text(folder / "index.html", _sweep_html(result, input_name))
    return result


def _sweep_csv(result: SweepResult) -> str:
    header = ["setting", "kind", "levels", "num_levels", "bitrate_bps", "experimental", *result.columns]
    if result.reference_text:
        header.append("transcript")
    header.append("audio")
    rows = []
    for row in result.rows:
        line = [row.setting.name, row.setting.kind, str(row.setting.levels), len(row.setting.levels),
                f"{row.bitrate:g}", str(row.setting.experimental).lower(),
                *[_csv_number(row.values.get(column)) for column in result.columns]]
        if result.reference_text:
            line.append(row.transcript or "")
        rows.append([*line, row.audio_file])
    return _csv_text(header, rows)


def _table_rows(result: SweepResult, kind: str) -> list[SweepRow]:
    return [row for row in result.rows if row.setting.kind == kind]


_SECTION_TITLES = {"prefix": "Prefixes (levels 0..k-1: what the decoder was trained on)",
                   "solo": "Each level alone (experimental)",
                   "without": "All levels but one (experimental)"}


def _summary_lines(result: SweepResult, input_name: str) -> list[str]:
    lines = [f"Input: `{input_name}`, {result.duration:.2f} s, {result.num_frames} frames. mimistack {__version__}, "
             f"{datetime.date.today().isoformat()}.", ""]
    lines += _weights_lines(result.weights_label, result.weights_sha256, result.random_weights)
    if result.reference_text:
        lines += [f"Reference text: “{result.reference_text}”. Transcript of the original: "
                  f"“{result.original_transcript or ''}”.", ""]
    errors = sorted({error for row in result.rows for error in row.errors})
    if errors:
        lines += ["Metrics that could not score some settings (blank cells):", ""]
        lines += [f"- {error}" for error in errors[:20]] + [""]
    return lines


def _sweep_markdown(result: SweepResult, input_name: str) -> str:
    lines = [f"# Level sweep: {input_name}", "", *_summary_lines(result, input_name),
             "↑: higher is better, ↓: lower is better. Scores compare each decoding with the original input.", ""]
    header = ["setting", "levels", "bit/s", *[_heading(c) for c in result.columns]]
    for kind, title in _SECTION_TITLES.items():
        rows = [[row.setting.name, str(row.setting.levels), f"{row.bitrate:.0f}",
                 *[_number(row.values.get(c)) for c in result.columns]] for row in _table_rows(result, kind)]
        lines += [f"## {title}", "", *_markdown_table(header, rows), ""]
    return "\n".join(lines)


_HTML_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 80em; }
table { border-collapse: collapse; margin-bottom: 2em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
th { background: #f0f0f0; }
td.name, td.levels { text-align: left; font-family: monospace; }
.warning { background: #b00020; color: white; padding: 1em; font-size: 1.2em; font-weight: bold; }
img { max-width: 100%; border: 1px solid #eee; margin-bottom: 1em; }
audio { height: 2em; }
"""


def _sweep_html(result: SweepResult, input_name: str) -> str:
    escape = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>mimistack level sweep: {escape(input_name)}</title>", f"<style>{_HTML_STYLE}</style>",
             "</head><body>", f"<h1>Level sweep: {escape(input_name)}</h1>"]
    if result.random_weights:
        parts.append(f'<p class="warning">{escape(RANDOM_BANNER)}</p>')
    parts.append(f"<p>Input: {result.duration:.2f} s, {result.num_frames} frames. Weights: "
                 f"<code>{escape(result.weights_label)}</code>, sha256 <code>{escape(result.weights_sha256)}</code>. "
                 f"mimistack {__version__}.</p>")
    if result.reference_text:
        parts.append(f"<p>Reference text: “{escape(result.reference_text)}”. Transcript of the original: "
                     f"“{escape(result.original_transcript or '')}”.</p>")
    parts.append('<p>Original: <audio controls preload="none" src="audio/original.wav"></audio></p>')
    for name in ("quality_vs_levels", "per_level", "spectrograms", "token_grid"):
        if name in result.files:
            parts.append(f'<img src="{name}.png" alt="{name.replace("_", " ")}">')
    header = "".join(f"<th>{escape(text)}</th>" for text in
                     ("setting", "levels", "bit/s", *[_heading(c) for c in result.columns], "listen"))
    for kind, title in _SECTION_TITLES.items():
        parts += [f"<h2>{escape(title)}</h2>", f"<table><tr>{header}</tr>"]
        for row in _table_rows(result, kind):
            cells = [f'<td class="name">{escape(row.setting.name)}</td>',
                     f'<td class="levels">{escape(str(row.setting.levels))}</td>', f"<td>{row.bitrate:.0f}</td>"]
            cells += [f"<td>{_number(row.values.get(c))}</td>" for c in result.columns]
            cells.append(f'<td><audio controls preload="none" src="{escape(row.audio_file)}"></audio></td>')
            parts.append(f'<tr id="{escape(row.setting.name)}">{"".join(cells)}</tr>')
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _spectrogram_db(pcm: np.ndarray, n_fft: int = 1024, hop: int = 256) -> np.ndarray:
    """Log-magnitude spectrogram in dB: float `[n_fft // 2 + 1, frames]`."""
    padded = np.pad(pcm.astype(np.float64), (n_fft // 2, n_fft // 2))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    magnitude = np.abs(np.fft.rfft(frames * np.hanning(n_fft), axis=-1)).T
    return 20 * np.log10(np.maximum(magnitude, 1e-6))


def _title(result: SweepResult, text: str) -> str:
    return f"{text} — RANDOM WEIGHTS (meaningless)" if result.random_weights else text


def _grid_figure(Figure: Any, panels: int, height: float) -> Any:
    """A figure with `panels` axes, at most three per row, spaced by hand (constrained layout is slow)."""
    columns = min(3, panels)
    rows = math.ceil(panels / columns)
    figure = Figure(figsize=(5 * columns, height * rows + 0.6))
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.5 / (height * rows + 0.6) + 0.05,
                           top=1 - 1.0 / (height * rows + 0.6), wspace=0.3, hspace=0.55)
    for index in range(panels):
        figure.add_subplot(rows, columns, index + 1)
    return figure


def _sweep_plots(result: SweepResult, grid: TokenGrid, original: np.ndarray,
                 decoded: dict[tuple[int, ...], Any], codec: Codec) -> dict[str, Path]:
    Figure = _figure_module()
    folder = result.out_dir
    files = {}
    columns = [c for c in result.columns if any(row.values.get(c) is not None for row in result.rows)]
    bits_per_level = codec.config.bitrate(1)

    if columns:
        figure = _grid_figure(Figure, len(columns), 4.0)
        prefixes = _table_rows(result, "prefix")
        for index, column in enumerate(columns):
            axis = figure.axes[index]
            points = [(len(r.setting.levels), r.values[column]) for r in prefixes if r.values.get(column) is not None]
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3)
            label, higher = _COLUMNS[column]
            axis.set_xlabel("levels decoded (prefix)")
            axis.set_ylabel(f"{label} ({'higher' if higher else 'lower'} is better)")
            axis.grid(True, alpha=0.3)
            top = axis.secondary_xaxis("top", functions=(lambda n: n * bits_per_level / 1000,
                                                         lambda kbps: kbps * 1000 / bits_per_level))
            top.set_xlabel("bitrate (kbit/s)")
        figure.suptitle(_title(result, "Quality vs number of levels"))
        files["quality_vs_levels"] = _save_figure(figure, folder / "quality_vs_levels.png")

        figure = _grid_figure(Figure, len(columns), 3.6)
        for index, column in enumerate(columns):
            axis = figure.axes[index]
            for kind, text in (("solo", "level alone"), ("without", "all but this level")):
                rows = [r for r in _table_rows(result, kind) if r.values.get(column) is not None]
                axis.plot([r.setting.level for r in rows], [r.values[column] for r in rows], marker=".", label=text)
            axis.set_xlabel("level")
            axis.set_ylabel(_COLUMNS[column][0])
            axis.grid(True, alpha=0.3)
            axis.legend(fontsize="small")
        figure.suptitle(_title(result, "Each level alone and left out (experimental subsets)"))
        files["per_level"] = _save_figure(figure, folder / "per_level.png")

    figure = Figure(figsize=(10, 4))
    figure.subplots_adjust(left=0.07, right=0.97, bottom=0.13, top=0.9)
    axis = figure.add_subplot(1, 1, 1)
    image = axis.imshow(grid.codes, aspect="auto", origin="lower", interpolation="nearest", cmap="viridis",
                        extent=(0, grid.num_frames / grid.frame_rate, -0.5, grid.num_levels - 0.5))
    axis.set_xlabel("time (s)")
    axis.set_ylabel("level")
    figure.colorbar(image, ax=axis, label="token")
    axis.set_title(_title(result, f"Token grid ({grid.num_levels} x {grid.num_frames})"))
    files["token_grid"] = _save_figure(figure, folder / "token_grid.png")

    counts = sorted({min(count, codec.num_levels) for count in SPECTROGRAM_PREFIXES})
    panels = [("original", original)] + [
        (f"{count} level{'s' if count > 1 else ''}", decoded[tuple(range(count))][0]) for count in counts]
    spectra = [_spectrogram_db(pcm) for _, pcm in panels]
    high = max(float(s.max()) for s in spectra)
    figure = Figure(figsize=(4 * len(panels), 3.6))
    figure.subplots_adjust(left=0.05, right=0.92, bottom=0.15, top=0.82, wspace=0.25)
    for index, ((name, _), spectrum) in enumerate(zip(panels, spectra)):
        axis = figure.add_subplot(1, len(panels), index + 1)
        image = axis.imshow(spectrum, aspect="auto", origin="lower", cmap="magma", vmin=high - 80, vmax=high,
                            extent=(0, len(original) / codec.sample_rate, 0, codec.sample_rate / 2000))
        axis.set_title(name)
        axis.set_xlabel("time (s)")
        if index == 0:
            axis.set_ylabel("frequency (kHz)")
    figure.colorbar(image, ax=figure.axes, label="dB")
    figure.suptitle(_title(result, "Spectrograms"))
    files["spectrograms"] = _save_figure(figure, folder / "spectrograms.png")
    return files


# -- per-level statistics ----------------------------------------------------------------------------------------
def write_stats_report(stats: LevelStats, out_dir: str | os.PathLike[str], *, force: bool = False,
                       weights_label: str = "", random_weights: bool = False,
                       sources: Sequence[str] = ()) -> dict[str, Path]:
    """Write `stats.csv`, `stats.md` and `stats.png` (codebook usage, entropy, perplexity per level)."""
    folder = _prepare_dir(out_dir, force)
    max_bits = math.log2(stats.codebook_size)
    entropy, perplexity, distinct, tokens = stats.entropy_bits, stats.perplexity, stats.distinct_codes, stats.tokens
    header = ["level", "tokens", "distinct_codes", "codebook_usage", "entropy_bits", "perplexity", "max_entropy_bits"]
    rows = [[level, int(tokens[level]), int(distinct[level]), f"{distinct[level] / stats.codebook_size:.6g}",
             _csv_number(float(entropy[level])), _csv_number(float(perplexity[level])), f"{max_bits:g}"]
            for level in range(stats.num_levels)]
    files = {"csv": _write_text(folder / "stats.csv", _csv_text(header, rows))}

    lines = ["# Per-level token statistics", "",
             f"{stats.num_grids} grid(s), {stats.num_frames} frames; codebook of {stats.codebook_size} "
             f"(at most {max_bits:g} bits per token). mimistack {__version__}.", ""]
    lines += _weights_lines(weights_label or "unknown", stats.weights_sha256, random_weights)
    if sources:
        lines += ["Files: " + ", ".join(f"`{name}`" for name in sources), ""]
    counted = tokens > 0
    if counted.any():
        lines += [f"Mean entropy {np.nanmean(entropy):.3f} bits per token over the counted levels; summed over "
                  f"them, {np.nansum(entropy):.1f} bits per frame against {max_bits * counted.sum():g} for fixed-width "
                  "tokens (what a memoryless entropy coder could reach).", ""]
    lines += _markdown_table(["level", "tokens", "distinct codes", "usage", "entropy (bits)", "perplexity"],
                             [[str(level), str(int(tokens[level])), str(int(distinct[level])),
                               f"{distinct[level] / stats.codebook_size:.1%}", _number(float(entropy[level])),
                               _number(float(perplexity[level]), 1)] for level in range(stats.num_levels)])
    files["markdown"] = _write_text(folder / "stats.md", "\n".join(lines) + "\n")

    Figure = _figure_module()
    figure = Figure(figsize=(12, 7))
    figure.subplots_adjust(left=0.07, right=0.97, bottom=0.08, top=0.92, wspace=0.25, hspace=0.3)
    levels = np.arange(stats.num_levels)
    axis = figure.add_subplot(2, 2, 1)
    axis.bar(levels, np.nan_to_num(entropy))
    axis.axhline(max_bits, color="grey", linestyle="--", label=f"maximum {max_bits:g} bits")
    axis.set_xlabel("level")
    axis.set_ylabel("entropy (bits)")
    axis.legend(fontsize="small")
    axis = figure.add_subplot(2, 2, 2)
    axis.bar(levels, np.nan_to_num(perplexity))
    axis.set_xlabel("level")
    axis.set_ylabel("perplexity")
    axis = figure.add_subplot(2, 2, 3)
    axis.bar(levels, distinct / stats.codebook_size)
    axis.set_xlabel("level")
    axis.set_ylabel("share of codebook used")
    axis.set_ylim(0, 1)
    axis = figure.add_subplot(2, 2, 4)
    ranked = -np.sort(-stats.probabilities, axis=1)  # each level's code frequencies, most used first
    image = axis.imshow(np.log10(np.maximum(ranked, 1e-7)), aspect="auto", origin="lower", interpolation="nearest",
                        cmap="viridis", vmin=-7, vmax=0)
    axis.set_xlabel("code rank (most used first)")
    axis.set_ylabel("level")
    figure.colorbar(image, ax=axis, label="log10 frequency")
    figure.suptitle(("RANDOM WEIGHTS — " if random_weights else "") + "Per-level codebook usage")
    files["plot"] = _save_figure(figure, folder / "stats.png")
    return files


# -- per-prefix quality over many files --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class QualityTable:
    """Scores per file and prefix, and their mean per prefix.

    `values[file][prefix][metric]` (None where the metric failed on that file); `prefixes`, `metrics` and `files`
    in order.
    """

    files: tuple[str, ...]
    prefixes: tuple[int, ...]
    metrics: tuple[str, ...]
    values: dict[str, dict[int, dict[str, float | None]]]
    weights_label: str
    weights_sha256: str
    random_weights: bool
    seconds: float  # total audio scored
    bits_per_level: float  # bit/s one level costs with fixed-width tokens (137.5 for Mimi)

    def mean(self, prefix: int, metric: str) -> tuple[float, float, int]:
        """Mean, standard deviation and count of `metric` at `prefix` over the files where it scored."""
        scores = [v for file in self.files if (v := self.values[file][prefix].get(metric)) is not None]
        if not scores:
            return math.nan, math.nan, 0
        return float(np.mean(scores)), float(np.std(scores)), len(scores)


def prefix_quality(codec: Codec, files: Sequence[str | os.PathLike[str]], *,
                   prefixes: Sequence[int] = DEFAULT_QUALITY_PREFIXES, metrics: Sequence[str] = ("stoi", "pesq_wb"),
                   progress: Progress | None = None, weights_label: str | None = None) -> QualityTable:
    """Encode each file once, decode each prefix of `prefixes` levels and score it against the file.

    Files are read with `mimistack.audio.load_audio` (any format, resampled to 24 kHz mono).
    """
    from .audio import load_audio

    names = _resolve_metrics(metrics, None)
    if not files:
        raise AnalysisError("no audio files given")
    counts = tuple(sorted(set(int(p) for p in prefixes)))
    if not counts or counts[0] < 1 or counts[-1] > codec.num_levels:
        raise AnalysisError(f"prefixes must lie in 1-{codec.num_levels}, got {list(prefixes)}")
    values: dict[str, dict[int, dict[str, float | None]]] = {}
    seconds = 0.0
    for done, path in enumerate(files):
        if progress is not None:
            progress(done, len(files), Path(path).name)
        original = load_audio(path, sample_rate=codec.sample_rate)
        seconds += original.size / codec.sample_rate
        grid = codec.encode(original)
        key = str(path)
        values[key] = {}
        for count in counts:
            estimate = codec.decode(grid, Levels.prefix(count, codec.num_levels))
            scores, _, errors = _score(original, estimate, names, codec.sample_rate, None)
            for error in errors:
                logger.warning("%s, %d levels: %s", path, count, error)
            values[key][count] = scores
    if progress is not None:
        progress(len(files), len(files), "done")
    return QualityTable(files=tuple(str(f) for f in files), prefixes=counts, metrics=_metric_columns(names),
                        values=values, weights_label=weights_label or codec.source or "unknown",
                        weights_sha256=codec.weights_sha256, random_weights=weights_are_random(codec),
                        seconds=seconds, bits_per_level=codec.config.bitrate(1))


def quality_markdown(table: QualityTable) -> str:
    """The per-prefix table (mean ± std over files) as Markdown."""
    lines = ["# Mean quality per number of levels", "",
             f"{len(table.files)} file(s), {table.seconds / 60:.1f} min of audio. mimistack {__version__}.", ""]
    lines += _weights_lines(table.weights_label, table.weights_sha256, table.random_weights)
    header = ["levels", "bit/s", *[f"{_heading(m)} mean ± std (n)" for m in table.metrics]]
    rows = []
    for prefix in table.prefixes:
        cells = [str(prefix), f"{prefix * table.bits_per_level:.1f}"]
        for metric in table.metrics:
            mean, std, count = table.mean(prefix, metric)
            cells.append(f"{_number(mean)} ± {_number(std)} ({count})" if count else "–")
        rows.append(cells)
    return "\n".join(lines + _markdown_table(header, rows)) + "\n"


def write_quality_report(table: QualityTable, out_dir: str | os.PathLike[str], *,
                         force: bool = False) -> dict[str, Path]:
    """Write `quality.md` (means per prefix), `quality.csv` (the same) and `quality_per_file.csv`."""
    folder = _prepare_dir(out_dir, force)
    header = ["levels"] + [f"{m}_{stat}" for m in table.metrics for stat in ("mean", "std", "count")]
    rows = []
    for prefix in table.prefixes:
        cells: list[Any] = [prefix]
        for metric in table.metrics:
            mean, std, count = table.mean(prefix, metric)
            cells += [_csv_number(mean), _csv_number(std), count]
        rows.append(cells)
    per_file = [[file, prefix, *[_csv_number(table.values[file][prefix].get(m)) for m in table.metrics]]
                for file in table.files for prefix in table.prefixes]
    return {
        "markdown": _write_text(folder / "quality.md", quality_markdown(table)),
        "csv": _write_text(folder / "quality.csv", _csv_text(header, rows)),
        "per_file": _write_text(folder / "quality_per_file.csv",
                                _csv_text(["file", "levels", *table.metrics], per_file)),
    }

