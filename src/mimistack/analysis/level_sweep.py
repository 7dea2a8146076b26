"""The level sweep: decode every prefix 1..K of one input, each level alone and every level but one, score each
against the original, and write the report (`results.csv`, `results.md`, `index.html`, plots, wav files).

Sits on `scoring` (metrics, `weights_are_random`), `render` (tables, files), `plots` (figures), `codec`,
`levels`, `tokens` and `audio` (`save_audio`, `validate_pcm`); used by `cli.ops` (`mimistack sweep`) and
re-exported by `mimistack.analysis`.
"""

from __future__ import annotations

import dataclasses
import datetime
import html
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .. import metrics as metrics_module
from .._version import __version__
from ..audio import save_audio, validate_pcm
from ..codec import Codec
from ..levels import Levels
from ..stats import token_agreement, token_edit_distance
from ..tokens import TokenGrid
from . import plots as figures
from .render import (
    RANDOM_BANNER,
    codec_superb_entry,
    codec_superb_name,
    csv_number,
    csv_text,
    heading,
    markdown_table,
    number,
    prepare_dir,
    weights_lines,
    write_report_text,
)
from .scoring import (
    AnalysisError,
    Progress,
    Scores,
    coded_bitrates,
    metric_columns,
    resolve_metrics,
    score,
    weights_are_random,
)

logger = logging.getLogger(__name__)

SPECTROGRAM_PREFIXES = (1, 8, 32)
SettingKind = Literal["prefix", "solo", "without"]


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
    without = [
        SweepSetting("without", Levels(tuple(i for i in range(num_levels) if i != level), num_levels), level)
        for level in range(num_levels)
    ]
    return prefixes + solos + without


@dataclasses.dataclass(frozen=True)
class SweepRow:
    """The scores of one setting. `values`: metric column -> value (None where the metric could not score it)."""

    setting: SweepSetting
    bitrate: float  # bit/s of the levels decoded, fixed-width tokens
    values: Scores
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
    timings: dict[str, float] = dataclasses.field(default_factory=dict)  # decode_seconds, score_seconds
    coded_bitrate: dict[int, float] = dataclasses.field(default_factory=dict)  # level -> entropy-coded bit/s

    def row(self, name: str) -> SweepRow:
        for row in self.rows:
            if row.setting.name == name:
                return row
        raise KeyError(f"no setting named {name!r}")


@dataclasses.dataclass(frozen=True)
class _Decoded:
    """One level set decoded and scored: shared by the settings that name the same set."""

    pcm: NDArray[np.float32]
    audio_file: str
    values: Scores
    transcript: str | None
    errors: list[str]


TOKEN_COLUMNS = ("token_agreement", "token_edit_distance")


def _token_measures(codec: Codec, grid: TokenGrid, estimate: NDArray[np.float32], setting: SweepSetting) -> Scores:
    """Re-encode a decoding; mean token agreement and edit distance against `grid` over the setting's levels."""
    again = codec.encode(estimate)
    levels = list(setting.levels)
    agreement = token_agreement(grid, again)
    distance = token_edit_distance(grid, again)
    return {
        "token_agreement": float(np.mean([agreement[level] for level in levels])),
        "token_edit_distance": float(np.mean([distance[level] for level in levels])),
    }


def codec_superb_results(result: SweepResult) -> dict[str, dict[str, dict[str, float]]]:
    """Every prefix as a Codec-SUPERB result entry (`mimi_1q` … `mimi_32q`), from the sweep's scores."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for row in _table_rows(result, "prefix"):
        out.update(codec_superb_entry(codec_superb_name(len(row.setting.levels), result.random_weights), row.values))
    return out


def decode_level_sets(
    codec: Codec,
    grid: TokenGrid,
    level_sets: Sequence[Levels],
    *,
    batch_size: int = 1,
    progress: Progress | None = None,
    labels: Mapping[Levels, str] | None = None,
) -> dict[Levels, NDArray[np.float32]]:
    """Decode `grid` once per level set: the latent of each set (`engine.latent_from_codes`, the sum of its levels'
    terms) stacked along the batch, `batch_size` rows per decoder call (`engine.decode_latent`), in the same chunks
    of `codec.chunk_frames` frames and the same window-mode state as `Codec.decode`. Returns level set -> pcm
    `[grid.num_samples]`. An engine on its whole-input fast path decodes one set per `Codec.decode` call instead
    (its fast path takes codes, not latents). `progress(done, total, label)` is told "decoding <label>" per call,
    the label of a set from `labels` (default: the set itself)."""
    if batch_size < 1:
        raise AnalysisError(f"batch_size must be at least 1, got {batch_size}")
    engine = codec.engine
    out: dict[Levels, NDArray[np.float32]] = {}
    sets = list(dict.fromkeys(level_sets))
    frames = grid.num_frames
    if frames == 0 or 0 < frames <= engine.whole_max_frames:
        for done, levels in enumerate(sets):
            if progress is not None:
                progress(done, len(sets), f"decoding {(labels or {}).get(levels, levels)}")
            out[levels] = codec.decode(grid, levels)
        return out
    codes = np.ascontiguousarray(grid.codes, dtype=np.int64)[None]
    for start in range(0, len(sets), batch_size):
        group = sets[start : start + batch_size]
        if progress is not None:
            progress(start, len(sets), f"decoding {(labels or {}).get(group[0], group[0])}")
        latent = np.concatenate([engine.latent_from_codes(codes, grid.check_levels(levels)) for levels in group])
        state = engine.init_decoder_state(len(group), "window")
        parts = []
        for first in range(0, frames, codec.chunk_frames):
            part, state = engine.decode_latent(latent[..., first : first + codec.chunk_frames], state, "window")
            parts.append(part)
        pcm = np.concatenate(parts, axis=-1)
        for row, levels in enumerate(group):
            out[levels] = np.ascontiguousarray(pcm[row, 0, : grid.num_samples], dtype=np.float32)
    return out


def sweep(
    codec: Codec,
    pcm: ArrayLike,
    *,
    out_dir: str | os.PathLike[str],
    metrics: Sequence[str] | None = None,
    reference_text: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
    input_name: str = "input",
    weights_label: str | None = None,
    plots: bool = True,
    batch_size: int = 1,
    reencode: bool = False,
) -> SweepResult:
    """Decode every prefix, solo and leave-one-out level set of `pcm` (float32 `[N]` at the codec's rate) and
    report how each scores against the original.

    `metrics`: names from `mimistack.metrics.ALL_METRICS` (default `DEFAULT_SWEEP_METRICS`; `word_error_rate` is
    added when `reference_text` is given). Writes into `out_dir` (refused if not empty, unless `force`):
    `results.csv`, `results.md`, `index.html`, `quality_vs_levels.png`, `per_level.png`, `token_grid.png`,
    `spectrograms.png`, `tokens.mimi` and `audio/*.wav`. Identical level sets (level 0 alone = the 1-level
    prefix; all but the last = the 31-level prefix) are decoded once and share a wav file.

    Decoding is one encoder pass and then the decoder on the stacked latents of the level sets
    (`decode_level_sets`), `batch_size` sets per decoder call: 1 (the default) gives exactly `codec.decode`'s
    samples; larger batches pay off on a GPU and agree with it to float rounding (about 1e-7).

    `reencode`: also encode each prefix's decoding again and add the token measures of `mimistack.stats` against
    the input's tokens, over that prefix's levels (`token_agreement`: mean fraction of equal tokens,
    `token_edit_distance`: mean normalised edit distance). `codec_superb.json` holds the prefixes in the layout of
    a Codec-SUPERB result entry (`render.codec_superb_entry`); `results.md` lists the entropy-coded bit/s each
    level of the input's tokens needs, next to the nominal fixed-width rate.
    """
    if batch_size < 1:
        raise AnalysisError(f"batch_size must be at least 1, got {batch_size}")
    names = resolve_metrics(metrics, reference_text)
    columns = metric_columns(names) + (TOKEN_COLUMNS if reencode else ())
    original = validate_pcm(pcm)
    if original.size == 0:
        raise AnalysisError("the input holds no audio")
    folder = prepare_dir(out_dir, force)
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
    names_of: dict[Levels, str] = {}
    for setting in settings:
        names_of.setdefault(setting.levels, setting.name)
    started = time.perf_counter()
    estimates = decode_level_sets(
        codec, grid, list(names_of), batch_size=batch_size, progress=progress, labels=names_of
    )
    timings = {"decode_seconds": time.perf_counter() - started}
    started = time.perf_counter()
    decoded: dict[tuple[int, ...], _Decoded] = {}
    rows = []
    for done, setting in enumerate(settings):
        if progress is not None:
            progress(done, len(settings), setting.name)
        key = setting.levels.indices
        if key not in decoded:
            estimate = estimates[setting.levels]
            audio_file = f"audio/{setting.name}.wav"
            save_audio(folder / audio_file, estimate, codec.sample_rate, force=True)
            values, transcript, errors = score(original, estimate, names, codec.sample_rate, reference_text)
            if reencode:
                values.update(_token_measures(codec, grid, estimate, setting))
            decoded[key] = _Decoded(estimate, audio_file, values, transcript, errors)
        shared = decoded[key]
        rows.append(
            SweepRow(
                setting,
                codec.config.bitrate(len(setting.levels)),
                dict(shared.values),
                shared.transcript,
                shared.audio_file,
                tuple(shared.errors),
            )
        )
    timings["score_seconds"] = time.perf_counter() - started
    if progress is not None:
        progress(len(settings), len(settings), "done")

    result = SweepResult(
        rows=rows,
        columns=columns,
        out_dir=folder,
        files=files,
        weights_label=label,
        weights_sha256=codec.weights_sha256,
        random_weights=random_weights,
        duration=grid.duration,
        num_frames=grid.num_frames,
        reference_text=reference_text,
        original_transcript=original_transcript,
        timings=timings,
        coded_bitrate=coded_bitrates([grid]),
    )
    if plots:
        files.update(_sweep_plots(result, grid, original, decoded, codec))
    files["csv"] = write_report_text(folder / "results.csv", _sweep_csv(result))
    files["codec_superb"] = write_report_text(
        folder / "codec_superb.json", json.dumps(codec_superb_results(result), indent=2) + "\n"
    )
    files["markdown"] = write_report_text(folder / "results.md", _sweep_markdown(result, input_name))
    files["html"] = write_report_text(folder / "index.html", _sweep_html(result, input_name))
    return result


def _table_rows(result: SweepResult, kind: str) -> list[SweepRow]:
    return [row for row in result.rows if row.setting.kind == kind]


def _title(result: SweepResult, text: str) -> str:
    return f"{text} — RANDOM WEIGHTS (meaningless)" if result.random_weights else text


def _sweep_plots(
    result: SweepResult,
    grid: TokenGrid,
    original: NDArray[np.float32],
    decoded: dict[tuple[int, ...], _Decoded],
    codec: Codec,
) -> dict[str, Path]:
    folder = result.out_dir
    files = {}
    columns = [c for c in result.columns if any(row.values.get(c) is not None for row in result.rows)]
    if columns:
        prefixes = {
            column: [
                (len(r.setting.levels), value)
                for r in _table_rows(result, "prefix")
                if (value := r.values.get(column)) is not None
            ]
            for column in columns
        }
        figure = figures.quality_vs_levels(
            prefixes, codec.config.bitrate(1), _title(result, "Quality vs number of levels")
        )
        files["quality_vs_levels"] = figures.save_png(figure, folder / "quality_vs_levels.png")
        lines = {
            column: {
                text: [
                    (r.setting.level, value)
                    for r in _table_rows(result, kind)
                    if (value := r.values.get(column)) is not None
                ]
                for kind, text in (("solo", "level alone"), ("without", "all but this level"))
            }
            for column in columns
        }
        figure = figures.per_level(lines, _title(result, "Each level alone and left out (experimental subsets)"))
        files["per_level"] = figures.save_png(figure, folder / "per_level.png")

    title = _title(result, f"Token grid ({grid.num_levels} x {grid.num_frames})")
    files["token_grid"] = figures.save_png(figures.token_grid(grid, title), folder / "token_grid.png")

    counts = sorted({min(count, codec.num_levels) for count in SPECTROGRAM_PREFIXES})
    panels = [("original", original)] + [
        (f"{count} level{'s' if count > 1 else ''}", decoded[tuple(range(count))].pcm) for count in counts
    ]
    figure = figures.spectrograms(panels, codec.sample_rate, _title(result, "Spectrograms"))
    files["spectrograms"] = figures.save_png(figure, folder / "spectrograms.png")
    return files


def _sweep_csv(result: SweepResult) -> str:
    header = ["setting", "kind", "levels", "num_levels", "bitrate_bps", "experimental", *result.columns]
    if result.reference_text:
        header.append("transcript")
    header.append("audio")
    rows = []
    for row in result.rows:
        line: list[str | int] = [
            row.setting.name,
            row.setting.kind,
            str(row.setting.levels),
            len(row.setting.levels),
            f"{row.bitrate:g}",
            str(row.setting.experimental).lower(),
            *[csv_number(row.values.get(column)) for column in result.columns],
        ]
        if result.reference_text:
            line.append(row.transcript or "")
        rows.append([*line, row.audio_file])
    return csv_text(header, rows)


_SECTION_TITLES = {
    "prefix": "Prefixes (levels 0..k-1: what the decoder was trained on)",
    "solo": "Each level alone (experimental)",
    "without": "All levels but one (experimental)",
}


def _summary_lines(result: SweepResult, input_name: str) -> list[str]:
    lines = [
        f"Input: `{input_name}`, {result.duration:.2f} s, {result.num_frames} frames. mimistack {__version__}, "
        f"{datetime.date.today().isoformat()}.",
        "",
    ]
    lines += weights_lines(result.weights_label, result.weights_sha256, result.random_weights)
    if result.reference_text:
        lines += [
            f"Reference text: “{result.reference_text}”. Transcript of the original: "
            f"“{result.original_transcript or ''}”.",
            "",
        ]
    errors = sorted({error for row in result.rows for error in row.errors})
    if errors:
        lines += ["Metrics that could not score some settings (blank cells):", ""]
        lines += [f"- {error}" for error in errors[:20]] + [""]
    return lines


def _sweep_markdown(result: SweepResult, input_name: str) -> str:
    lines = [
        f"# Level sweep: {input_name}",
        "",
        *_summary_lines(result, input_name),
        "↑: higher is better, ↓: lower is better. Scores compare each decoding with the original input.",
        "",
    ]
    header = ["setting", "levels", "bit/s", *[heading(c) for c in result.columns]]
    for kind, title in _SECTION_TITLES.items():
        rows = [
            [row.setting.name, str(row.setting.levels), f"{row.bitrate:.0f}"]
            + [number(row.values.get(c)) for c in result.columns]
            for row in _table_rows(result, kind)
        ]
        lines += [f"## {title}", "", *markdown_table(header, rows), ""]
    if result.coded_bitrate:
        nominal = result.rows[0].bitrate if result.rows else 0.0
        lines += [
            "## Tokens: the bit rate each level needs",
            "",
            f"Entropy-coded: what the adaptive range coder of `.mimi` files needs for these tokens, next to the "
            f"nominal fixed-width {nominal:g} bit/s per level.",
            "",
            *markdown_table(
                ["level", "entropy-coded bit/s", "nominal bit/s"],
                [[str(level), f"{bps:.1f}", f"{nominal:g}"] for level, bps in sorted(result.coded_bitrate.items())],
            ),
            "",
        ]
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
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>mimistack level sweep: {escape(input_name)}</title>",
        f"<style>{_HTML_STYLE}</style>",
        "</head><body>",
        f"<h1>Level sweep: {escape(input_name)}</h1>",
    ]
    if result.random_weights:
        parts.append(f'<p class="warning">{escape(RANDOM_BANNER)}</p>')
    parts.append(
        f"<p>Input: {result.duration:.2f} s, {result.num_frames} frames. Weights: "
        f"<code>{escape(result.weights_label)}</code>, sha256 <code>{escape(result.weights_sha256)}</code>. "
        f"mimistack {__version__}.</p>"
    )
    if result.reference_text:
        parts.append(
            f"<p>Reference text: “{escape(result.reference_text)}”. Transcript of the original: "
            f"“{escape(result.original_transcript or '')}”.</p>"
        )
    parts.append('<p>Original: <audio controls preload="none" src="audio/original.wav"></audio></p>')
    for name in ("quality_vs_levels", "per_level", "spectrograms", "token_grid"):
        if name in result.files:
            parts.append(f'<img src="{name}.png" alt="{name.replace("_", " ")}">')
    header = "".join(
        f"<th>{escape(text)}</th>"
        for text in ("setting", "levels", "bit/s", *[heading(c) for c in result.columns], "listen")
    )
    for kind, title in _SECTION_TITLES.items():
        parts += [f"<h2>{escape(title)}</h2>", f"<table><tr>{header}</tr>"]
        for row in _table_rows(result, kind):
            cells = [
                f'<td class="name">{escape(row.setting.name)}</td>',
                f'<td class="levels">{escape(str(row.setting.levels))}</td>',
                f"<td>{row.bitrate:.0f}</td>",
            ]
            cells += [f"<td>{number(row.values.get(c))}</td>" for c in result.columns]
            cells.append(f'<td><audio controls preload="none" src="{escape(row.audio_file)}"></audio></td>')
            parts.append(f'<tr id="{escape(row.setting.name)}">{"".join(cells)}</tr>')
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
