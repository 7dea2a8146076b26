"""CLI commands for level surgery and analysis: `swap`, `anonymize`, `keep`, `drop`, `splice`, `sweep`, `stats`,
`quality`.

Registered by `cli.main` through `register(command)`. Sits on `ops` (surgery), `analysis`
(sweeps, statistics, quality tables) and the shared CLI helpers in `cli` (model options, `load_codec`,
`encode_file`, `decode_to_file`, input and output checks). Inputs may be audio files (encoded with `--weights`) or
`.mimi` token files; a `.mimi` file made with other weights than the ones given is refused unless `--mix-weights`.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..audio import AUDIO_SUFFIXES, OUTPUT_FORMATS
from .common import CliError, check_input, check_output, decode_to_file, encode_file, load_codec
from .table import Command

if TYPE_CHECKING:
    from ..codec import Codec
    from ..tokens import TokenGrid

AUDIO_OUTPUTS = tuple(OUTPUT_FORMATS)


class _Inputs:
    """Loads grids from ..mimi files or audio (encoding with a codec loaded on first need), checking weights."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._codec: Codec | None = None

    @property
    def codec(self) -> Codec:
        if self._codec is None:
            self._codec = load_codec(self.args)
        return self._codec

    def load_codec(self) -> None:
        """Load the codec now (so that .mimi inputs are checked against it before anything is written)."""
        _ = self.codec

    @property
    def codec_loaded(self) -> bool:
        return self._codec is not None

    def grid(self, path: str | Path) -> TokenGrid:
        from ..tokens import TokenGrid

        source = check_input(path)
        if source.suffix == ".mimi":
            return TokenGrid.load(source)
        return encode_file(self.codec, source, not self.args.quiet)

    def check_weights(self, grids: Sequence[tuple[str, Any]]) -> None:
        """Refuse .mimi grids made with weights other than the loaded codec's (unless --mix-weights)."""
        if not self.codec_loaded or getattr(self.args, "mix_weights", False):
            return
        expected = self.codec.weights_sha256
        for name, grid in grids:
            if grid.weights_sha256 and grid.weights_sha256 != expected:
                raise CliError(
                    f"{name} was encoded with weights {grid.weights_sha256[:12]}…, but --weights "
                    f"{self.args.weights} is {expected[:12]}…; its tokens mean nothing to this model. "
                    "Use the same weights, or pass --mix-weights to go on anyway"
                )


def _is_audio_output(path: Path) -> bool:
    if path.suffix == ".mimi":
        return False
    if path.suffix.lower() in AUDIO_OUTPUTS:
        return True
    raise CliError(f"output must end in .mimi (tokens) or {'/'.join(AUDIO_OUTPUTS)} (decoded audio), got {path.name}")


def _write_result(inputs: _Inputs, grid: TokenGrid, target: Path, force: bool) -> str:
    """Save a grid as .mimi, or decode every level it holds to audio; returns a description."""
    if not _is_audio_output(target):
        grid.save(target, force=force)
        return f"{grid.num_frames} frames, levels {grid.present}"
    levels = grid.present
    if not levels.is_prefix:
        print(
            f"note: decoding levels {levels}, not a prefix 0..k-1: outside what the decoder was trained on "
            "(experimental)",
            file=sys.stderr,
        )
    decode_to_file(inputs.codec, grid, levels, target, force, not inputs.args.quiet)
    return f"{grid.duration:.2f} s decoded from levels {levels}"


def _mimi_input(path: str) -> Path:
    source = check_input(path)
    if source.suffix != ".mimi":
        raise CliError(f"{source} is not a .mimi token file (encode it first: mimistack encode)")
    return source


def _mimi_output(path: str, force: bool) -> Path:
    target = check_output(path, force)
    if target.suffix != ".mimi":
        raise CliError(f"output must end in .mimi, got {target.name}")
    return target


@contextmanager
def _counter(description: str, enabled: bool) -> Iterator[Callable[[int, int, str], None]]:
    """A rich progress bar on stderr for counted work, as an `analysis.Progress` callback."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not (enabled and console.is_terminal),
        transient=True,
    )
    with bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int, label: str) -> None:
            bar.update(task, completed=done, total=total, description=f"{description} {label}")

        yield update


# -- surgery ---------------------------------------------------------------------------------------------------
def cmd_swap(args: argparse.Namespace) -> int:
    from ..ops import swap_levels

    target = check_output(args.output, args.force)
    audio_output = _is_audio_output(target)
    inputs = _Inputs(args)
    a, b = inputs.grid(args.a), inputs.grid(args.b)
    if audio_output:
        inputs.load_codec()
    inputs.check_weights([(args.a, a), (args.b, b)])
    result = swap_levels(a, b, args.from_b, length=args.length, force=args.mix_weights)
    result = result.replace(metadata={**result.metadata, "source": f"swap({Path(args.a).name}, {Path(args.b).name})"})
    done = _write_result(inputs, result, target, args.force)
    print(f"{args.a} + levels {args.from_b} of {args.b} (length: {args.length}) -> {target}: {done}")
    return 0


def cmd_anonymize(args: argparse.Namespace) -> int:
    from ..ops import anonymize, level_stats

    if args.voice is not None and args.random:
        raise CliError("--voice and --random exclude each other")
    if not args.random and (args.seed is not None or args.stats):
        raise CliError("--seed and --stats only apply to --random")
    if args.voice is None and not args.random:
        raise CliError("choose a source: --voice TARGET or --random")
    target = check_output(args.output, args.force)
    audio_output = _is_audio_output(target)
    inputs = _Inputs(args)
    grid = inputs.grid(args.input)
    voice = inputs.grid(args.voice) if args.voice is not None else None
    stats_grids = [(path, inputs.grid(path)) for path in args.stats or ()]
    if audio_output:
        inputs.load_codec()
    inputs.check_weights([(args.input, grid), *([(args.voice, voice)] if voice is not None else []), *stats_grids])
    if voice is not None:
        result = anonymize(grid, args.levels, voice=voice, length=args.length, force=args.mix_weights)
        how = f"the voice of {args.voice} (length: {args.length})"
    else:
        stats = level_stats([g for _, g in stats_grids], force=args.mix_weights) if stats_grids else None
        seed = args.seed if args.seed is not None else secrets.randbits(32)
        result = anonymize(grid, args.levels, random=seed, stats=stats, force=args.mix_weights)
        drawn = f"level statistics of {len(stats_grids)} file(s)" if stats is not None else "uniform"
        how = f"random tokens ({drawn}, seed {seed})"
    done = _write_result(inputs, result, target, args.force)
    print(f"{args.input}: levels {args.levels} replaced with {how} -> {target}: {done}")
    return 0


def cmd_keep(args: argparse.Namespace) -> int:
    from ..ops import drop_levels, keep_levels
    from ..tokens import TokenGrid

    source = _mimi_input(args.input)
    target = _mimi_output(args.output, args.force)
    grid = TokenGrid.load(source)
    result = keep_levels(grid, args.levels) if args.command == "keep" else drop_levels(grid, args.levels)
    result.save(target, force=args.force)
    print(
        f"{source} -> {target}: levels {result.present} of {grid.present} ({result.bitrate(result.present):.0f} bit/s)"
    )
    return 0


def cmd_splice(args: argparse.Namespace) -> int:
    from ..ops import splice
    from ..tokens import TokenGrid

    sources = [_mimi_input(path) for path in args.inputs]
    target = _mimi_output(args.output, args.force)
    result = splice([TokenGrid.load(source) for source in sources], force=args.mix_weights)
    result.save(target, force=args.force)
    print(f"{len(sources)} files -> {target}: {result.num_frames} frames, {result.duration:.2f} s")
    return 0


# -- analysis ------------------------------------------------------------------------------------------------------
def _metric_names(text: str | None, extra: Sequence[tuple[bool, str]]) -> list[str] | None:
    names = None if text is None else [name.strip() for name in text.split(",") if name.strip()]
    added = [name for flag, name in extra if flag]
    if added:
        from ..analysis import DEFAULT_SWEEP_METRICS

        names = [*(DEFAULT_SWEEP_METRICS if names is None else names), *added]
    return names


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..analysis import RANDOM_BANNER, sweep
    from ..audio import load_audio
    from ..metrics import MissingDependencyError

    source = check_input(args.input)
    if source.suffix == ".mimi":
        raise CliError("sweep compares decoded audio with the original: give the audio file, not a .mimi file")
    names = _metric_names(
        args.metrics,
        [(args.speaker_similarity, "speaker_similarity"), (args.dnsmos, "dnsmos"), (args.visqol, "visqol")],
    )
    out_dir = Path(args.output)
    if out_dir.exists() and any(out_dir.iterdir()) and not args.force:
        raise CliError(f"{out_dir} exists and is not empty; pass --force to write into it")
    codec = load_codec(args)
    pcm = load_audio(source, sample_rate=codec.sample_rate)
    if args.batch < 1:
        raise CliError(f"--batch must be at least 1, got {args.batch}")
    if args.max_seconds is not None:
        if args.max_seconds <= 0:
            raise CliError(f"--max-seconds must be positive, got {args.max_seconds}")
        pcm = pcm[: round(args.max_seconds * codec.sample_rate)]
    try:
        with _counter("sweep", not args.quiet) as update:
            result = sweep(
                codec,
                pcm,
                out_dir=out_dir,
                metrics=names,
                reference_text=args.text,
                force=args.force,
                progress=update,
                input_name=source.name,
                weights_label=args.weights,
                plots=not args.no_plots,
                batch_size=args.batch,
                reencode=args.reencode,
            )
    except MissingDependencyError as error:
        raise CliError(str(error)) from error
    print(
        f"{len(result.rows)} settings of {source.name} ({result.duration:.2f} s) -> {out_dir}/: index.html, "
        "results.csv, results.md, codec_superb.json, plots, audio/"
    )
    print(f"weights {args.weights}, sha256 {result.weights_sha256}")
    if result.random_weights:
        print(RANDOM_BANNER, file=sys.stderr)
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from ..analysis import RANDOM_BANNER, level_stats, weights_are_random, write_stats_report
    from ..analysis.scoring import coded_bitrates

    out_dir = Path(args.output)
    if out_dir.exists() and any(out_dir.iterdir()) and not args.force:
        raise CliError(f"{out_dir} exists and is not empty; pass --force to write into it")
    inputs = _Inputs(args)
    named = [(path, inputs.grid(path)) for path in args.inputs]
    reference = [(args.against, inputs.grid(args.against))] if args.against else []
    inputs.check_weights(named + reference)
    stats = level_stats([grid for _, grid in named], force=args.mix_weights)
    comparisons = None
    if reference:
        from ..stats import check_same_weights, token_agreement, token_edit_distance

        base = reference[0][1]
        comparisons = {}
        for path, grid in named:
            check_same_weights([base, grid], force=args.mix_weights)
            comparisons[Path(path).name] = (token_agreement(base, grid), token_edit_distance(base, grid))
    random_weights = inputs.codec_loaded and weights_are_random(inputs.codec)
    label = args.weights if inputs.codec_loaded else "as recorded in the .mimi files"
    write_stats_report(
        stats,
        out_dir,
        force=args.force,
        weights_label=label,
        random_weights=random_weights,
        sources=[Path(path).name for path, _ in named],
        coded_bitrate=coded_bitrates([grid for _, grid in named]),
        comparisons=comparisons,
        against=Path(args.against).name if args.against else "",
    )
    print(f"{stats.num_grids} file(s), {stats.num_frames} frames -> {out_dir}/: stats.csv, stats.md, stats.png")
    print(f"weights sha256 {stats.weights_sha256 or 'unknown'}")
    if random_weights:
        print(RANDOM_BANNER, file=sys.stderr)
    return 0


def _audio_files(paths: Sequence[str], limit: int | None) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        source = Path(path)
        if source.is_dir():
            found += sorted(p for p in source.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
        else:
            found.append(check_input(source))
    if not found:
        raise CliError(f"no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) in {', '.join(paths)}")
    return found[:limit] if limit is not None else found


def cmd_quality(args: argparse.Namespace) -> int:
    from ..analysis import RANDOM_BANNER, prefix_quality, quality_markdown, write_quality_report
    from ..metrics import MissingDependencyError

    if args.limit is not None and args.limit <= 0:
        raise CliError(f"--limit must be positive, got {args.limit}")
    try:
        prefixes = [int(p) for p in args.prefixes.split(",")]
    except ValueError:
        raise CliError(f"--prefixes must be a comma-separated list of level counts, got {args.prefixes!r}") from None
    files = _audio_files(args.inputs, args.limit)
    out_dir = Path(args.output)
    if out_dir.exists() and any(out_dir.iterdir()) and not args.force:
        raise CliError(f"{out_dir} exists and is not empty; pass --force to write into it")
    codec = load_codec(args)
    try:
        with _counter("quality", not args.quiet) as update:
            table = prefix_quality(
                codec,
                files,
                prefixes=prefixes,
                metrics=args.metrics.split(","),
                progress=update,
                weights_label=args.weights,
            )
    except MissingDependencyError as error:
        raise CliError(str(error)) from error
    write_quality_report(table, out_dir, force=args.force)
    print(quality_markdown(table))
    print(f"wrote {out_dir}/quality.md, quality.csv, quality_per_file.csv, codec_superb.json")
    if table.random_weights:
        print(RANDOM_BANNER, file=sys.stderr)
    return 0


# -- parser ----------------------------------------------------------------------------------------------------
def _add_output(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument("-o", "--output", required=True, help=help_text)
    p.add_argument("-f", "--force", action="store_true", help="overwrite the output")


def _add_mix(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mix-weights",
        action="store_true",
        help="combine tokens from different weights anyway (they index different codebooks)",
    )


def register(command: Command) -> None:
    """Add the surgery and analysis subcommands to the `mimistack` parser."""
    from ..ops import LENGTH_POLICIES

    lengths = (
        "how to fit B to A: loop (default: A's length, B repeated or trimmed), stretch (A's length, B "
        "resampled in time), shortest (trim both), a (A's length, B must be at least as long)"
    )

    p = command("swap", cmd_swap, "voice/style transfer: levels --from-b of B, the other levels of A")
    p.add_argument("a", help="utterance A (audio or .mimi): gives the levels not taken from B (the words)")
    p.add_argument("b", help="utterance B (audio or .mimi): gives the levels --from-b (the voice)")
    _add_output(p, "output: .mimi (tokens) or .wav/.flac (decoded)")
    p.add_argument("--from-b", default="1-31", help="levels taken from B (default 1-31, the acoustic levels)")
    p.add_argument("--length", choices=LENGTH_POLICIES, default="loop", help=lengths)
    _add_mix(p)

    p = command("anonymize", cmd_anonymize, "replace the acoustic levels with a target voice's or random tokens")
    p.add_argument("input", help="audio or .mimi")
    _add_output(p, "output: .mimi (tokens) or .wav/.flac (decoded)")
    p.add_argument("--voice", default=None, help="target voice (audio or .mimi) whose levels replace the input's")
    p.add_argument("--random", action="store_true", help="draw random tokens per level")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a fresh one, printed)")
    p.add_argument(
        "--stats",
        nargs="+",
        default=None,
        metavar="FILE",
        help="draw from the per-level token statistics of these files (audio or .mimi) instead of "
        "uniformly over the codebook",
    )
    p.add_argument("--levels", default="1-31", help="levels to replace (default 1-31)")
    p.add_argument("--length", choices=LENGTH_POLICIES, default="loop", help=f"with --voice: {lengths}")
    _add_mix(p)

    for name, verb in (("keep", "keep only"), ("drop", "remove")):
        p = command(name, cmd_keep, f"{verb} some levels of a .mimi file (marked absent, not zeroed)", model=False)
        p.add_argument("input", help=".mimi file")
        p.add_argument("--levels", required=True, help="'0-7', '0,3,9', 'acoustic', …")
        _add_output(p, "output .mimi file")

    p = command("splice", cmd_splice, "concatenate .mimi files in time", model=False)
    p.add_argument("inputs", nargs="+", help=".mimi files, in order")
    _add_output(p, "output .mimi file")
    _add_mix(p)

    p = command(
        "sweep",
        cmd_sweep,
        "decode every prefix 1-32, each level alone and each left out; score them "
        "and write a report (CSV, Markdown, plots, HTML with players)",
    )
    p.add_argument("input", help="audio file")
    _add_output(p, "report folder")
    p.add_argument(
        "--metrics",
        default=None,
        help="comma-separated metrics (default si_sdr,snr,stft_distance,mel_distance,stoi,pesq_wb)",
    )
    p.add_argument("--text", default=None, help="the words spoken: adds the word error rate (pocketsphinx)")
    p.add_argument("--speaker-similarity", action="store_true", help="add resemblyzer speaker similarity")
    p.add_argument("--dnsmos", action="store_true", help="add DNSMOS (speechmos)")
    p.add_argument("--visqol", action="store_true", help="add ViSQOL (visqol-python)")
    p.add_argument("--max-seconds", type=float, default=None, help="use only the first seconds of the input")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument(
        "--batch",
        type=int,
        default=1,
        help="level sets per decoder call (default 1: exactly the samples of decode; more pays off on a GPU)",
    )
    p.add_argument(
        "--reencode",
        action="store_true",
        help="encode each prefix's decoding again: token agreement and edit distance against the input's tokens",
    )

    p = command("stats", cmd_stats, "per-level codebook usage, entropy and perplexity over files")
    p.add_argument("inputs", nargs="+", help="audio files (encoded with --weights) or .mimi files")
    _add_output(p, "report folder")
    p.add_argument(
        "--against",
        default=None,
        metavar="REF",
        help="also compare every input's tokens with REF's (audio or .mimi): per-level agreement and edit distance",
    )
    _add_mix(p)

    p = command(
        "quality",
        cmd_quality,
        "mean STOI / PESQ-WB per number of levels over many files (the per-level table papers publish)",
    )
    p.add_argument(
        "inputs", nargs="+", help="audio files or folders (searched recursively, e.g. LibriSpeech/test-clean)"
    )
    _add_output(p, "report folder")
    p.add_argument("--prefixes", default="1,2,4,8,16,32", help="level counts to decode (default 1,2,4,8,16,32)")
    p.add_argument("--metrics", default="stoi,pesq_wb", help="comma-separated metrics (default stoi,pesq_wb)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N files (sorted by path)")
