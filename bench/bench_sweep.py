"""The level sweep's decoding, before and after batching: 94 distinct level sets of one clip.

"before" is what `sweep` did until now, one `Codec.decode(grid, levels)` call per set; "after" is
`analysis.level_sweep.decode_level_sets` (one encoder pass, the decoder on stacked latents, `--batch` sets per
call). Both run on the same random checkpoint in the official layout and the same speech, tiled to `--seconds`.
The script checks that the outputs agree (identical at batch 1; within float rounding above) and prints the wall
time of each, best of `--repeats`. Scoring (metrics, wav files, plots) is not timed: it is the same in both.

    python bench/bench_sweep.py                       # 10 s, batch 1 and 8, best of 1
    python bench/bench_sweep.py --quick               # 2 s, 12 sets: a smoke run for correctness
    python bench/bench_sweep.py --device cuda --batch 1 16 32 --json out.json

Only time on a quiet machine: other processes on the cores change the numbers more than the change measured.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the one speech helper: tests/speech_data.py
from speech_data import speech_files

RATE = 24_000


def speech(seconds: float) -> np.ndarray:
    import soundfile

    pcm = np.concatenate([soundfile.read(str(f), dtype="float32")[0] for f in speech_files()])
    return np.resize(pcm, int(seconds * RATE)).astype(np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sets", type=int, default=None, help="decode only the first N distinct level sets")
    parser.add_argument("--quick", action="store_true", help="2 s and 12 sets: checks outputs, times nothing useful")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.sets, args.batch = 2.0, 12, [1, 4]

    from mimistack.analysis.level_sweep import decode_level_sets, sweep_settings
    from mimistack.codec import Codec, random_weights_path
    from mimistack.engine.options import TorchOptions

    codec = Codec.load(random_weights_path("random"), engine=TorchOptions(device=args.device))
    pcm = speech(args.seconds)
    grid = codec.encode(pcm)
    sets = list(dict.fromkeys(setting.levels for setting in sweep_settings(codec.num_levels)))[: args.sets]

    def best(run: object) -> tuple[float, dict]:  # type: ignore[type-arg]
        times, out = [], {}
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = run()  # type: ignore[operator]
            times.append(time.perf_counter() - start)
        return min(times), out

    before_s, before = best(lambda: {levels: codec.decode(grid, levels) for levels in sets})
    results = {
        "clip_seconds": args.seconds,
        "level_sets": len(sets),
        "device": args.device,
        "machine": platform.machine(),
        "before_seconds": round(before_s, 3),
        "after": [],
    }
    print(
        f"{len(sets)} level sets of {args.seconds:g} s on {args.device}: before (one decode per set) {before_s:.2f} s"
    )
    for batch in args.batch:
        after_s, after = best(lambda b=batch: decode_level_sets(codec, grid, sets, batch_size=b))
        worst = max(
            float(np.linalg.norm(after[levels] - before[levels]) / max(np.linalg.norm(before[levels]), 1e-30))
            for levels in sets
        )
        identical = all(np.array_equal(after[levels], before[levels]) for levels in sets)
        print(
            f"  after, batch {batch:>3}: {after_s:.2f} s ({before_s / after_s:.2f}x); "
            f"{'identical' if identical else f'worst relative L2 {worst:.1e}'}"
        )
        results["after"].append(  # type: ignore[attr-defined]
            {
                "batch": batch,
                "seconds": round(after_s, 3),
                "speedup": round(before_s / after_s, 3),
                "identical": identical,
                "worst_rel_l2": worst,
            }
        )
        if batch == 1 and not identical:
            print("ERROR: batch 1 must give exactly Codec.decode's samples", file=sys.stderr)
            return 1
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
