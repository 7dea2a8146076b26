"""CLI commands that hold implementations and precisions to each other: `parity` and `precision`.

Registered by `cli.main` through `register(command)`. Sits on `analysis` (`run_parity`, `run_precision`, imported
inside the handlers), `weights`, `audio` and the shared CLI helpers. Both take audio clips (files or folders) and
the weights to test, and write a report folder (Markdown, JSON, a PNG).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..audio import AUDIO_SUFFIXES
from .common import CliError, check_input
from .table import Command

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from ..weights import WeightsRef


def _clips(paths: Sequence[str], max_seconds: float | None) -> list[tuple[str, NDArray[np.float32]]]:
    from ..audio import load_audio

    if max_seconds is not None and max_seconds <= 0:
        raise CliError(f"--max-seconds must be positive, got {max_seconds}")
    found: list[Path] = []
    for path in paths:
        source = Path(path)
        if source.is_dir():
            found += sorted(p for p in source.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
        else:
            found.append(check_input(source))
    if not found:
        raise CliError(f"no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) in {', '.join(paths)}")
    clips = []
    for source in found:
        if source.suffix == ".mimi":
            raise CliError(f"{source} is a token file: give the audio the implementations should encode")
        pcm = load_audio(source, sample_rate=24_000)
        if max_seconds is not None:
            pcm = pcm[: round(max_seconds * 24_000)]
        if pcm.size == 0:
            raise CliError(f"{source} holds no audio")
        clips.append((source.name, pcm))
    return clips


def _weights(args: argparse.Namespace) -> WeightsRef:
    from ..codec import RANDOM_WEIGHTS, random_weights_path
    from ..weights import WeightsRef

    source = random_weights_path(args.weights) if args.weights in RANDOM_WEIGHTS else args.weights
    return WeightsRef.resolve(source, args.revision)


def _out_dir(args: argparse.Namespace) -> Path:
    out_dir = Path(args.output)
    if out_dir.exists() and any(out_dir.iterdir()) and not args.force:
        raise CliError(f"{out_dir} exists and is not empty; pass --force to write into it")
    return out_dir


def _names(text: str | None) -> list[str]:
    return [] if not text else [name.strip() for name in text.split(",") if name.strip()]


def cmd_parity(args: argparse.Namespace) -> int:
    from ..analysis.parity import run_parity

    out_dir = _out_dir(args)
    clips = _clips(args.clips, args.max_seconds)
    weights = _weights(args)
    result = run_parity(
        weights,
        clips,
        out_dir=out_dir,
        skip=_names(args.skip),
        reference=args.reference,
        onnx_dir=args.onnx_dir,
        force=args.force,
        plots=not args.no_plots,
    )
    for item in result.implementations:
        agreement = item.agreement
        if item.status == "ran" and agreement is not None:
            mean = 100 * sum(agreement) / len(agreement)
            print(f"{item.name:26s} ran      {mean:7.3f} % of tokens equal to {result.reference}")
        else:
            print(f"{item.name:26s} {item.status:8s} {item.reason}")
    print(f"-> {out_dir}/: parity.md, parity.json" + ("" if args.no_plots else ", parity_heatmap.png"))
    print(f"weights sha256 {weights.sha256}")
    if weights.is_random:
        from ..analysis import RANDOM_BANNER

        print(RANDOM_BANNER, file=sys.stderr)
    return 0


def cmd_precision(args: argparse.Namespace) -> int:
    from ..analysis.precision import run_precision

    out_dir = _out_dir(args)
    clips = _clips(args.clips, args.max_seconds)
    weights = _weights(args)
    result = run_precision(
        weights,
        clips,
        out_dir=out_dir,
        skip=_names(args.skip),
        onnx_dir=args.onnx_dir,
        force=args.force,
        plots=not args.no_plots,
    )
    for path in result.paths:
        print(path.verdict())
    print(f"-> {out_dir}/: precision.md, precision.json" + ("" if args.no_plots else ", precision_margins.png"))
    print(f"weights sha256 {weights.sha256}")
    if weights.is_random:
        from ..analysis import RANDOM_BANNER

        print(RANDOM_BANNER, file=sys.stderr)
    return 0


def _common(p: argparse.ArgumentParser, skip_help: str) -> None:
    p.add_argument("clips", nargs="+", help="audio files or folders (searched recursively)")
    p.add_argument("-o", "--output", required=True, help="report folder")
    p.add_argument("-f", "--force", action="store_true", help="write into a report folder that is not empty")
    p.add_argument(
        "--weights",
        default="kyutai/mimi",
        help="local .safetensors file, hub id (default kyutai/mimi), or 'random' / 'random-tiny'",
    )
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
    p.add_argument(
        "--onnx", dest="onnx_dir", default=None, help="folder of exported ONNX graphs (default: the cached export)"
    )
    p.add_argument("--skip", default=None, help=skip_help)
    p.add_argument("--max-seconds", type=float, default=None, help="use only the first seconds of each clip")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG")


def register(command: Command) -> None:
    """Add `parity` and `precision` to the `mimistack` parser."""
    p = command(
        "parity",
        cmd_parity,
        "run every installed Mimi implementation on the same weights and clips and report where they agree "
        "(Markdown, JSON, heatmap)",
        model=False,
    )
    _common(p, "comma-separated implementations not to run (e.g. onnx-fp32,onnx-fp16,onnx-int8)")
    p.add_argument(
        "--reference", default=None, help="implementation to hold the others to (default moshi-batch, if it runs)"
    )

    p = command(
        "precision",
        cmd_precision,
        "nearest-centroid margins per level, and every reduced-precision path available here against exact fp32",
        model=False,
    )
    _common(p, "comma-separated paths not to run (onnx-fp16, onnx-int8, cuda-fp32, cuda-tf32, cuda-bf16, cuda-fp16)")
