"""Native ONNX Runtime cost of the streaming graphs per call and per frame, for 1..K frames per call and each
exported variant: how much of a stream step is fixed cost (weights and KV caches read once per call).

    python bench/bench_stream_steps.py --onnx DIR                    # fp32 + every variant DIR has, 1 thread
    python bench/bench_stream_steps.py --onnx DIR --threads 2 --frames 1,2,4 --steps 24

Each graph starts from its zero state and is stepped `--steps` times (the first quarter is warm-up); the median
call time is reported. Sits on onnxruntime and the export's manifest.json only (no torch).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np


def session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def step_times(
    folder: Path, manifest: dict[str, Any], graph: str, file: str, frames: int, steps: int, threads: int
) -> float:
    """Median milliseconds per call of `file` (stream graph `graph`) fed `frames` frames per call."""
    spec = manifest["streams"][graph]
    runner = session(folder / file, threads)
    frame_size, dimension = int(manifest["frame_size"]), int(manifest["dimension"])
    rng = np.random.default_rng(0)
    value = (
        0.1 * rng.standard_normal((1, 1, frames * frame_size))
        if graph.startswith("encoder")
        else rng.standard_normal((1, dimension, frames))
    ).astype(np.float32)
    state = {
        s["name"]: np.zeros([d if isinstance(d, int) else 1 for d in s["shape"]], dtype=s["dtype"])
        for s in spec["states"]
    }
    outputs = [spec["output"], *(s["output"] for s in spec["states"])]
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        result = runner.run(outputs, {spec["input"]: value, **state})
        times.append(time.perf_counter() - started)
        state = {s["name"]: array for s, array in zip(spec["states"], result[1:])}
    return 1e3 * float(np.median(times[max(1, steps // 4) :]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", required=True, help="an export folder (mimistack export-onnx)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--frames", default="1,2,3,4", help="frames per call to time")
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    folder = Path(args.onnx)
    manifest = json.loads((folder / "manifest.json").read_text())
    variants = ["fp32", *[v for v in ("fp16", "int8") if f"decoder_stream.{v}.onnx" in manifest["files"]]]
    rows = []
    for graph in ("encoder_stream", "decoder_stream"):
        for variant in variants:
            file = f"{graph}.onnx" if variant == "fp32" else f"{graph}.{variant}.onnx"
            for frames in (int(f) for f in args.frames.split(",")):
                ms = step_times(folder, manifest, graph, file, frames, args.steps, args.threads)
                rows.append(
                    {
                        "graph": graph,
                        "variant": variant,
                        "frames": frames,
                        "ms_per_call": ms,
                        "ms_per_frame": ms / frames,
                        "x_real_time": 80.0 * frames / ms,
                    }
                )
                print(
                    f"{graph:<15} {variant:<5} {frames} frame(s)/call: {ms:7.1f} ms per call, "
                    f"{ms / frames:6.1f} ms per frame, {80.0 * frames / ms:5.2f}x real time",
                    flush=True,
                )
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
