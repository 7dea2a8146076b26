"""Real-time capacity of many streams: the largest number of concurrent streams whose p99 step time stays under
80 ms (one frame), for encode-only, decode-only and duplex, side by side in one run:

- `mimistack`: one stream pool (`Codec.stream_pool`), one batched engine call per direction per step, on the
  engine the streaming commands pick (ONNX Runtime on a CPU; `--engine` to choose);
- `moshi`: Kyutai's `mimi.streaming(batch_size=N)`, N rows stepped together (the same weights);
- `independent`: N single-stream sessions of our own engine (`stream_encoder`/`stream_decoder`), stepped one
  after the other, which is what a server without batching does;
- `server` (unless `--no-server`): `mimistack stream serve` in a subprocess with N real-time encode (or decode,
  or both) clients on loopback; a count holds real time when the server's p99 step time stays under a frame and
  every frame's p99 latency (last sample sent -> codes or pcm received) under 2 frames (a frame may wait for the
  step in flight, then its own), both counted after the first 6 frames, as the pool's steps are.

Weights: the official-size architecture with RANDOM weights (`--weights random`, written once to the cache): the
compute is real, the audio is noise. Latency per frame (p50/p99 of the step times at each capacity) is printed
too.

    python bench/bench_streams.py --quick                         # a few minutes
    python bench/bench_streams.py --json out/streams.json         # the full run
    python bench/bench_streams.py --engine torch --directions encode
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from mimistack.audio import load_audio  # noqa: E402
from mimistack.codec import Codec, random_weights_path  # noqa: E402
from mimistack.engine.options import OnnxOptions, TorchOptions  # noqa: E402
from speech_data import speech_files  # noqa: E402

FRAME_MS = 80.0
WARMUP_FRAMES = 6
"""Steps (or frames) not timed at each count, in the pool and through the server alike."""
DIRECTIONS = ("encode", "decode", "duplex")
Stepper = Callable[[int], Callable[[], None]]
"""n -> a function that advances n streams by one frame."""


# -- inputs ----------------------------------------------------------------------------------------------------
class Inputs:
    """Speech for every stream (each from its own offset in a long concatenation) and codes to decode."""

    def __init__(self, codec: Codec) -> None:
        speech = np.concatenate([load_audio(path) for path in speech_files()])
        self.size = codec.frame_size
        self.frames = len(speech) // self.size
        self.pcm = speech[: self.frames * self.size].reshape(self.frames, self.size).astype(np.float32)
        codes = codec.encode(speech[: min(len(speech), 240 * self.size)]).codes.astype(np.int64)
        self.codes = codes  # [K, F]

    def pcm_frame(self, stream: int, step: int) -> np.ndarray:
        return self.pcm[(stream * 37 + step) % self.frames]

    def codes_frame(self, stream: int, step: int) -> np.ndarray:
        return self.codes[:, (stream * 37 + step) % self.codes.shape[1]]


# -- the three in-process contenders ------------------------------------------------------------------------------
def pool_stepper(codec: Codec, inputs: Inputs, direction: str) -> Stepper:
    def make(n: int) -> Callable[[], None]:
        pool = codec.stream_pool(n, "both" if direction == "duplex" else direction, keep_outputs=False)  # type: ignore[arg-type]
        slots = [pool.open() for _ in range(n)]
        count = [0]

        def step() -> None:
            t = count[0]
            for i, slot in enumerate(slots):
                if direction != "decode":
                    pool.push_pcm(slot, inputs.pcm_frame(i, t))
                if direction != "encode":
                    pool.push_codes(slot, inputs.codes_frame(i, t))
            pool.step()
            count[0] += 1

        return step

    return make


def independent_stepper(codec: Codec, inputs: Inputs, direction: str) -> Stepper:
    def make(n: int) -> Callable[[], None]:
        encoders = [codec.stream_encoder() for _ in range(n)] if direction != "decode" else []
        decoders = [codec.stream_decoder() for _ in range(n)] if direction != "encode" else []
        count = [0]

        def step() -> None:
            t = count[0]
            for i, encoder in enumerate(encoders):
                encoder.push(inputs.pcm_frame(i, t))
            for i, decoder in enumerate(decoders):
                decoder.push(inputs.codes_frame(i, t))
            count[0] += 1

        return step

    return make


def moshi_stepper(model: Any, inputs: Inputs, direction: str) -> Stepper:
    import torch

    def make(n: int) -> Callable[[], None]:
        context = model.streaming(n)
        context.__enter__()
        count = [0]
        make.contexts.append(context)  # type: ignore[attr-defined]

        def step() -> None:
            t = count[0]
            with torch.no_grad():
                if direction != "decode":
                    pcm = torch.from_numpy(np.stack([inputs.pcm_frame(i, t) for i in range(n)])[:, None])
                    model.encode(pcm)
                if direction != "encode":
                    codes = torch.from_numpy(np.stack([inputs.codes_frame(i, t) for i in range(n)])[:, :, None])
                    model.decode(codes)
            count[0] += 1

        return step

    make.contexts = []  # type: ignore[attr-defined]
    return make


def close_moshi(stepper: Stepper) -> None:
    for context in getattr(stepper, "contexts", []):
        context.__exit__(None, None, None)
    getattr(stepper, "contexts", []).clear()


def step_times(stepper: Stepper, n: int, steps: int, warmup: int) -> np.ndarray:
    step = stepper(n)
    times = []
    for index in range(warmup + steps):
        started = time.perf_counter()
        step()
        if index >= warmup:
            times.append(time.perf_counter() - started)
    return 1e3 * np.array(times)


def capacity(
    stepper: Stepper, steps: int, warmup: int, limit: int, start: int = 1, after: Callable[[], None] | None = None
) -> tuple[int, dict[int, tuple[float, float]]]:
    """The largest n whose p99 step time is under 80 ms (a scan that doubles, then bisects), and the (p50, p99)
    step times of every n measured."""
    measured: dict[int, tuple[float, float]] = {}

    def holds(n: int) -> bool:
        if n not in measured:
            times = step_times(stepper, n, steps, warmup)
            measured[n] = (float(np.percentile(times, 50)), float(np.percentile(times, 99)))
            if after is not None:
                after()
            print(f"    n={n:3d}: p50 {measured[n][0]:6.1f} ms, p99 {measured[n][1]:6.1f} ms", flush=True)
        return measured[n][1] < FRAME_MS

    good, bad = 0, None
    n = start
    while n <= limit:
        if holds(n):
            good = n
            n = n * 2 if n < 8 else n + max(2, n // 4)
        else:
            bad = n
            break
    if bad is not None:
        while bad - good > 1:
            middle = (good + bad) // 2
            if holds(middle):
                good = middle
            else:
                bad = middle
    return good, measured


# -- through the server --------------------------------------------------------------------------------------
def server_holds(uri: str, inputs: Inputs, direction: str, n: int, seconds: float) -> tuple[bool, float, float]:
    """n real-time clients at once; whether the server's p99 step time stays under a frame (its own counters,
    GET /stats) and every frame's p99 latency at the clients under 2 frames."""
    from mimistack.serve import client

    frames = int(seconds * 12.5)

    async def one(i: int) -> list[float]:
        latencies: list[float] = []
        if direction != "decode":
            pcm = np.concatenate([inputs.pcm_frame(i, t) for t in range(frames)])
            latencies += (await client.encode(uri, pcm)).latencies
        return latencies

    async def one_decode(i: int) -> list[float]:
        codes = np.stack([inputs.codes_frame(i, t) for t in range(frames)], axis=1)
        return (await client.decode(uri, codes)).latencies

    async def everyone() -> list[list[float]]:
        tasks = []
        for i in range(n):
            if direction != "decode":
                tasks.append(one(i))
            if direction != "encode":
                tasks.append(one_decode(i))
        running = asyncio.gather(*tasks)
        # As for the pool, the first steps warm up (rows join, ONNX Runtime plans the new batch size): the
        # server's step times are counted from the 7th frame on.
        await asyncio.sleep(WARMUP_FRAMES * FRAME_MS / 1e3)
        await asyncio.to_thread(server_stats, uri, True)
        return await running

    server_stats(uri, reset=True)
    results = asyncio.run(everyone())
    steps = server_stats(uri, reset=True)
    latencies = 1e3 * np.concatenate([np.array(r[WARMUP_FRAMES:]) for r in results])
    p50, p99 = float(np.percentile(latencies, 50)), float(np.percentile(latencies, 99))
    print(f"      server steps: p50 {steps['step_ms_p50']:.1f} ms, p99 {steps['step_ms_p99']:.1f} ms", flush=True)
    return p99 < 2 * FRAME_MS and steps["step_ms_p99"] < FRAME_MS, p50, p99


def server_stats(uri: str, reset: bool = False) -> dict[str, Any]:
    import urllib.request

    url = uri.replace("ws://", "http://") + "/stats" + ("?reset=1" if reset else "")
    with urllib.request.urlopen(url, timeout=10) as response:
        stats: dict[str, Any] = json.loads(response.read())
    return stats


def server_capacity(args: argparse.Namespace, inputs: Inputs, direction: str, guess: int) -> tuple[int, dict]:
    slots = max(2, 2 * guess + 2)
    command = [
        sys.executable, "-m", "mimistack", "stream", "serve", "--listen", "127.0.0.1:0", "--weights", args.weights,
        "--engine", args.engine, "--max-streams", str(slots * (2 if direction == "duplex" else 1)),
    ]  # fmt: skip
    if args.threads:
        command += ["--threads", str(args.threads)]
    measured: dict[int, tuple[float, float]] = {}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            if " on ws://" not in line:
                raise SystemExit(f"the server did not start: {line!r}")
            uri = line.split(" on ")[1].split()[0]
            good = 0
            for n in sorted({max(1, guess - k) for k in range(0, guess)} | {guess + 1}, reverse=True):
                ok, p50, p99 = server_holds(uri, inputs, direction, n, args.server_seconds)
                measured[n] = (p50, p99)
                print(f"    server n={n:3d}: latency p50 {p50:6.1f} ms, p99 {p99:6.1f} ms {'ok' if ok else ''}")
                if ok:
                    good = max(good, n)
                    if n <= guess:
                        break
            return good, measured
        finally:
            process.terminate()
            process.wait(timeout=30)


# -- main ----------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps per count (a smoke run, minutes)")
    parser.add_argument("--weights", default="random", help="checkpoint (default: random official-size)")
    parser.add_argument("--engine", choices=("onnx", "torch"), default="onnx", help="our engine (default onnx)")
    parser.add_argument("--threads", type=int, default=None, help="engine threads (default: all cores)")
    parser.add_argument("--directions", default=",".join(DIRECTIONS), help="encode,decode,duplex")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per count (default 40, --quick 12)")
    parser.add_argument("--limit", type=int, default=64, help="largest count tried")
    parser.add_argument("--no-moshi", action="store_true", help="skip moshi")
    parser.add_argument("--no-server", action="store_true", help="skip the run through `mimistack stream serve`")
    parser.add_argument("--server-seconds", type=float, default=None, help="audio per client (default 6, quick 3)")
    parser.add_argument("--json", default=None, help="write the capacities here")
    args = parser.parse_args(argv)
    steps = args.steps or (12 if args.quick else 40)
    warmup = 3 if args.quick else WARMUP_FRAMES
    args.server_seconds = args.server_seconds or (3.0 if args.quick else 6.0)
    directions = [d for d in args.directions.split(",") if d]
    unknown = set(directions) - set(DIRECTIONS)
    if unknown:
        parser.error(f"unknown direction(s) {sorted(unknown)}; expected {', '.join(DIRECTIONS)}")
    if args.weights == "random":
        args.weights = str(random_weights_path("random"))

    import torch

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    if args.engine == "onnx":
        from mimistack.engine.ort_session import prefer_shared_thread_pool

        prefer_shared_thread_pool()
        options: Any = OnnxOptions(num_threads=threads)
    else:
        options = TorchOptions(num_threads=threads)
    codec = Codec.load(args.weights, engine=options)
    inputs = Inputs(codec)
    moshi = None
    if not args.no_moshi:
        from moshi.models.loaders import get_mimi

        moshi = get_mimi(args.weights, device="cpu", num_codebooks=codec.num_levels).eval()
    print(
        f"{platform.node()} ({os.cpu_count()} cores, {platform.processor() or platform.machine()}), {threads} "
        f"threads; ours: {codec.engine.name}; weights {Path(args.weights).name}; {steps} steps per count",
        flush=True,
    )
    results: dict[str, dict[str, Any]] = {}
    for direction in directions:
        results[direction] = {}
        contenders: list[tuple[str, Stepper]] = [("mimistack", pool_stepper(codec, inputs, direction))]
        if moshi is not None:
            contenders.append(("moshi", moshi_stepper(moshi, inputs, direction)))
        contenders.append(("independent", independent_stepper(codec, inputs, direction)))
        for name, stepper in contenders:
            print(f"  {direction} / {name}", flush=True)
            after = (lambda s=stepper: close_moshi(s)) if name == "moshi" else None  # type: ignore[misc]
            count, measured = capacity(stepper, steps, warmup, args.limit, after=after)
            p50, p99 = measured.get(count, (float("nan"), float("nan")))
            results[direction][name] = {"capacity": count, "p50_ms": p50, "p99_ms": p99, "measured": measured}
        if not args.no_server:
            print(f"  {direction} / server", flush=True)
            guess = results[direction]["mimistack"]["capacity"]
            count, measured = server_capacity(args, inputs, direction, guess)
            p50, p99 = measured.get(count, (float("nan"), float("nan")))
            results[direction]["server"] = {"capacity": count, "latency_p50_ms": p50, "latency_p99_ms": p99}
    print_table(results)
    if args.json:
        out = {d: {name: r["capacity"] for name, r in rows.items()} for d, rows in results.items()}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def print_table(results: dict[str, dict[str, Any]]) -> None:
    print("\n| direction | contender | streams in real time | p50 step ms | p99 step ms | vs moshi |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for direction, rows in results.items():
        moshi = rows.get("moshi", {}).get("capacity")
        for name, row in rows.items():
            p50 = row.get("p50_ms", row.get("latency_p50_ms"))
            p99 = row.get("p99_ms", row.get("latency_p99_ms"))
            ratio = f"{row['capacity'] / moshi:.2f}x" if moshi else "n/a"
            label = name + (" (client latency)" if name == "server" else "")
            print(f"| {direction} | {label} | {row['capacity']} | {p50:.1f} | {p99:.1f} | {ratio} |")
    for direction, rows in results.items():
        if "server" in rows and rows["mimistack"]["capacity"]:
            lost = 1 - rows["server"]["capacity"] / rows["mimistack"]["capacity"]
            print(f"{direction}: the server loses {100 * lost:.0f} % of the pool's capacity")


if __name__ == "__main__":
    raise SystemExit(main())
