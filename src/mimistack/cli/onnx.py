"""`mimistack export-onnx`: write the ONNX graphs of a checkpoint (for `--engine onnx`, the browser and
transformers.js); `mimistack export-web`: write the browser page with its model bundles as a static site.

A feature module of the CLI (listed in `cli.main.REGISTRARS`): `register(command)` adds the subcommand; the work is
`engine.export.export_onnx`, imported only when the command runs so that the CLI itself stays torch-free.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .common import RANDOM_WARNING, CliError
from .table import Command


def _weights(name: str) -> Any:
    """--weights as export_onnx takes it: the random checkpoints' cached files (with the warning), else as given."""
    if name not in ("random", "random-tiny"):
        return name
    from ..codec import random_weights_path

    print(RANDOM_WARNING, file=sys.stderr)
    return random_weights_path(name)


def cmd_export_onnx(args: argparse.Namespace) -> int:
    target = Path(args.output)
    if not target.parent.exists():
        raise CliError(f"output folder {target.parent} does not exist")
    if target.exists() and not target.is_dir():
        raise CliError(f"{target} exists and is not a folder")
    if target.exists() and any(target.iterdir()) and not args.force:
        raise CliError(f"{target} exists and is not empty; pass --force to replace it")
    from ..engine.export import ExportDependencyError, export_onnx

    weights = _weights(args.weights)
    variants = ["fp32"] + (["fp16"] if args.fp16 else []) + (["int8"] if args.int8 else [])
    modes = ["window"] + (["moshi"] if args.moshi_stream else [])
    if not args.quiet:
        print(
            f"exporting {args.weights} to {target} (tracing takes minutes for the official model)...", file=sys.stderr
        )
    try:
        result = export_onnx(
            weights,
            target,
            opset=args.opset,
            variants=variants,
            force=args.force,
            stream_modes=modes,
            transformers_js=not args.no_transformers_js,
            revision=args.revision,
        )
    except ExportDependencyError as error:
        raise CliError(str(error)) from error
    manifest = result.manifest
    total = sum(manifest["files"][name]["bytes"] for name in manifest["files"])
    print(
        f"{target}: {len(result.files)} files, {total / 1e6:.1f} MB, weights sha256 "
        f"{manifest['weights_sha256'][:16]}…, opset {manifest['opset']}, {result.total_seconds:.1f} s"
    )
    for step, seconds in result.seconds.items():
        print(f"  {step:<28} {seconds:8.1f} s")
    checks = manifest.get("checks") or {}
    if checks:
        print(
            f"  check against torch: codes agreement {checks['worst_codes_agreement']:.4%}, audio relative L2 "
            f"{checks['worst_audio_relative_l2']:.2e} (worst over graphs and lengths)"
        )
    for variant, report in manifest["variants"].items():
        errors = report.get("errors_vs_fp32")
        if errors:
            print(
                f"  {variant}: codes agreement {errors['codes_agreement']:.2%} (level 0 "
                f"{errors['level0_agreement']:.2%}), decoder audio relative L2 "
                f"{errors['decoder_audio_relative_l2']:.2e} vs fp32"
            )
    print(f"use it: mimistack encode IN.wav -o OUT.mimi --engine onnx --onnx {target}")
    return 0


def cmd_export_web(args: argparse.Namespace) -> int:
    from ..engine.export.site import PAGE_DIR, write_site

    bundles = ["exact", "light"] if args.bundle == "both" else [args.bundle]
    audio = None
    if args.measure_audio:
        from ..audio import load_audio

        audio = load_audio(args.measure_audio)
    onnx_dir = _export_folder(args)
    if not args.quiet:
        print(f"writing {', '.join(bundles)} bundle(s) of {onnx_dir} into {args.output}...", file=sys.stderr)
    result = write_site(
        onnx_dir,
        args.output,
        Path(args.static_dir) if args.static_dir else PAGE_DIR,
        bundles=bundles,
        default=args.default if args.default in bundles else bundles[0],
        audio=audio,
        force=args.force,
    )
    for name, manifest in result.bundles.items():
        measured = manifest["measured"]
        line = f"  {name:<6} {manifest['total_bytes'] / 1e6:7.1f} MB ({manifest['storage']} storage, float32 compute)"
        if name == "light":
            line += (
                f": codes {measured['code_agreement_vs_exact']:.2%} equal to exact, decode SNR "
                f"{measured['decode_snr_db_vs_exact']:.1f} dB vs exact ({measured['signal']})"
            )
        else:
            line += ": codes and audio identical to the ONNX export"
        print(line)
    print(f"{result.out_dir}: serve it with `python -m http.server --directory {result.out_dir}` or any static host")
    return 0


def _export_folder(args: argparse.Namespace) -> Path:
    """The export folder to make the bundles from: --onnx DIR, or the cache's export of --weights (made on first
    use, which needs torch)."""
    if args.onnx_dir:
        folder = Path(args.onnx_dir)
        if not (folder / "manifest.json").is_file():
            raise CliError(f"--onnx {folder}: no manifest.json there (write one with `mimistack export-onnx`)")
        return folder
    from ..engine.onnx_cache import load_onnx_engine

    weights = _weights(args.weights)
    return load_onnx_engine(weights=weights, revision=args.revision).onnx_dir


def _add_weights(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--weights",
        default="kyutai/mimi",
        help="local .safetensors file, hub id (default kyutai/mimi), or 'random' / 'random-tiny'",
    )
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")


def register(command: Command) -> None:
    p = command(
        "export-onnx",
        cmd_export_onnx,
        "export ONNX graphs (batch, streaming, level embedding, transformers.js) of a checkpoint",
        model=False,
    )
    _add_weights(p)
    p.add_argument("-o", "--output", required=True, help="folder to write (created)")
    p.add_argument("--fp16", action="store_true", help="also write fp16 graphs (error vs fp32 in the manifest)")
    p.add_argument(
        "--int8",
        action="store_true",
        help="also write dynamically int8-quantized graphs (error vs fp32 in the manifest)",
    )
    p.add_argument(
        "--moshi-stream",
        action="store_true",
        help="also write stream graphs with moshi's ring-cache arithmetic (for mode='moshi' streams)",
    )
    p.add_argument("--no-transformers-js", action="store_true", help="skip the transformers.js folder")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (default 18)")
    p.add_argument("-f", "--force", action="store_true", help="replace an earlier export in the output folder")

    p = command(
        "export-web",
        cmd_export_web,
        "write the browser page with its model bundles as a static site (any static file server serves it)",
        model=False,
    )
    _add_weights(p)
    p.add_argument("--onnx", dest="onnx_dir", default=None, help="make the bundles from this export-onnx folder")
    p.add_argument("-o", "--output", required=True, help="site folder to write (created)")
    p.add_argument(
        "--bundle",
        choices=("exact", "light", "both"),
        default="both",
        help="exact: float32, codes identical to Python's; light: float16 storage, float32 compute (default both)",
    )
    p.add_argument("--default", choices=("exact", "light"), default="exact", help="the bundle the page loads first")
    p.add_argument(
        "--measure-audio", default=None, help="audio file to measure the light bundle on (default: a synthetic 4 s)"
    )
    p.add_argument("--static-dir", default=None, help=argparse.SUPPRESS)
    p.add_argument("-f", "--force", action="store_true", help="replace an earlier site in the output folder")
