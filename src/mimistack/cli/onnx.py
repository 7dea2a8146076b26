"""`mimistack export-onnx`: write the ONNX graphs of a checkpoint (for `--engine onnx`, the browser and
transformers.js).

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


def cmd_export_onnx(args: argparse.Namespace) -> int:
    target = Path(args.output)
    if not target.parent.exists():
        raise CliError(f"output folder {target.parent} does not exist")
    if target.exists() and not target.is_dir():
        raise CliError(f"{target} exists and is not a folder")
    if target.exists() and any(target.iterdir()) and not args.force:
        raise CliError(f"{target} exists and is not empty; pass --force to replace it")
    from ..engine.export import ExportDependencyError, export_onnx

    weights: Any = args.weights
    if weights in ("random", "random-tiny"):
        from ..codec import random_weights_path

        print(RANDOM_WARNING, file=sys.stderr)
        weights = random_weights_path(weights)
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


def register(command: Command) -> None:
    p = command(
        "export-onnx",
        cmd_export_onnx,
        "export ONNX graphs (batch, streaming, level embedding, transformers.js) of a checkpoint",
        model=False,
    )
    p.add_argument(
        "--weights",
        default="kyutai/mimi",
        help="local .safetensors file, hub id (default kyutai/mimi), or 'random' / 'random-tiny'",
    )
    p.add_argument("--revision", default=None, help="hub revision (branch, tag or commit)")
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
