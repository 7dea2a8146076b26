"""In-browser encode/decode speed of the web app: onnxruntime-web (WebAssembly) in Debian's headless Chromium.

Starts `mimistack serve` on 127.0.0.1 (with COOP/COEP, so the page may use threads), opens the page once per thread
count with `?threads=N&ep=wasm&test&bench` (tests/e2e/drive.mjs builds the URL), and runs the page's own benchmark
hook (`window.mimistack.bench`, `web/src/testing/bench.ts`, loaded only on `?bench` pages):
encode and decode of S seconds of speech through the same graphs the page uses for files (4 s chunks of the
streaming graphs), then a frame-by-frame decode through the streaming decoder, as live mode runs it.

    python bench/bench_web.py                             # official-size random weights, 10 s, 1 and 4 threads
    python bench/bench_web.py --weights random-tiny --seconds 4 --repeats 1 --threads 1   # a smoke run
    python bench/bench_web.py --json web.json

Needs chromium, node, `npm ci --prefix web && npm run build --prefix web`; the ONNX graphs of the weights are
exported into the engine cache on first use (minutes for the official size; needs torch) unless --onnx is given.
Real-time factors are audio seconds per wall-clock second (> 1 is faster than real time).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "e2e" / "drive.mjs"
sys.path.insert(0, str(REPO / "tests"))  # the one speech helper: tests/speech_data.py
from speech_data import speech_file  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def weights_path(weights: str) -> Path:
    from mimistack.codec import random_weights_path
    from mimistack.weights import resolve_weights

    return random_weights_path(weights) if weights in ("random", "random-tiny") else resolve_weights(weights)


def export_dir(weights: Path) -> Path:
    from mimistack.engine.onnx_cache import load_onnx_engine

    started = time.perf_counter()
    folder = load_onnx_engine(weights=weights).onnx_dir
    print(f"ONNX graphs: {folder} ({time.perf_counter() - started:.0f} s to find or export)", file=sys.stderr)
    return folder


def start_server(weights: Path, onnx_dir: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mimistack.cli",
                "serve",
                "--weights",
                str(weights),
                "--onnx",
                str(onnx_dir),
                "--port",
                str(port),
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=5):
                return process
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"mimistack serve did not start:\n{log.read_text()}") from None
            time.sleep(0.3)


def run_page(
    url: str, threads: int, seconds: float, repeats: int, audio: Path | None, timeout: int, variant: str = "fp32"
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mimistack-bench-web-") as out:
        command = [
            "node",
            str(DRIVER),
            "--url",
            url,
            "--out",
            out,
            "--scenario",
            "bench",
            "--threads",
            str(threads),
            "--seconds",
            str(seconds),
            "--repeats",
            str(repeats),
            "--timeout",
            str(timeout),
            "--variant",
            variant,
        ]
        if audio is not None:
            command += ["--file", str(audio)]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 120)
        result = json.loads((Path(out) / "result.json").read_text())
    if completed.returncode != 0 or result.get("failure"):
        raise RuntimeError(
            f"the page benchmark failed with {threads} thread(s): {result.get('failure')}\n{completed.stderr}"
        )
    return {**result["bench"], "variant": variant}


def table(rows: list[dict[str, Any]], seconds: float, weights: str) -> str:
    lines = [
        f"In-browser speed, {seconds:g} s of speech, weights {weights}, onnxruntime-web WebAssembly "
        "(Chromium headless)",
        "",
        "| graphs | threads | isolated | encode ms | encode x RT | decode ms | decode x RT "
        "| stream step ms (median) | stream decode x RT | 2 frames/step: x RT | 4 frames/step: x RT |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        stream = (
            f"{row['streamFrameMsMedian']:.1f} | {row['streamDecodeRealtime']:.2f}"
            if "streamFrameMsMedian" in row
            else "n/a | n/a"
        )
        for frames in (2, 4):
            key = f"stream{frames}DecodeRealtime"
            stream += f" | {row[key]:.2f}" if key in row else " | n/a"
        isolated = "yes" if row["crossOriginIsolated"] else "no"
        lines.append(
            f"| {row.get('variant', 'fp32')} | {row['numThreads']} | {isolated} | "
            f"{row['encodeMs']:.0f} | {row['encodeRealtime']:.2f} | {row['decodeMs']:.0f} | "
            f"{row['decodeRealtime']:.2f} | {stream} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--weights", default="random", help="'random' (official size, default), 'random-tiny' or a .safetensors file"
    )
    parser.add_argument("--onnx", default=None, help="an exported ONNX folder (default: the engine's export cache)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", default="1,4", help="comma-separated WebAssembly thread counts (default 1,4)")
    parser.add_argument(
        "--file",
        default=str(speech_file("real_sense_and_sensibility_01_austen_64kb-0890")),
        help="speech to tile to --seconds ('' for a synthetic signal)",
    )
    parser.add_argument("--timeout", type=int, default=900, help="seconds per page run")
    parser.add_argument(
        "--variants",
        default="fp32",
        help="comma-separated graph variants to run (fp32, fp16, int8; the export must have them)",
    )
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)

    weights = weights_path(args.weights)
    onnx_dir = Path(args.onnx) if args.onnx else export_dir(weights)
    audio = Path(args.file) if args.file else None
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="mimistack-bench-serve-") as folder:
        server = start_server(weights, onnx_dir, port, Path(folder) / "serve.log")
        try:
            rows = []
            runs = [(v.strip(), int(t)) for v in args.variants.split(",") for t in args.threads.split(",")]
            for variant, threads in runs:
                print(f"running the page with {variant} graphs, {threads} thread(s)…", file=sys.stderr)
                rows.append(
                    run_page(
                        f"http://127.0.0.1:{port}/", threads, args.seconds, args.repeats, audio, args.timeout, variant
                    )
                )
                print(json.dumps(rows[-1]), file=sys.stderr)  # kept even if a later run fails
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(table(rows, args.seconds, args.weights))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"weights": args.weights, "seconds": args.seconds, "rows": rows}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
