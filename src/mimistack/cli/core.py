"""The codec commands: encode, decode, roundtrip, info, truncate, demo.

Sits on `cli.common`, `codec`, `tokens`, `mimifile` (via `tokens`/`container`) and `audio`; registered by
`cli.main`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .._files import write_text
from ..levels import Levels
from .common import (
    RANDOM_WARNING,
    RANDOM_WEIGHTS,
    CliError,
    check_input,
    check_output,
    decode_to_file,
    encode_file,
    jsonable,
    levels_note,
    load_codec,
    parse_levels,
)
from .table import Command


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
    print(
        f"{source} -> {target}: {grid.num_frames} frames x {grid.num_levels} levels, {grid.duration:.2f} s of "
        f"audio in {elapsed:.2f} s ({grid.duration / max(elapsed, 1e-9):.1f}x real time)"
    )
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from ..tokens import TokenGrid

    source = check_input(args.input)
    target = check_output(args.output, args.force)
    grid = TokenGrid.load(source)
    levels = parse_levels(args.levels, grid.num_levels, default=grid.present)
    levels_note(levels)
    codec = load_codec(args)
    decode_to_file(codec, grid, levels, target, args.force, not args.quiet)
    print(f"{source} -> {target}: levels {levels} ({grid.bitrate(levels):.0f} bit/s), {grid.duration:.2f} s")
    return 0


def cmd_roundtrip(args: argparse.Namespace) -> int:
    source = check_input(args.input)
    target = check_output(args.output, args.force)
    codec = load_codec(args)
    levels = parse_levels(args.levels, codec.num_levels)
    levels_note(levels)
    grid = encode_file(codec, source, not args.quiet)
    decode_to_file(codec, grid, levels, target, args.force, not args.quiet)
    print(f"{source} -> {target}: levels {levels} ({grid.bitrate(levels):.0f} bit/s), {grid.duration:.2f} s")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from ..levels import format_levels
    from ..mimifile import describe

    source = check_input(args.input)
    info = describe(source)
    needed = _entropy_coded_bitrates(source)
    if args.json:
        report = jsonable(info)
        assert isinstance(report, dict)
        report["entropy_coded_bitrate"] = {str(level): round(bps, 3) for level, bps in needed.items()}
        print(json.dumps(report, indent=2))
        return 0
    print(f"{info.path}: .mimi v{info.version}, {info.layout}, {info.coding}")
    print(f"  {info.num_frames} frames, {info.duration:.2f} s at {info.sample_rate} Hz, {info.frame_rate:g} frames/s")
    print(
        f"  levels present: {format_levels(info.levels_present)} of {info.num_levels}"
        + (" (TRUNCATED file)" if info.truncated else "")
    )
    print(f"  weights sha256: {info.weights_sha256 or 'unknown'}")
    print(f"  size: {info.total_bytes} bytes (header {info.header_bytes}), {info.bitrate:.1f} bit/s overall")
    if info.levels:
        print("  level     bytes    bit/s  cumulative bit/s  entropy-coded bit/s")
        cumulative = 0.0
        for level in info.levels:
            cumulative += level.bitrate
            coded = needed.get(level.level)
            column = f"  {coded:>19.1f}" if coded is not None else ""
            print(f"  {level.level:>5}  {level.bytes:>8}  {level.bitrate:>7.1f}  {cumulative:>16.1f}{column}")
        print("  (entropy-coded: what the adaptive range coder needs for this file's tokens; nominal 137.5 bit/s)")
    return 0


def _entropy_coded_bitrates(source: Path) -> dict[int, float]:
    """Per level: the bits per second the adaptive range coder needs for this file's tokens (`measure_coding`)."""
    import warnings

    from ..mimifile import TruncatedFileWarning, measure_coding
    from ..tokens import TokenGrid

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncatedFileWarning)  # `describe` has said so already
        grid = TokenGrid.load(source)
    if grid.num_frames == 0:
        return {}
    measured = measure_coding([grid])
    return {
        level: bits * grid.frame_rate
        for level, bits in zip(measured.levels, measured.range_bits_per_token, strict=True)
    }


def cmd_truncate(args: argparse.Namespace) -> int:
    from ..mimifile import truncate

    source = check_input(args.input)
    target = check_output(args.output, args.force)
    if not args.levels.strip():
        raise CliError("--levels is empty; give levels such as '0-7', '0,3,9' or 'all'")
    truncate(source, args.levels, target, force=args.force)
    print(f"{source} -> {target}: levels {args.levels}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ..audio import load_audio, save_audio

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
    original = load_audio(source)
    for count in (1, 8, 32):
        levels = Levels.prefix(min(count, codec.num_levels), codec.num_levels)
        started = time.perf_counter()
        pcm = codec.decode(grid, levels)
        seconds = time.perf_counter() - started
        name = f"decoded_{count:02d}_levels.wav"
        save_audio(out_dir / name, pcm, codec.sample_rate, force=True)
        rows.append(
            {
                "levels": str(levels),
                "file": name,
                "bitrate_bps": grid.bitrate(levels),
                "snr_db": _snr(original, pcm),
                "decode_seconds": round(seconds, 3),
            }
        )
    random_weights = codec.weights.is_random if codec.weights is not None else args.weights in RANDOM_WEIGHTS
    summary = {
        "input": str(source),
        "duration_s": round(grid.duration, 3),
        "frames": grid.num_frames,
        "weights": args.weights,
        "weights_sha256": codec.weights_sha256,
        "random_weights": random_weights,
        "engine": codec.engine.name,
        "encode_seconds": round(encode_seconds, 3),
        "outputs": rows,
    }
    write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n", force=True)
    lines = [
        f"# mimistack demo: {source.name}",
        "",
        f"{grid.duration:.2f} s, {grid.num_frames} frames x {grid.num_levels} levels, encoded in "
        f"{encode_seconds:.2f} s. Weights: {args.weights} (sha256 {codec.weights_sha256[:16]}…).",
        "",
    ]
    if random_weights:
        lines += ["**Random weights: the decoded audio is meaningless.**", ""]
    lines += ["| levels | bitrate | SNR vs input | file |", "|---|---|---|---|"]
    lines += [f"| {r['levels']} | {r['bitrate_bps']:.0f} bit/s | {r['snr_db']:.1f} dB | {r['file']} |" for r in rows]
    write_text(out_dir / "summary.md", "\n".join(lines) + "\n", force=True)
    print("\n".join(lines))
    print(f"\nwrote {out_dir}/: tokens.mimi, {', '.join(str(r['file']) for r in rows)}, summary.md, summary.json")
    if random_weights:
        print(RANDOM_WARNING, file=sys.stderr)
    return 0


def _snr(reference: np.ndarray, estimate: np.ndarray) -> float:
    n = min(len(reference), len(estimate))
    noise = float(np.sum((reference[:n] - estimate[:n]) ** 2))
    signal = float(np.sum(reference[:n] ** 2))
    return float(10 * np.log10(max(signal, 1e-12) / max(noise, 1e-12)))


def register(command: Command) -> None:
    p = command("encode", cmd_encode, "encode an audio file (any format, rate, channels) to a .mimi token file")
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True)
    p.add_argument(
        "--coding",
        choices=("packed11", "range"),
        default="packed11",
        help="token coding: fixed 11-bit packing or lossless range coding",
    )
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

    p = command(
        "info", cmd_info, "describe a .mimi file: format version, levels, bytes and bitrate per level", model=False
    )
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
