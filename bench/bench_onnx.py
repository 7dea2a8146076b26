"""Side-by-side benchmark: moshi, rustymimi, mimistack's torch engine and its ONNX engine on one checkpoint.

    python bench/bench_onnx.py                       # random official-size weights, 2 threads, 10 s and 60 s
    python bench/bench_onnx.py --quick               # tiny sizes: proves the harness works in ~a minute
    python bench/bench_onnx.py --weights W.safetensors --onnx DIR --json results.json
    python bench/bench_onnx.py --profile --quick     # ONNX Runtime per-operator profile of the stream graphs
    python bench/bench_onnx.py --onnx-sweep --quick  # ONNX session options: optimisation level, spinning

Each engine runs in its own subprocess (so that peak RSS is its own), pinned to `--threads` threads (torch, ONNX
Runtime intra-op, OMP/MKL/rayon). Per engine: session load time; batch encode and decode throughput (seconds of
audio per second) at each duration; streaming latency per 80 ms frame (encode one frame, decode one frame; p50 and
p99); peak RSS. moshi and rustymimi read the Kyutai-layout checkpoint (what `write_random_checkpoint` writes).

Sits on `mimistack.codec` (torch and onnx engines), `mimistack.engine.onnx` and the moshi / rustymimi packages.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ENGINES = ("moshi", "rustymimi", "torch", "onnx")
FRAME = 1920
SAMPLE_RATE = 24_000
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the one speech helper: tests/speech_data.py
from speech_data import speech_files  # noqa: E402


# -- worker side ----------------------------------------------------------------------------------------------
def test_audio(seconds: float) -> np.ndarray:
    """The test speech clips, tiled to length."""
    from mimistack.audio import load_audio

    speech = np.concatenate([load_audio(f) for f in speech_files()[:4]])
    reps = int(np.ceil(seconds * SAMPLE_RATE / len(speech)))
    return np.tile(speech, reps)[: int(seconds * SAMPLE_RATE)].astype(np.float32)


class Runner:
    """One engine behind four calls: batch encode/decode and one-frame stream steps."""

    def __init__(self, engine: str, weights: str, onnx_dir: str | None, threads: int, options: dict[str, Any]):
        self.engine = engine
        started = time.perf_counter()
        getattr(self, f"_load_{engine}")(weights, onnx_dir, threads, options)
        self.load_seconds = time.perf_counter() - started

    # moshi ------------------------------------------------------------------------------------------------
    def _load_moshi(self, weights: str, onnx_dir: str | None, threads: int, options: dict[str, Any]) -> None:
        import torch
        from moshi.models.loaders import get_mimi

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = get_mimi(weights, device="cpu", num_codebooks=32).eval()

    def _moshi_encode(self, pcm: np.ndarray) -> Any:
        with self.torch.no_grad():
            return self.model.encode(self.torch.from_numpy(pcm)[None, None])

    def _moshi_decode(self, codes: Any) -> Any:
        with self.torch.no_grad():
            return self.model.decode(codes)

    def _moshi_stream(self, frames: np.ndarray, steps: int) -> tuple[list[float], list[float]]:
        torch = self.torch
        encode_ms, decode_ms = [], []
        with torch.no_grad(), self.model.streaming(batch_size=1):
            for index in range(steps):
                frame = torch.from_numpy(frames[index])[None, None]
                started = time.perf_counter()
                codes = self.model.encode(frame)
                encode_ms.append((time.perf_counter() - started) * 1e3)
                started = time.perf_counter()
                self.model.decode(codes)
                decode_ms.append((time.perf_counter() - started) * 1e3)
        return encode_ms, decode_ms

    # rustymimi --------------------------------------------------------------------------------------------
    def _load_rustymimi(self, weights: str, onnx_dir: str | None, threads: int, options: dict[str, Any]) -> None:
        import rustymimi

        self.rusty = rustymimi
        self.model = rustymimi.Tokenizer(weights, num_codebooks=32)

    def _rustymimi_encode(self, pcm: np.ndarray) -> Any:
        return self.model.encode(pcm[None, None])

    def _rustymimi_decode(self, codes: Any) -> Any:
        return self.model.decode(codes)

    def _rustymimi_stream(self, frames: np.ndarray, steps: int) -> tuple[list[float], list[float]]:
        self.model.reset()
        encode_ms, decode_ms = [], []
        for index in range(steps):
            frame = frames[index][None, None]
            started = time.perf_counter()
            codes = self.model.encode_step(frame)
            encode_ms.append((time.perf_counter() - started) * 1e3)
            started = time.perf_counter()
            self.model.decode_step(codes)
            decode_ms.append((time.perf_counter() - started) * 1e3)
        return encode_ms, decode_ms

    # mimistack (torch or onnx) ----------------------------------------------------------------------------
    def _load_torch(self, weights: str, onnx_dir: str | None, threads: int, options: dict[str, Any]) -> None:
        from mimistack.codec import Codec
        from mimistack.engine.options import TorchOptions

        self.codec = Codec.load(weights, engine=TorchOptions(num_threads=threads))

    def _load_onnx(self, weights: str, onnx_dir: str | None, threads: int, options: dict[str, Any]) -> None:
        from mimistack.codec import Codec
        from mimistack.engine.onnx import OnnxEngine, prefer_shared_thread_pool
        from mimistack.engine.onnx_cache import load_onnx_engine

        # As the `mimistack` program runs it: one ONNX Runtime thread pool for the process (engine.onnx explains).
        prefer_shared_thread_pool(os.environ.get("MIMISTACK_BENCH_ORT_POOL", "shared") == "shared")
        if options:
            engine = OnnxEngine(
                onnx_dir or load_onnx_engine(weights=weights).onnx_dir,
                num_threads=threads,
                **{k: v for k, v in options.items() if k != "profile"},
            )
            if options.get("profile"):
                engine.session_options.enable_profiling = True
                engine.session_options.profile_file_prefix = options["profile"]
        else:
            engine = load_onnx_engine(weights=None if onnx_dir else weights, onnx_dir=onnx_dir, num_threads=threads)
        engine.warm_up()
        self.codec = Codec(engine)

    def _mimistack_encode(self, pcm: np.ndarray) -> Any:
        return self.codec.encode(pcm)

    def _mimistack_decode(self, grid: Any) -> Any:
        return self.codec.decode(grid)

    def _mimistack_stream(self, frames: np.ndarray, steps: int) -> tuple[list[float], list[float]]:
        encoder, decoder = self.codec.stream_encoder(), self.codec.stream_decoder()
        encode_ms, decode_ms = [], []
        for index in range(steps):
            started = time.perf_counter()
            codes = encoder.push(frames[index])
            encode_ms.append((time.perf_counter() - started) * 1e3)
            started = time.perf_counter()
            decoder.push(codes)
            decode_ms.append((time.perf_counter() - started) * 1e3)
        return encode_ms, decode_ms

    def call(self, what: str) -> Callable[..., Any]:
        prefix = "mimistack" if self.engine in ("torch", "onnx") else self.engine
        return getattr(self, f"_{prefix}_{what}")


def timed_best(function: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - started)
    return best, result


def worker(args: argparse.Namespace) -> dict[str, Any]:
    options = json.loads(args.onnx_options) if args.onnx_options else {}
    runner = Runner(args.worker, args.weights, args.onnx, args.threads, options)
    result: dict[str, Any] = {"engine": args.worker, "load_seconds": runner.load_seconds, "batch": {}}
    encode, decode, stream = runner.call("encode"), runner.call("decode"), runner.call("stream")
    decode(encode(test_audio(1.0)))  # warm-up: first-call allocations and lazy initialisation
    for seconds in args.durations:
        pcm = test_audio(seconds)
        encode_s, codes = timed_best(lambda pcm=pcm: encode(pcm), args.repeats)
        decode_s, _ = timed_best(lambda codes=codes: decode(codes), args.repeats)
        result["batch"][str(seconds)] = {
            "encode_x_realtime": seconds / encode_s,
            "decode_x_realtime": seconds / decode_s,
            "encode_seconds": encode_s,
            "decode_seconds": decode_s,
        }
    frames = test_audio((args.stream_frames + 5) * FRAME / SAMPLE_RATE)[: (args.stream_frames + 5) * FRAME]
    frames = frames.reshape(-1, FRAME)
    stream(frames, 3)  # warm-up
    encode_ms, decode_ms = stream(frames, args.stream_frames)
    total = np.array(encode_ms) + np.array(decode_ms)
    result["stream"] = {
        "frames": args.stream_frames,
        "encode_ms_p50": float(np.percentile(encode_ms, 50)),
        "encode_ms_p99": float(np.percentile(encode_ms, 99)),
        "decode_ms_p50": float(np.percentile(decode_ms, 50)),
        "decode_ms_p99": float(np.percentile(decode_ms, 99)),
        "total_ms_p50": float(np.percentile(total, 50)),
        "x_realtime": 80.0 / float(np.percentile(total, 50)),
    }
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if options.get("profile") and args.worker == "onnx":
        result["profile"] = summarise_profiles(runner.codec.engine)
    return result


def summarise_profiles(engine: Any) -> dict[str, Any]:
    """Per-operator-type share of time in each ONNX Runtime session's profile (top 12)."""
    summary: dict[str, Any] = {}
    for graph, session in engine._sessions.items():
        path = session.end_profiling()
        events = json.loads(Path(path).read_text())
        totals: dict[str, float] = {}
        for event in events:
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
                op = event.get("args", {}).get("op_name", "?")
                totals[op] = totals.get(op, 0.0) + event["dur"]
        overall = sum(totals.values()) or 1.0
        top = sorted(totals.items(), key=lambda item: -item[1])[:12]
        summary[graph] = {
            "file": path,
            "kernel_ms": overall / 1e3,
            "top": {op: f"{100 * us / overall:.1f}%" for op, us in top},
        }
    return summary


# -- parent side ----------------------------------------------------------------------------------------------
def run_worker(
    engine: str,
    args: argparse.Namespace,
    weights: str,
    onnx_dir: str | None,
    onnx_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    threads = str(args.threads)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "RAYON_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
    }
    command = [
        sys.executable,
        __file__,
        "--worker",
        engine,
        "--weights",
        weights,
        "--threads",
        threads,
        "--durations",
        ",".join(str(d) for d in args.durations),
        "--stream-frames",
        str(args.stream_frames),
        "--repeats",
        str(args.repeats),
    ]
    if onnx_dir:
        command += ["--onnx", onnx_dir]
    if onnx_options:
        command += ["--onnx-options", json.dumps(onnx_options)]
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout)
    if completed.returncode != 0:
        return {"engine": engine, "error": (completed.stderr or completed.stdout).strip().splitlines()[-1:]}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def print_table(results: list[dict[str, Any]], durations: list[float]) -> None:
    ok = [r for r in results if "error" not in r]
    baseline = next((r for r in ok if r["engine"] == "moshi"), None)
    header = ["engine", "load s", "RSS MB"]
    for seconds in durations:
        header += [f"enc {seconds:g}s xRT", f"dec {seconds:g}s xRT"]
    header += ["stream enc p50/p99 ms", "stream dec p50/p99 ms", "stream xRT"]
    rows = [header]
    for r in ok:
        row = [r["engine"], f"{r['load_seconds']:.2f}", f"{r['peak_rss_mb']:.0f}"]
        for seconds in durations:
            batch = r["batch"][str(seconds)]
            row += [f"{batch['encode_x_realtime']:.1f}", f"{batch['decode_x_realtime']:.1f}"]
        s = r["stream"]
        row += [
            f"{s['encode_ms_p50']:.1f}/{s['encode_ms_p99']:.1f}",
            f"{s['decode_ms_p50']:.1f}/{s['decode_ms_p99']:.1f}",
            f"{s['x_realtime']:.1f}",
        ]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))
    for r in results:
        if "error" in r:
            print(f"{r['engine']}: FAILED: {' '.join(r['error'])}")
    if baseline is None:
        return
    print("\nratio to moshi (higher is better; streaming: moshi's p50 frame time / engine's):")
    for r in ok:
        parts = []
        for seconds in durations:
            mine, base = r["batch"][str(seconds)], baseline["batch"][str(seconds)]
            parts.append(
                f"enc {seconds:g}s {mine['encode_x_realtime'] / base['encode_x_realtime']:.2f}x, "
                f"dec {seconds:g}s {mine['decode_x_realtime'] / base['decode_x_realtime']:.2f}x"
            )
        stream_ratio = baseline["stream"]["total_ms_p50"] / r["stream"]["total_ms_p50"]
        print(f"  {r['engine']:<10} {'; '.join(parts)}; stream {stream_ratio:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="Kyutai-layout .safetensors (default: random official)")
    parser.add_argument("--onnx", default=None, help="export folder (default: exported on first use, cached)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--durations", default="10,60", help="batch input lengths in seconds")
    parser.add_argument("--stream-frames", type=int, default=200, help="80 ms frames timed when streaming")
    parser.add_argument("--repeats", type=int, default=3, help="batch timings keep the best of this many")
    parser.add_argument("--quick", action="store_true", help="2 s batch, 20 stream frames, 1 repeat")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--profile", action="store_true", help="ONNX Runtime profile of the onnx engine's graphs")
    parser.add_argument("--onnx-sweep", action="store_true", help="compare ONNX Runtime session options")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--onnx-options", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.durations, args.stream_frames, args.repeats = "2", 20, 1
    args.durations = [float(d) for d in str(args.durations).split(",")]
    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    from mimistack.codec import random_weights_path

    weights = args.weights or str(random_weights_path("random"))
    onnx_dir = args.onnx
    if onnx_dir is None and ("onnx" in args.engines or args.profile or args.onnx_sweep):
        from mimistack.engine.onnx_cache import load_onnx_engine

        started = time.perf_counter()
        onnx_dir = str(load_onnx_engine(weights=weights).onnx_dir)
        print(f"ONNX graphs: {onnx_dir} ({time.perf_counter() - started:.1f} s to find or export)")
    print(f"weights {weights}, {args.threads} threads, batch {args.durations} s, {args.stream_frames} stream frames")
    results: list[dict[str, Any]] = []
    if args.profile:
        prefix = str(Path(tempfile.mkdtemp(prefix="mimistack-onnx-profile-")) / "profile")
        result = run_worker("onnx", args, weights, onnx_dir, {"profile": prefix})
        print(json.dumps(result.get("profile", result), indent=2))
        results.append(result)
    elif args.onnx_sweep:
        for optimization in ("basic", "extended", "all"):
            for spinning in (True, False):
                result = run_worker(
                    "onnx", args, weights, onnx_dir, {"optimization": optimization, "spinning": spinning}
                )
                result["engine"] = f"onnx/{optimization}/{'spin' if spinning else 'nospin'}"
                results.append(result)
        print_table(results, args.durations)
    else:
        for engine in args.engines.split(","):
            results.append(run_worker(engine, args, weights, onnx_dir))
            print(f"  {engine}: done", file=sys.stderr)
        print_table(results, args.durations)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
