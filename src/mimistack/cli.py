"""The `mimistack` command line.

Top layer: uses `codec`, `audio`, `container`, and the feature modules that register their own subcommands
(`register(subparsers)` in `mimistack.cli_*` modules). Errors go to stderr with exit status 2 (bad input) or 1
(failure); outputs are written atomically and never overwrite without `--force`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__

logger = logging.getLogger("mimistack")

FEATURE_MODULES = ("mimistack.cli_ops", "mimistack.cli_stream", "mimistack.cli_corpus", "mimistack.cli_server",
                   "mimistack.cli_onnx")
RANDOM_WARNING = ("WARNING: --weights random uses RANDOM weights (Mimi's architecture, no training): the pipeline "
                  "runs for real, but the audio it decodes is meaningless noise. Use the real weights "
                  "(kyutai/mimi) to hear Mimi.")


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


# -- shared options -----------------------------------------------------------------------------------------
def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--weights", default="kyutai/mimi",
                       help="local .safetensors file, hub id (default kyutai/mimi, cached offline after the first "
                            "download), or 'random' / 'random-tiny' (random weights: meaningless audio)")
    group.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    group.add_argument("--engine", choices=("torch", "onnx"), default="torch")
    group.add_argument("--onnx", dest="onnx_dir", default=None, help="folder of exported ONNX graphs (engine onnx)")
    group.add_argument("--onnx-variant", choices=("fp32", "fp16", "int8"), default="fp32",
                       help="which exported graphs the onnx engine runs: fp32 (exact) or a reduced-precision "
                            "variant, if exported (export-onnx --fp16 / --int8; their errors are in BENCHMARKS.md)")
    group.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 (torch engine)")
    group.add_argument("--threads", type=int, default=None, help="CPU threads for the engine")


def load_codec(args: argparse.Namespace) -> Any:
    from .codec import Codec

    if args.weights in ("random", "random-tiny"):
        print(RANDOM_WARNING, file=sys.stderr)
    variant = getattr(args, "onnx_variant", "fp32")
    if variant != "fp32" and args.engine != "onnx":
        raise CliError(f"--onnx-variant {variant} needs --engine onnx")
    return Codec.load(args.weights, engine=args.engine, device=args.device, revision=args.revision,
                      onnx_dir=args.onnx_dir, num_threads=args.threads, onnx_variant=variant)


def check_output(path: str | Path, force: bool) -> Path:
    target = Path(path)
    if target.exists() and not force:
        raise CliError(f"{target} exists; pass --force to overwrite it")
    if not target.parent.exists():
        raise CliError(f"output folder {target.parent} does not exist")
    return target


def check_input(path: str | Path) -> Path:
    source = Path(path)
    if not source.exists():
        raise CliError(f"input file not found: {source}")
    if source.is_dir():
        raise CliError(f"{source} is a folder, not a file")
    return source


class Progress:
    """A seconds-of-audio progress bar on stderr; silent when disabled or when stderr is not a terminal."""

    def __init__(self, description: str, total: float | None, enabled: bool = True) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        console = Console(stderr=True)
        self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.completed:.0f}/{task.total:.0f} s"), TimeRemainingColumn(),
                                 console=console, disable=not (enabled and console.is_terminal), transient=True)
        self._task = self._bar.add_task(description, total=total or 0)

    def __enter__(self) -> Progress:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(None, None, None)

    def advance(self, seconds: float) -> None:
        self._bar.update(self._task, advance=seconds)


# -- encode / decode ----------------------------------------------------------------------------------------
def encode_file(codec: Any, source: Path, show_progress: bool = True) -> Any:
    """Encode an audio file of any length with bounded memory (chunks aligned to the codec's chunk size)."""
    from .audio import audio_info, iter_audio

    info = audio_info(source)
    encoder = codec.stream_encoder()
    chunk_seconds = codec.chunk_frames * codec.frame_size / codec.sample_rate
    with Progress(f"encoding {source.name}", info.duration, show_progress) as bar:
        for chunk in iter_audio(source, chunk_seconds=chunk_seconds, sample_rate=codec.sample_rate):
            encoder.push(chunk)
            bar.advance(len(chunk) / codec.sample_rate)
        encoder.flush()
    grid = encoder.grid()
    if grid.num_samples == 0:
        raise CliError(f"{source} holds no audio")
    return grid.replace(metadata={"source": source.name, "mimistack_version": __version__})


def decode_to_file(codec: Any, grid: Any, levels: Any, target: Path, force: bool, show_progress: bool = True) -> None:
    from .audio import AudioWriter

    selected = grid.check_levels(levels)
    decoder = codec.stream_decoder(selected)
    written = 0
    with Progress(f"decoding {target.name}", grid.duration, show_progress) as bar, \
            AudioWriter(target, codec.sample_rate, force=force) as writer:
        for start in range(0, grid.num_frames, codec.chunk_frames):
            pcm = decoder.push(grid.codes[:, start:start + codec.chunk_frames])
            pcm = pcm[:max(0, grid.num_samples - written)]
            writer.write(pcm)
            written += len(pcm)
            bar.advance(len(pcm) / codec.sample_rate)


def _levels_note(levels: Any) -> None:
    if not levels.is_prefix and len(levels):
        print(f"note: levels {levels} are not a prefix 0..k-1: valid arithmetic, but outside what the decoder was "
              "trained on (experimental)", file=sys.stderr)


def cmd_encode(args: argparse.Namespace) -> int:
    source = check_input(args.input)
    target = check_output(args.output, args.force)
    if target.suffix != ".mimi":
        raise CliError(f"output must end in .mimi, got {target.name}")
    codec = load_codec(args)
    started = time.perf_counter()
    grid = encode_file(codec, source, not args.quiet)
    grid.save(target, force=args.force, coding=args.coding)
    elapsed = time.perf_counter() - started
    print(f"{source} -> {target}: {grid.num_frames} frames x {grid.num_levels} levels, {grid.duration:.2f} s of "
          f"audio in {elapsed:.2f} s ({grid.duration / max(elapsed, 1e-9):.1f}x real time)")
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from .levels import Levels
    from .tokens import TokenGrid

    source = check_input(args.input)
    target = check_output(args.output, args.force)
    grid = TokenGrid.load(source)
    levels = Levels.parse(args.levels, grid.num_levels) if args.levels else grid.present
    _levels_note(levels)
    codec = load_codec(args)
    decode_to_file(codec, grid, levels, target, args.force, not args.quiet)
    print(f"{source} -> {target}: levels {levels} ({grid.bitrate(levels):.0f} bit/s), {grid.duration:.2f} s")
    return 0


def cmd_roundtrip(args: argparse.Namespace) -> int:
    from .levels import Levels

    source = check_input(args.input)
    target = check_output(args.output, args.force)
    codec = load_codec(args)
    levels = Levels.parse(args.levels, codec.num_levels)
    _levels_note(levels)
    grid = encode_file(codec, source, not args.quiet)
    decode_to_file(codec, grid, levels, target, args.force, not args.quiet)
    print(f"{source} -> {target}: levels {levels} ({grid.bitrate(levels):.0f} bit/s), {grid.duration:.2f} s")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .container import describe

    info = describe(check_input(args.input))
    if args.json:
        print(json.dumps(_jsonable(info), indent=2))
        return 0
    print(f"{info.path}: .mimi v{info.version}, {info.layout}, {info.coding}")
    print(f"  {info.num_frames} frames, {info.duration:.2f} s at {info.sample_rate} Hz, {info.frame_rate:g} frames/s")
    from .levels import format_levels

    print(f"  levels present: {format_levels(info.levels_present)} of {info.num_levels}"
          + (" (TRUNCATED file)" if info.truncated else ""))
    print(f"  weights sha256: {info.weights_sha256 or 'unknown'}")
    print(f"  size: {info.total_bytes} bytes (header {info.header_bytes}), {info.bitrate:.1f} bit/s overall")
    if info.levels:
        print("  level  bytes     bit/s   cumulative bit/s")
        cumulative = 0.0
        for level in info.levels:
            cumulative += level.bitrate
            print(f"  {level.level:>5}  {level.bytes:>8}  {level.bitrate:>7.1f}  {cumulative:>8.1f}")
    return 0


def _jsonable(value: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def cmd_truncate(args: argparse.Namespace) -> int:
    from .container import truncate

    source = check_input(args.input)
    target = check_output(args.output, args.force)
    truncate(source, args.levels, target, force=args.force)
    print(f"{source} -> {target}: levels {args.levels}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .audio import save_audio
    from .levels import Levels

    source = check_input(args.input)
    out_dir = Path(args.output)
    if out_dir.exists() and any(out_dir.iterdir()) and not args.force:
        raise CliError(f"{out_dir} exists and is not empty; pass --force to write into it")
    out_dir.mkdir(parents=True, exist_ok=True)
    codec = load_codec(args)
    started = time.perf_counter()
    grid = encode_file(codec, source, not args.quiet)
    encode_seconds = time.perf_counter() - started
    grid.save(out_dir / "tokens.mimi", force=True)
    rows = []
    from .audio import load_audio

    original = load_audio(source)
    for count in (1, 8, 32):
        levels = Levels.prefix(count, codec.num_levels)
        started = time.perf_counter()
        pcm = codec.decode(grid, levels)
        seconds = time.perf_counter() - started
        name = f"decoded_{count:02d}_levels.wav"
        save_audio(out_dir / name, pcm, codec.sample_rate, force=True)
        rows.append({"levels": str(levels), "file": name, "bitrate_bps": grid.bitrate(levels),
                     "snr_db": _snr(original, pcm), "decode_seconds": round(seconds, 3)})
    summary = {"input": str(source), "duration_s": round(grid.duration, 3), "frames": grid.num_frames,
               "weights": args.weights, "weights_sha256": codec.weights_sha256,
               "random_weights": args.weights in ("random", "random-tiny"), "engine": args.engine,
               "encode_seconds": round(encode_seconds, 3), "outputs": rows}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"# mimistack demo: {source.name}", "",
             f"{grid.duration:.2f} s, {grid.num_frames} frames x {grid.num_levels} levels, encoded in "
             f"{encode_seconds:.2f} s. Weights: {args.weights} (sha256 {codec.weights_sha256[:16]}…).", ""]
    if summary["random_weights"]:
        lines += ["**Random weights: the decoded audio is meaningless.**", ""]
    lines += ["| levels | bitrate | SNR vs input | file |", "|---|---|---|---|"]
    lines += [f"| {r['levels']} | {r['bitrate_bps']:.0f} bit/s | {r['snr_db']:.1f} dB | {r['file']} |" for r in rows]
    (out_dir / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {out_dir}/: tokens.mimi, {', '.join(r['file'] for r in rows)}, summary.md, summary.json")
    if summary["random_weights"]:
        print(RANDOM_WARNING, file=sys.stderr)
    return 0


def _snr(reference: np.ndarray, estimate: np.ndarray) -> float:
    n = min(len(reference), len(estimate))
    noise = float(np.sum((reference[:n] - estimate[:n]) ** 2))
    signal = float(np.sum(reference[:n] ** 2))
    return 10 * np.log10(max(signal, 1e-12) / max(noise, 1e-12))


# -- parser -------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mimistack", description="Kyutai's Mimi codec: the full 32-level token "
                                     "stack, locally.")
    parser.add_argument("--version", action="version", version=f"mimistack {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (weights, timings)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def command(name: str, handler: Callable[[argparse.Namespace], int], help_text: str,
                model: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        if model:
            add_model_options(p)
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
        return p

    p = command("encode", cmd_encode, "encode an audio file (any format, rate, channels) to a .mimi token file")
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--coding", choices=("packed11", "range"), default="packed11",
                   help="token coding: fixed 11-bit packing or lossless range coding")
    p.add_argument("-f", "--force", action="store_true")

    p = command("decode", cmd_decode, "decode a .mimi file to audio with any subset of levels")
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--levels", default=None, help="'0-7', '0,3,9', 'all' (default: every level in the file)")
    p.add_argument("-f", "--force", action="store_true")

    p = command("roundtrip", cmd_roundtrip, "encode and decode an audio file with the chosen levels")
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--levels", default="all")
    p.add_argument("-f", "--force", action="store_true")

    p = command("info", cmd_info, "describe a .mimi file: levels, bytes and bitrate per level", model=False)
    p.add_argument("input")
    p.add_argument("--json", action="store_true")

    p = command("truncate", cmd_truncate, "keep only some levels of a .mimi file (a lower-bitrate file)", model=False)
    p.add_argument("input")
    p.add_argument("--levels", required=True)
    p.add_argument("-o", "--output", required=True)
    p.add_argument("-f", "--force", action="store_true")

    p = command("demo", cmd_demo, "encode a file and decode it at 1, 8 and 32 levels, with a summary")
    p.add_argument("input")
    p.add_argument("-o", "--output", default="mimistack-demo", help="output folder (default mimistack-demo)")
    p.add_argument("-f", "--force", action="store_true")

    for name in FEATURE_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name == name:
                continue
            raise
        module.register(sub, command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s",
                        stream=sys.stderr)
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (CliError, FileExistsError, FileNotFoundError, ValueError) as error:
        print(f"mimistack {args.command}: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        if args.verbose:
            raise
        print(f"mimistack {args.command}: failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


def entry() -> None:
    """The `mimistack` program: like `main`, plus one ONNX Runtime thread pool for the whole process (a process we
    own, so no foreign ONNX Runtime session can be refused for it; see `engine.onnx.prefer_shared_thread_pool`)."""
    from .engine.onnx import prefer_shared_thread_pool

    prefer_shared_thread_pool()
    sys.exit(main())


if __name__ == "__main__":
    entry()
