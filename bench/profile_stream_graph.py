"""Where a batched stream step's time goes: ONNX Runtime's own profile of one stream graph at batch B, summed by
operator type (the KV caches' copies show as Slice, Concat and Transpose; the arithmetic as Conv and MatMul).

    python bench/profile_stream_graph.py --onnx DIR --graph encoder_stream --batch 8

`DIR`: an export folder (`mimistack export-onnx`, or the cache folder `Codec.load(w, engine="onnx")` made). Profiling
adds overhead: compare shares, not absolute times, with `bench/bench_streams.py`.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", required=True, help="export folder")
    parser.add_argument("--graph", default="encoder_stream", help="encoder_stream or decoder_stream")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import onnxruntime as ort

    from mimistack.engine.onnx import _bind  # the engine's own binding of a numpy buffer
    from mimistack.engine.onnx_format import ring_slots

    folder = Path(args.onnx)
    manifest = json.loads((folder / "manifest.json").read_text())
    spec = manifest["streams"][args.graph]
    # As a stream pool runs it: rings sized for one frame a call, the KV caches updated in place.
    ring = spec.get("ring")
    slots = ring_slots(ring, 1) if ring else None
    in_place = set(manifest.get("variants", {}).get("fp32", {}).get("in_place", {}).get(args.graph, []))
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "profile")
    session = ort.InferenceSession(str(folder / f"{args.graph}.onnx"), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    batch = args.batch
    shape = (batch, 1, 1920) if args.graph.startswith("encoder") else (batch, 512, 1)
    value = (0.1 * rng.standard_normal(shape)).astype(np.float32)
    sizes = {"batch": batch, "ring": slots}
    state = {s["name"]: np.zeros([sizes.get(d, d) for d in s["shape"]], s["dtype"]) for s in spec["states"]}
    out_shape = (batch, manifest["num_levels"], 1) if args.graph.startswith("encoder") else (batch, 1, 1920)
    result = np.empty(out_shape, np.int64 if args.graph.startswith("encoder") else np.float32)

    times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        binding = session.io_binding()
        _bind(binding, "input", spec["input"], value)
        _bind(binding, "output", spec["output"], result)
        following = {}
        for s in spec["states"]:
            array = state[s["name"]]
            _bind(binding, "input", s["name"], array)
            following[s["name"]] = array if s["name"] in in_place else np.empty_like(array)
            _bind(binding, "output", s["output"], following[s["name"]])
        session.run_with_iobinding(binding)
        times.append(time.perf_counter() - started)
        state = following
    profile = session.end_profiling()
    events = json.loads(Path(profile).read_text())
    os.remove(profile)
    by_op: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"]
    total = sum(by_op.values())
    print(f"{args.graph} at batch {batch}: median step {1e3 * np.median(times[2:]):.1f} ms (profiled)")
    for op, micros in by_op.most_common(12):
        print(f"  {op:24s} {100 * micros / total:5.1f} %  {micros / args.steps / 1e3:6.2f} ms a step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
