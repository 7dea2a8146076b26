"""What every command shares: the error type, the model options, input and output checks, progress bars.

Sits on `codec` (loaded lazily, so `--help` stays fast and torch-free), `levels`, `tokens` and `audio`; used by
every command module of `cli/`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..engine.options import OnnxOptions, TorchOptions
from ..errors import MimistackError
from ..levels import Levels, LevelsError

if TYPE_CHECKING:
    from ..codec import Codec
    from ..tokens import TokenGrid

RANDOM_WEIGHTS = ("random", "random-tiny")
RANDOM_WARNING = (
    "WARNING: --weights random uses RANDOM weights (Mimi's architecture, no training): the pipeline "
    "runs for real, but the audio it decodes is meaningless noise. Use the real weights "
    "(kyutai/mimi) to hear Mimi."
)


class CliError(MimistackError):
    """A user-facing error: printed without a traceback, exit status 2."""


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument(
        "--weights",
        default="kyutai/mimi",
        help="local .safetensors file, hub id (default kyutai/mimi, cached offline after the first "
        "download), or 'random' / 'random-tiny' (random weights: meaningless audio)",
    )
    group.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    group.add_argument(
        "--engine",
        choices=("auto", "torch", "onnx"),
        default="auto",
        help="auto (default): torch when it is installed, else ONNX Runtime",
    )
    group.add_argument("--onnx", dest="onnx_dir", default=None, help="folder of exported ONNX graphs (engine onnx)")
    group.add_argument(
        "--onnx-variant",
        choices=("fp32", "fp16", "int8"),
        default="fp32",
        help="which exported graphs the onnx engine runs: fp32 (exact) or a reduced-precision "
        "variant, if exported (export-onnx --fp16 / --int8; their errors are in BENCHMARKS.md)",
    )
    group.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1")
    group.add_argument("--threads", type=int, default=None, help="CPU threads for the engine")


def engine_options(args: argparse.Namespace, streaming: bool = False) -> TorchOptions | OnnxOptions:
    """The engine options the model flags describe; a flag of the other engine is an error, not ignored.

    `streaming`: the command streams frame by frame, where ONNX Runtime is the faster engine on a CPU (28 ms for
    an encoded and decoded frame against 93 ms with torch on 2 cores, BENCHMARKS.md), so "auto" picks it there;
    on CUDA "auto" stays torch."""
    engine = args.engine
    onnx_only = args.onnx_dir is not None or args.onnx_variant != "fp32"
    if engine == "auto":
        from ..engine.options import torch_available

        cpu = str(args.device) == "cpu"
        engine = "onnx" if onnx_only or not torch_available() or (streaming and cpu) else "torch"
    if engine == "torch":
        if onnx_only:
            raise CliError("--onnx and --onnx-variant are options of --engine onnx")
        return TorchOptions(device=args.device, num_threads=args.threads)
    return OnnxOptions(onnx_dir=args.onnx_dir, variant=args.onnx_variant, device=args.device, num_threads=args.threads)


def load_codec(args: argparse.Namespace, streaming: bool = False) -> Codec:
    """The codec the model flags describe (`streaming`: see `engine_options`)."""
    from ..codec import Codec

    if args.weights in RANDOM_WEIGHTS:
        print(RANDOM_WARNING, file=sys.stderr)
    return Codec.load(args.weights, engine=engine_options(args, streaming), revision=args.revision)


def parse_levels(spec: str | None, num_levels: int, default: Levels | None = None) -> Levels:
    """`--levels` as a level set; absent means `default`, but an empty specification is an error."""
    if spec is None and default is not None:
        return default
    if spec is None or not spec.strip():
        raise CliError("--levels is empty; give levels such as '0-7', '0,3,9' or 'all'")
    try:
        levels = Levels.parse(spec, num_levels)
    except LevelsError as error:
        raise CliError(f"--levels {spec!r}: {error}") from error
    if not len(levels):
        raise CliError(f"--levels {spec!r} selects no level")
    return levels


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
        self._bar = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.total:.0f} s"),
            TimeRemainingColumn(),
            console=console,
            disable=not (enabled and console.is_terminal),
            transient=True,
        )
        self._task = self._bar.add_task(description, total=total or 0)

    def __enter__(self) -> Progress:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(None, None, None)

    def advance(self, seconds: float) -> None:
        self._bar.update(self._task, advance=seconds)


def encode_file(codec: Codec, source: Path, show_progress: bool = True) -> TokenGrid:
    """`Codec.encode_file` with a progress bar and the source's name in the grid's metadata."""
    from .._version import __version__
    from ..audio import audio_info

    with Progress(f"encoding {source.name}", audio_info(source).duration, show_progress) as bar:
        grid = codec.encode_file(source, progress=bar.advance)
    return grid.replace(metadata={"source": source.name, "mimistack_version": __version__})


def decode_to_file(
    codec: Codec, grid: TokenGrid, levels: Levels, target: Path, force: bool, show_progress: bool = True
) -> None:
    """Decode `levels` of `grid` into an audio file chunk by chunk (bounded memory), atomically."""
    from ..audio import AudioWriter

    selected = grid.check_levels(levels)
    decoder = codec.stream_decoder(selected)
    written = 0
    with (
        Progress(f"decoding {target.name}", grid.duration, show_progress) as bar,
        AudioWriter(target, codec.sample_rate, force=force) as writer,
    ):
        for start in range(0, grid.num_frames, codec.chunk_frames):
            pcm = decoder.push(grid.codes[:, start : start + codec.chunk_frames])
            pcm = pcm[: max(0, grid.num_samples - written)]
            writer.write(pcm)
            written += len(pcm)
            bar.advance(len(pcm) / codec.sample_rate)


def levels_note(levels: Levels) -> None:
    if not levels.is_prefix and len(levels):
        print(
            f"note: levels {levels} are not a prefix 0..k-1: valid arithmetic, but outside what the decoder was "
            "trained on (experimental)",
            file=sys.stderr,
        )


def jsonable(value: object) -> object:
    """Dataclasses, paths and numpy scalars as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value
