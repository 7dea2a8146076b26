"""Encode/decode throughput and peak memory: mimistack's torch engine side by side with moshi and rustymimi.

Every measurement runs in its own subprocess (so peak RSS is that of one implementation doing one task), on the
same random checkpoint in the official layout, on real speech tiled to the requested duration.

    python bench/bench_codec.py                      # 10 s and 60 s, 8 and 32 levels, batch and streaming
    python bench/bench_codec.py --quick              # 4 s only, a smoke run
    python bench/bench_codec.py --json results.json

Throughput is audio seconds per wall-clock second (higher is better; > 1 is faster than real time).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FRAME = 1920
RATE = 24000
IMPLEMENTATIONS = ("moshi", "rustymimi", "mimistack")
TASKS = ("encode", "decode", "stream-encode", "stream-decode")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the one speech helper: tests/speech_data.py
from speech_data import speech_files  # noqa: E402


def speech(seconds: float) -> np.ndarray:
    import soundfile

    clips = [soundfile.read(str(f), dtype="float32")[0] for f in speech_files()]
    pcm = np.concatenate(clips)
    frames = int(seconds * RATE) // FRAME
    return np.resize(pcm, frames * FRAME).astype(np.float32)


# -- one measurement (in a subprocess) ----------------------------------------------------------------------
def worker(impl: str, task: str, seconds: float, levels: int, checkpoint: str, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    pcm = speech(seconds)
    started = time.perf_counter()
    run = _runner(impl, checkpoint, levels)
    load_seconds = time.perf_counter() - started
    warm = speech(1.0)
    run(task, warm)  # warm-up: first-call allocations and kernel selection
    started = time.perf_counter()
    run(task, pcm)
    elapsed = time.perf_counter() - started
    return {
        "impl": impl,
        "task": task,
        "seconds": seconds,
        "levels": levels,
        "elapsed": elapsed,
        "throughput": seconds / elapsed,
        "load_seconds": load_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _runner(impl: str, checkpoint: str, levels: int):
    import torch

    if impl == "moshi":
        from moshi.models.loaders import get_mimi

        model = get_mimi(checkpoint, device="cpu", num_codebooks=levels)

        def run(task: str, pcm: np.ndarray) -> None:
            x = torch.from_numpy(pcm)[None, None]
            with torch.no_grad():
                if task == "encode":
                    model.encode(x)
                elif task == "decode":
                    model.decode(_codes(pcm, levels))
                elif task == "stream-encode":
                    with model.streaming(1):
                        for i in range(0, len(pcm), FRAME):
                            model.encode(x[..., i : i + FRAME])
                else:
                    codes = _codes(pcm, levels)
                    with model.streaming(1):
                        for i in range(codes.shape[-1]):
                            model.decode(codes[..., i : i + 1])

        return run

    if impl == "rustymimi":
        import rustymimi

        tokenizer = rustymimi.Tokenizer(checkpoint, num_codebooks=levels)

        def run(task: str, pcm: np.ndarray) -> None:
            x = np.ascontiguousarray(pcm[None, None])
            codes = np.ascontiguousarray(_codes(pcm, levels).numpy().astype(np.uint32))
            if task == "encode":
                tokenizer.encode(x)
            elif task == "decode":
                tokenizer.decode(codes)
            elif task == "stream-encode":
                tokenizer.reset()
                for i in range(0, len(pcm), FRAME):
                    tokenizer.encode_step(np.ascontiguousarray(x[..., i : i + FRAME]))
            else:
                tokenizer.reset()
                for i in range(codes.shape[-1]):
                    tokenizer.decode_step(np.ascontiguousarray(codes[..., i : i + 1]))

        return run

    from mimistack.codec import Codec

    codec = Codec.load(checkpoint)
    selection = f"0-{levels - 1}"

    def run(task: str, pcm: np.ndarray) -> None:
        if task == "encode":
            codec.encode(pcm)
        elif task == "decode":
            codec.decode_codes(_full_codes(pcm), selection)
        elif task == "stream-encode":
            encoder = codec.stream_encoder()
            for i in range(0, len(pcm), FRAME):
                encoder.push(pcm[i : i + FRAME])
        else:
            codes = _full_codes(pcm)
            decoder = codec.stream_decoder(selection)
            for i in range(codes.shape[-1]):
                decoder.push(codes[:, i : i + 1])

    return run


def _codes(pcm: np.ndarray, levels: int):
    import torch

    return torch.from_numpy(_full_codes(pcm)[:levels].astype(np.int64))[None]


def _full_codes(pcm: np.ndarray) -> np.ndarray:
    """Deterministic pseudo-random tokens [32, T] (decode cost does not depend on which tokens)."""
    return np.random.default_rng(0).integers(0, 2048, size=(32, len(pcm) // FRAME))


# -- driver -------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="official-layout .safetensors (default: a random one)")
    parser.add_argument("--seconds", type=float, nargs="+", default=[10.0, 60.0])
    parser.add_argument("--levels", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--impls", nargs="+", default=list(IMPLEMENTATIONS), choices=IMPLEMENTATIONS)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument(
        "--stream-seconds",
        type=float,
        default=None,
        help="cap streaming runs at this duration (moshi streams slowly); default: no cap",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="4 s, 32 levels: a smoke run")
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--worker", nargs=5, metavar=("IMPL", "TASK", "SECONDS", "LEVELS", "CHECKPOINT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        impl, task, seconds, levels, checkpoint = args.worker
        print(json.dumps(worker(impl, task, float(seconds), int(levels), checkpoint, args.threads)))
        return
    if args.quick:
        args.seconds, args.levels = [4.0], [32]
    checkpoint = args.checkpoint or str(_random_checkpoint())
    rows = []
    for seconds in args.seconds:
        for levels in args.levels:
            for task in args.tasks:
                if task.startswith("stream") and args.stream_seconds and seconds > args.stream_seconds:
                    continue
                for impl in args.impls:
                    command = [
                        sys.executable,
                        __file__,
                        "--threads",
                        str(args.threads),
                        "--worker",
                        impl,
                        task,
                        str(seconds),
                        str(levels),
                        checkpoint,
                    ]
                    result = subprocess.run(command, capture_output=True, text=True, check=False)
                    if result.returncode != 0:
                        print(f"{impl} {task} {seconds}s failed: {result.stderr.strip()[-300:]}", file=sys.stderr)
                        continue
                    row = json.loads(result.stdout.strip().splitlines()[-1])
                    rows.append(row)
                    print(
                        f"{impl:>10} {task:>13} {seconds:>4.0f}s {levels:>2} levels: {row['throughput']:7.2f}x "
                        f"real time, peak RSS {row['peak_rss_mb']:6.0f} MB",
                        file=sys.stderr,
                        flush=True,
                    )
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def table(rows: list[dict]) -> str:
    lines = [
        "| task | audio | levels | impl | throughput (audio s/s) | vs moshi | peak RSS (MB) | load (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        base = next(
            (
                r
                for r in rows
                if r["impl"] == "moshi"
                and r["task"] == row["task"]
                and r["seconds"] == row["seconds"]
                and r["levels"] == row["levels"]
            ),
            None,
        )
        ratio = f"{row['throughput'] / base['throughput']:.2f}x" if base else "n/a"
        lines.append(
            f"| {row['task']} | {row['seconds']:.0f} s | {row['levels']} | {row['impl']} | "
            f"{row['throughput']:.2f} | {ratio} | {row['peak_rss_mb']:.0f} | {row['load_seconds']:.1f} |"
        )
    return "\n".join(lines)


def _random_checkpoint() -> Path:
    from mimistack.codec import random_weights_path

    return random_weights_path("random")


if __name__ == "__main__":
    main()
