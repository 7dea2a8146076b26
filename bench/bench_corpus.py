"""Throughput of `mimistack tokenize-corpus` (Ray Data, local) against a plain single-process loop, on this machine.

Uses `mimistack.corpus.tokenize_corpus` and `mimistack.Codec`; see docs/corpus.md. CPU only (the GPU measurement
is bench/gpu_corpus.py). Builds a corpus of N copies of the speech samples in a temporary folder, then for each
engine (torch; onnx when its graphs are available):

  loop   for each file: codec.encode(load_audio(file)), one process, the engine using every CPU
  ray    tokenize_corpus(...) on a local Ray started beforehand (its start is reported apart); actor start-up and
         model loading are inside the measured time, as a user would see them

and prints audio seconds per second (= audio hours per hour) and whether the Ray codes equal the loop's.

    python bench/bench_corpus.py --quick            # 3 short files, 1 copy: proves it runs (a minute or two)
    python bench/bench_corpus.py --copies 20        # a real measurement
    python bench/bench_corpus.py --engines torch,onnx --onnx mimi-onnx
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the one speech helper: tests/speech_data.py
from speech_data import SPEECH_DIR, speech_files  # noqa: E402

QUICK_FILES = (
    "real_sense_and_sensibility_01_austen_64kb-0880.wav",
    "real_sense_and_sensibility_01_austen_64kb-0890.wav",
    "flite_awb.wav",
)


def build_corpus(folder: Path, speech_dir: Path, copies: int, quick: bool) -> list[Path]:
    if speech_dir == SPEECH_DIR:
        sources = [SPEECH_DIR / name for name in QUICK_FILES] if quick else speech_files()
    else:
        sources = sorted(speech_dir.glob("*.wav"))
    if not sources or not all(p.exists() for p in sources):
        raise SystemExit(f"speech clips missing in {speech_dir}")
    files = []
    for copy in range(copies):
        for source in sources:
            target = folder / f"copy{copy:03d}" / source.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            files.append(target)
    return files


def plain_loop(
    files: list[Path], weights: str, engine: str, onnx_dir: str | None, threads: int
) -> tuple[float, float, dict[str, np.ndarray]]:
    from mimistack import Codec, OnnxOptions, TorchOptions, load_audio

    options = (
        OnnxOptions(onnx_dir=onnx_dir, num_threads=threads) if engine == "onnx" else TorchOptions(num_threads=threads)
    )
    codec = Codec.load(weights, engine=options)
    codec.encode(np.zeros(codec.frame_size, dtype=np.float32))  # warm-up: first-call allocations
    codes, seconds = {}, 0.0
    started = time.perf_counter()
    for path in files:
        pcm = load_audio(path)
        codes[str(path)] = codec.encode(pcm).codes
        seconds += len(pcm) / codec.sample_rate
    return seconds, time.perf_counter() - started, codes


def ray_pipeline(
    folder: Path, out: Path, weights: str, engine: str, onnx_dir: str | None, encoders: int | None
) -> tuple[float, float, dict[str, np.ndarray]]:
    from mimistack import corpus

    result = corpus.tokenize_corpus(folder, out, weights, engine=engine, onnx_dir=onnx_dir, encoders=encoders)
    codes = {record.source_path: record.grid.codes for record in corpus.open(out)}
    return result.audio_seconds, result.elapsed_seconds, codes


def agreement(reference: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> str:
    if set(reference) != set(other):
        return f"files differ ({len(reference)} vs {len(other)})"
    equal = sum(int(np.array_equal(reference[k], other[k])) for k in reference)
    tokens = sum(reference[k].size for k in reference)
    same = sum(int((reference[k] == other[k]).sum()) for k in reference if reference[k].shape == other[k].shape)
    return f"{equal}/{len(reference)} files identical, {100 * same / tokens:.3f}% tokens"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 short files, 1 copy (proves the script runs)")
    parser.add_argument("--copies", type=int, default=None, help="copies of the speech samples (default 10)")
    parser.add_argument(
        "--weights", default="random", help="default: random official-size weights (same speed as kyutai/mimi)"
    )
    parser.add_argument("--engines", default="torch,onnx", help="comma-separated: torch, onnx")
    parser.add_argument("--onnx", dest="onnx_dir", default=None, help="exported ONNX graphs for the onnx engine")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for Ray and the loop (default: all)")
    parser.add_argument("--encoders", type=int, default=None, help="Ray encoder actors (default: one per CPU)")
    parser.add_argument("--speech-dir", type=Path, default=SPEECH_DIR)
    args = parser.parse_args()

    import ray
    import torch

    from mimistack import __version__

    cpus = args.num_cpus or len(os.sched_getaffinity(0))
    copies = args.copies or (1 if args.quick else 10)
    print(
        f"mimistack {__version__}, torch {torch.__version__}, ray {ray.__version__}, python "
        f"{platform.python_version()}; {cpus} CPUs ({platform.processor() or platform.machine()}), load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; weights {args.weights}"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-corpus-") as scratch:
        folder = Path(scratch) / "audio"
        files = build_corpus(folder, args.speech_dir, copies, args.quick)
        print(f"corpus: {len(files)} files ({copies} copies)")
        started = time.perf_counter()
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(
            num_cpus=cpus,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            _node_ip_address="127.0.0.1",
        )
        print(f"ray start: {time.perf_counter() - started:.1f} s (not in the figures below)")
        try:
            for engine in [e.strip() for e in args.engines.split(",") if e.strip()]:
                try:
                    seconds, elapsed, loop_codes = plain_loop(files, args.weights, engine, args.onnx_dir, cpus)
                except Exception as error:  # one engine failing must not hide the others
                    rows.append(
                        (
                            engine,
                            "single-process loop",
                            "-",
                            "-",
                            "-",
                            f"unavailable: {type(error).__name__}: {str(error).splitlines()[0][:100]}",
                        )
                    )
                    continue
                rows.append(
                    (
                        engine,
                        "single-process loop",
                        f"{seconds:.1f}",
                        f"{elapsed:.1f}",
                        f"{seconds / elapsed:.2f}",
                        "reference",
                    )
                )
                try:
                    out = Path(scratch) / f"tokens-{engine}"
                    seconds, elapsed, ray_codes = ray_pipeline(
                        folder, out, args.weights, engine, args.onnx_dir, args.encoders
                    )
                    rows.append(
                        (
                            engine,
                            "ray tokenize-corpus",
                            f"{seconds:.1f}",
                            f"{elapsed:.1f}",
                            f"{seconds / elapsed:.2f}",
                            agreement(loop_codes, ray_codes),
                        )
                    )
                except Exception as error:
                    rows.append(
                        (engine, "ray tokenize-corpus", "-", "-", "-", f"failed: {type(error).__name__}: {error}"[:120])
                    )
        finally:
            ray.shutdown()
    header = ("engine", "path", "audio s", "wall s", "audio s/s (= h/h)", "codes vs loop")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("| " + " | ".join(str(cell).ljust(width) for cell, width in zip(row, widths)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
