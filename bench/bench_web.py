"""The browser page at full size: bundle sizes, cold and warm loads, in-browser speed and live duplex.

Writes a static site with both bundles (`mimistack export-web`, from the engine's export cache: minutes for the
official size on first use), serves it with `python -m http.server` on 127.0.0.1 (the page isolates itself with its
service worker, so onnxruntime-web may use threads), and drives Debian's headless Chromium through
tests/e2e/site.mjs --bench, in one browser profile:

* cold load (empty Cache Storage: download, sha256 check, sessions) and warm load (every model file from the cache)
  of each bundle, navigation to engine ready;
* the page's own benchmark (`window.mimistack.bench`): encode and decode of S seconds of speech through the file
  path (4 s chunks of the streaming graphs), then frame by frame through the streaming decoder, per bundle and
  thread count;
* live duplex: a fake microphone (Chromium's file capture, the speech file) through encode → decode → speaker,
  frame by frame, for --live-seconds.

The old page's download (the export's encoder_stream, decoder_stream and embed graphs) is listed beside the bundles.

    python bench/bench_web.py                          # official-size random weights, 1 and 2 threads
    python bench/bench_web.py --weights random-tiny --seconds 4 --repeats 1 --live-seconds 3   # a smoke run

Loads are on loopback: they time hashing, caching and session creation, not a network (the table adds the download
time at 50 Mbit/s). Real-time factors are audio seconds per wall-clock second (> 1 is faster than real time).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "e2e" / "site.mjs"
sys.path.insert(0, str(REPO / "tests"))  # the one speech helper: tests/speech_data.py
from speech_data import speech_file  # noqa: E402

OLD_PAGE_FILES = ("encoder_stream.onnx", "decoder_stream.onnx", "embed.onnx")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def make_site(weights: str, target: Path) -> tuple[Path, dict[str, Any], int]:
    """The site of `weights` in `target`; returns the export folder, the models index and the old page's bytes."""
    from mimistack.codec import random_weights_path
    from mimistack.engine.export.site import write_site
    from mimistack.engine.onnx_cache import load_onnx_engine

    path = random_weights_path(weights) if weights in ("random", "random-tiny") else Path(weights)
    started = time.perf_counter()
    onnx_dir = load_onnx_engine(weights=path).onnx_dir
    print(f"ONNX export: {onnx_dir} ({time.perf_counter() - started:.0f} s to find or make)", file=sys.stderr)
    result = write_site(onnx_dir, target)
    old = sum((onnx_dir / name).stat().st_size for name in OLD_PAGE_FILES)
    return onnx_dir, result.index, old


def run_driver(url: str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [
        "node", str(DRIVER), "--bench", "--url", url, "--out", str(out), "--file", args.file,
        "--threads", args.threads, "--seconds", str(args.seconds), "--repeats", str(args.repeats),
        "--live-seconds", str(args.live_seconds), "--live-threads", str(args.live_threads),
        "--timeout", str(args.timeout),
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout * 20)
    result: dict[str, Any] = json.loads((out / "result.json").read_text())
    if completed.returncode != 0 or result.get("failure"):
        raise RuntimeError(f"the page benchmark failed: {result.get('failure')}\n{completed.stderr[-3000:]}")
    return result


def tables(index: dict[str, Any], old_bytes: int, phases: dict[str, Any], args: argparse.Namespace) -> str:
    mb = 1e6
    lines = [
        f"Browser page, weights {args.weights}, Chromium headless, onnxruntime-web WebAssembly, site served by "
        "python -m http.server on loopback",
        "",
        "| download | MB | vs the old page | cold load s | warm load s | at 50 Mbit/s s |",
        "|---|---|---|---|---|---|",
        f"| old page (encoder_stream + decoder_stream + embed) | {old_bytes / mb:.1f} | 1.00 | | | "
        f"{old_bytes * 8 / 50e6:.0f} |",
    ]
    for name, entry in index["bundles"].items():
        cold, warm = phases.get(f"cold_{name}", {}), phases.get(f"warm_{name}", {})
        lines.append(
            f"| {name} bundle ({entry['storage']} storage) | {entry['bytes'] / mb:.1f} | "
            f"{entry['bytes'] / old_bytes:.2f} | {cold.get('seconds', float('nan')):.1f} | "
            f"{warm.get('seconds', float('nan')):.1f} | {entry['bytes'] * 8 / 50e6:.0f} |"
        )
    lines += [
        "",
        f"Speed, {args.seconds:g} s of speech (x RT = audio seconds per second; > 1 is faster than real time)",
        "",
        "| bundle | threads | isolated | encode x RT | decode x RT | stream decode, 1 frame/call: ms median | x RT |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, row in phases.items():
        if not key.startswith("speed_"):
            continue
        bundle = key.split("_")[1]
        stream_ms, stream_rt = (
            row.get("streamFrameMsMedian", float("nan")),
            row.get("streamDecodeRealtime", float("nan")),
        )
        lines.append(
            f"| {bundle} | {row['numThreads']} | {'yes' if row['crossOriginIsolated'] else 'no'} | "
            f"{row['encodeRealtime']:.2f} | {row['decodeRealtime']:.2f} | {stream_ms:.1f} | {stream_rt:.2f} |"
        )
    lines += [
        "",
        f"Live duplex (fake microphone → encode → decode → speaker), {args.live_threads} threads, "
        f"{args.live_seconds:g} s",
        "",
        "| bundle | frames | x RT (80 ms / step) | mean step ms | mean backlog frames | max backlog | latency ms "
        "(frame + backlog + step) | notice shown |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, row in phases.items():
        if not key.startswith("live_"):
            continue
        live = row["live"]
        frames = max(1, int(live["frames"]))
        step = live["busyMilliseconds"] / frames
        backlog = live["backlogSum"] / frames
        latency = 80.0 + backlog * 80.0 + step
        lines.append(
            f"| {key.removeprefix('live_')} | {frames} | {80.0 / step:.2f} | {step:.1f} | {backlog:.2f} | "
            f"{live['maxBacklog']} | {latency:.0f} | {'yes' if row['notice'] else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default="random", help="'random' (official size), 'random-tiny' or a file")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", default="1,2", help="comma-separated WebAssembly thread counts (default 1,2)")
    parser.add_argument("--live-seconds", type=float, default=10.0)
    parser.add_argument("--live-threads", type=int, default=2)
    parser.add_argument(
        "--file",
        default=str(speech_file("real_sense_and_sensibility_01_austen_64kb-0890")),
        help="speech for the speed runs (tiled to --seconds) and the fake microphone (a 24 kHz WAV)",
    )
    parser.add_argument("--timeout", type=int, default=900, help="seconds per wait in the page")
    parser.add_argument("--json", default=None, help="also write the phases as JSON here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="mimistack-bench-web-") as folder:
        root = Path(folder)
        _, index, old_bytes = make_site(args.weights, root / "site")
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port), "--directory", str(root / "site")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(1.0)
            (root / "out").mkdir()
            result = run_driver(f"http://127.0.0.1:{port}/", root / "out", args)
        finally:
            server.terminate()
            server.wait(timeout=30)
    phases = result["phases"]
    print(tables(index, old_bytes, phases, args))
    if args.json:
        Path(args.json).write_text(json.dumps({"weights": args.weights, "index": index, "phases": phases}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
