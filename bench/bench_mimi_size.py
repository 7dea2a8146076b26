"""`.mimi` file sizes, format v1 (JSON header) vs v2 (compact binary header), for random-token clips at 32 levels.

    python bench/bench_mimi_size.py              # Markdown table: 1 s, 5 s, 60 s; packed and range coded
    python bench/bench_mimi_size.py --json out.json

Random tokens are incompressible, so range coding falls back to packing in every section: the table shows what
the header, section table and checksums cost on top of the 11-bit tokens. Clips carry a weights SHA-256 and no
metadata, as `mimistack encode` writes them. Deterministic (numpy seed 0); runs in a few seconds on one core.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np

from mimistack.mimifile import MimiRecord, record_to_bytes

DURATIONS = (1, 5, 60)
CODINGS = ("packed11", "range")


def measure() -> list[dict[str, object]]:
    rng = np.random.default_rng(0)
    rows: list[dict[str, object]] = []
    for seconds in DURATIONS:
        samples = seconds * 24_000
        frames = math.ceil(samples / 1920)
        record = MimiRecord(
            codes=rng.integers(0, 2048, size=(32, frames)),
            num_samples=samples,
            levels_present=tuple(range(32)),
            weights_sha256=rng.bytes(32).hex(),
        )
        tokens = math.ceil(32 * frames * 11 / 8)
        for coding in CODINGS:
            v1 = len(record_to_bytes(record, coding=coding, version=1))  # type: ignore[arg-type]
            v2 = len(record_to_bytes(record, coding=coding, version=2))  # type: ignore[arg-type]
            rows.append(
                {
                    "seconds": seconds,
                    "frames": frames,
                    "coding": coding,
                    "token_bytes": tokens,
                    "v1_bytes": v1,
                    "v2_bytes": v2,
                    "v1_overhead": v1 - tokens,
                    "v2_overhead": v2 - tokens,
                }
            )
    return rows


def markdown(rows: list[dict[str, object]]) -> str:
    lines = [
        "| clip | coding | 11-bit tokens (bytes) | v1 file (bytes) | v2 file (bytes) | v1 overhead | v2 overhead "
        "| v2 / v1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        v1, v2 = int(row["v1_bytes"]), int(row["v2_bytes"])  # type: ignore[call-overload]
        lines.append(
            f"| {row['seconds']} s ({row['frames']} frames) | {row['coding']} | {row['token_bytes']} | {v1} "
            f"| {v2} | {row['v1_overhead']} | {row['v2_overhead']} | {v2 / v1:.3f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows as JSON to this path")
    args = parser.parse_args()
    rows = measure()
    print(markdown(rows))
    if args.json:
        from mimistack._files import write_text

        write_text(args.json, json.dumps(rows, indent=1) + "\n", force=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
