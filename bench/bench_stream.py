"""Benchmark the progressive stream on loopback: latency and level-count tracking under a bandwidth schedule.

Runs a receiver (`mimistack.stream.StreamReceiver`), the lossy, bandwidth-scheduled relay (`LossyRelay`) and a
sender (`send_stream`) in one process on 127.0.0.1, streams audio in real time, and prints per-frame latency
(capture of a frame's last sample -> its decoded audio) and how the level count the receiver gets follows the
budget of each schedule phase. The default model is the official-size architecture with RANDOM weights
(`Codec.load("random")`, a cached random checkpoint): the compute is real, the audio is noise.

    python bench/bench_stream.py --quick                       # 4.8 s: 200 -> 4400 -> 500 bit/s, 10 % loss
    python bench/bench_stream.py --seconds 12 --schedule "0:200,4:4400,8:500" --rate-control feedback
    python bench/bench_stream.py --quick --device cuda --json out/stream.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from mimistack import stream
from mimistack.codec import Codec
from mimistack.engine.options import OnnxOptions, TorchOptions
from mimistack.testing import synthetic_signal


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="4.8 s of audio, schedule 0:200,1.6:4400,3.2:500")
    parser.add_argument("--seconds", type=float, default=None, help="audio length (default 12, --quick 4.8)")
    parser.add_argument("--schedule", default=None, help='"SECONDS:BITRATE,..." (default scaled to the length)')
    parser.add_argument(
        "--rate-control",
        choices=("schedule", "feedback"),
        default="schedule",
        help="the sender knows the schedule, or estimates from FEEDBACK",
    )
    parser.add_argument("--loss", type=float, default=0.1, help="FRAME messages dropped by the relay (0.1)")
    parser.add_argument("--seed", type=int, default=1, help="relay loss seed (1: drops within the quick run)")
    parser.add_argument("--max-delay", type=float, default=3.0, help="receiver's concealment deadline (s)")
    parser.add_argument("--weights", default="random", help="'random' (official size), 'random-tiny', or a file")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--engine",
        choices=("auto", "torch", "onnx"),
        default="auto",
        help="auto (default): what `mimistack stream` picks, ONNX Runtime on a CPU and torch on CUDA",
    )
    parser.add_argument("--input", default=None, help="an audio file (default: synthetic speech-like signal)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    seconds = args.seconds or (4.8 if args.quick else 12.0)
    schedule = stream.BandwidthSchedule.parse(args.schedule or f"0:200,{seconds / 3:g}:4400,{2 * seconds / 3:g}:500")
    if args.input:
        from mimistack.audio import load_audio

        pcm = load_audio(args.input)[: round(seconds * 24_000)]
    else:
        pcm = synthetic_signal(seconds, seed=args.seed)
    started = time.perf_counter()
    engine = args.engine if args.engine != "auto" else ("onnx" if args.device == "cpu" else "torch")
    if engine == "onnx":
        from mimistack.engine.ort_session import prefer_shared_thread_pool

        prefer_shared_thread_pool()  # what the CLI does for streaming commands
        options: TorchOptions | OnnxOptions = OnnxOptions(device=args.device)
    else:
        options = TorchOptions(device=args.device)
    codec = Codec.load(args.weights, engine=options)
    load_seconds = time.perf_counter() - started
    speed = _compute_speed(codec)
    print(
        f"model {args.weights} ({codec.config.dimension}-d latent, {codec.num_levels} levels, "
        f"{codec.codebook_size}-entry codebooks) on {args.device}, loaded in {load_seconds:.1f} s; "
        f"one streamed frame: encode {speed['encode_ms']:.1f} ms, decode {speed['decode_ms']:.1f} ms "
        f"(a frame lasts 80 ms)"
    )
    if args.weights.startswith("random"):
        print("RANDOM weights: real compute, meaningless audio")
    rate: Any = stream.ScheduledRate(schedule) if args.rate_control == "schedule" else stream.FeedbackRate(1000)
    result = asyncio.run(_session(codec, pcm, schedule, rate, args))
    result.update(
        model=args.weights,
        device=args.device,
        seconds=len(pcm) / codec.sample_rate,
        schedule=str(schedule),
        rate_control=args.rate_control,
        loss=args.loss,
        seed=args.seed,
        frame_compute=speed,
        host=platform.node(),
        python=sys.version.split()[0],
    )
    _print(result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _compute_speed(codec: Codec, frames: int = 6) -> dict[str, float]:
    """Median milliseconds to encode and to decode one frame with the streaming API (after one warm-up)."""
    pcm = synthetic_signal(frames * codec.frame_size / codec.sample_rate + 0.5, seed=1)
    encoder, decoder = codec.stream_encoder(), codec.stream_decoder()
    encode, decode = [], []
    for index in range(frames):
        chunk = pcm[index * codec.frame_size : (index + 1) * codec.frame_size]
        begin = time.perf_counter()
        codes = encoder.push(chunk)
        middle = time.perf_counter()
        decoder.push(codes)
        end = time.perf_counter()
        encode.append(middle - begin)
        decode.append(end - middle)
    return {"encode_ms": 1000 * float(np.median(encode[1:])), "decode_ms": 1000 * float(np.median(decode[1:]))}


async def _session(
    codec: Codec, pcm: np.ndarray, schedule: stream.BandwidthSchedule, rate: Any, args: argparse.Namespace
) -> dict[str, Any]:
    samples = 0

    def count(block: np.ndarray) -> None:
        nonlocal samples
        samples += block.size

    async with stream.StreamReceiver(codec, on_audio=count, max_delay=args.max_delay) as receiver:
        async with stream.LossyRelay(receiver.uri, schedule, loss=args.loss, seed=args.seed) as relay:
            sent = await stream.send_stream(relay.uri, codec, stream.ArraySource(pcm), rate)
        report = await receiver.wait(60)
    if samples != len(pcm) or report.num_samples != len(pcm):
        raise SystemExit(f"output has {samples} samples, the input {len(pcm)}")
    return _analyse(report, sent, relay.stats, schedule, codec)


def _analyse(
    report: stream.ReceiverReport,
    sent: stream.SenderReport,
    relay: stream.RelayStats,
    schedule: stream.BandwidthSchedule,
    codec: Codec,
) -> dict[str, Any]:
    hello = report.hello
    start = hello.stream_start_us / 1e6
    received = [r for r in report.frames if not r.concealed]
    latencies = np.array([r.latency for r in received])
    phases = []
    changes = [t for t, _ in schedule.steps]
    for begin, end in zip(changes, [*changes[1:], math.inf]):
        plan = stream.plan_frames(
            schedule.at(begin),
            frame_duration=hello.frame_duration,
            bits_per_token=hello.bits_per_token,
            max_levels=hello.max_levels,
        )
        frames = [r for r in report.frames if begin <= r.capture_time - start < end]
        got = [r for r in frames if not r.concealed]
        matching = [r for r in got if r.levels_received == plan.level_count]
        first_match = next((r.index for r in matching), None)
        first_frame = frames[0].index if frames else None
        phases.append(
            {
                "from_s": begin,
                "bandwidth_bps": schedule.at(begin),
                "expected_levels": plan.level_count,
                "frames_per_message": plan.frames_per_message,
                "frames": len(frames),
                "received": len(got),
                "mean_levels": float(np.mean([r.levels_received for r in got])) if got else None,
                "matching_fraction": len(matching) / len(got) if got else None,
                "frames_to_first_match": None
                if first_match is None or first_frame is None
                else first_match - first_frame,
                "latency_p50_ms": _percentile([r.latency for r in got], 50),
                "latency_p99_ms": _percentile([r.latency for r in got], 99),
            }
        )
    return {
        "frames": len(report.frames),
        "received": len(received),
        "concealed_lost": sum(r.concealed == "lost" for r in report.frames),
        "concealed_late": sum(r.concealed == "deadline" for r in report.frames),
        "relay_dropped_frames": len(relay.dropped_frames),
        "relay_queue_dropped_frames": len(relay.queue_dropped_frames),
        "latency_p50_ms": _percentile(latencies, 50),
        "latency_p99_ms": _percentile(latencies, 99),
        "latency_max_ms": float(latencies.max() * 1000) if latencies.size else None,
        "bytes_sent": sent.bytes_sent,
        "messages_sent": sent.messages,
        "wire_bitrate_bps": sent.bytes_sent * 8 / (report.num_samples / codec.sample_rate),
        "phases": phases,
    }


def _percentile(values: Any, percentile: float) -> float | None:
    array = np.asarray(values, dtype=np.float64)
    return float(np.percentile(array, percentile) * 1000) if array.size else None


def _print(result: dict[str, Any]) -> None:
    def ms(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.0f} ms"

    print(
        f"\n{result['seconds']:.2f} s streamed, schedule {result['schedule']} ({result['rate_control']}), "
        f"{result['loss']:.0%} FRAME loss (seed {result['seed']})"
    )
    print(
        f"frames: {result['frames']} output, {result['received']} received, {result['concealed_lost']} concealed "
        f"as lost ({result['relay_dropped_frames']} dropped by the relay, {result['relay_queue_dropped_frames']} "
        f"by its full queue), {result['concealed_late']} concealed as late"
    )
    print(
        f"latency (capture -> decoded), received frames: p50 {ms(result['latency_p50_ms'])}, "
        f"p99 {ms(result['latency_p99_ms'])}, max {ms(result['latency_max_ms'])}"
    )
    print(
        f"wire: {result['messages_sent']} messages, {result['bytes_sent']} bytes, "
        f"{result['wire_bitrate_bps']:.0f} bit/s on average"
    )
    print("\nphase   bandwidth  expected levels  mean received  matching  frames to match  latency p50 / p99")
    for phase in result["phases"]:
        mean = "n/a" if phase["mean_levels"] is None else f"{phase['mean_levels']:.1f}"
        match = "n/a" if phase["matching_fraction"] is None else f"{phase['matching_fraction']:.0%}"
        lag = "n/a" if phase["frames_to_first_match"] is None else str(phase["frames_to_first_match"])
        print(
            f"{phase['from_s']:>4.1f} s  {phase['bandwidth_bps']:>7.0f}  {phase['expected_levels']:>8} "
            f"(x{phase['frames_per_message']:<2})  {mean:>13}  {match:>8}  {lag:>15}  "
            f"{ms(phase['latency_p50_ms'])} / {ms(phase['latency_p99_ms'])}"
        )


if __name__ == "__main__":
    sys.exit(main())
