"""A one-minute check of the torch engine's CUDA paths on a lent GPU (not a benchmark): strict fp32 equals the CPU,
the fast path in fp32 and bf16 runs through `Codec`, and the process-wide precision flags are left as they were.

    PYTHONPATH=src python3 bench/gpu_check.py            # prints one line per check, exits 1 on a failure

Uses a random official-size checkpoint and 8 x 4 s of synthetic speech-like audio (needs no speech files).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def main() -> int:
    from mimistack.codec import Codec
    from mimistack.engine.options import TorchOptions
    from mimistack.testing import synthetic_signal, write_random_checkpoint

    failures = 0

    def check(name: str, ok: bool, detail: str) -> None:
        nonlocal failures
        failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)

    checkpoint = write_random_checkpoint(Path(tempfile.mkdtemp()) / "official.safetensors", "official", seed=0)
    signals = [synthetic_signal(4.0, seed=seed) for seed in range(8)]
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    cpu = Codec.load(checkpoint, engine=TorchOptions(device="cpu"))
    want = cpu.encode_batch(signals[:2])
    gpu = Codec.load(checkpoint, engine=TorchOptions(device="cuda"))
    got = gpu.encode_batch(signals[:2])
    equal = float(np.mean([(a.codes == b.codes).mean() for a, b in zip(want, got)]))
    check(
        "strict fp32 on CUDA vs CPU codes",
        equal >= 0.98,
        f"{100 * equal:.3f} % equal (other kernels sum in other orders: near-ties flip on random weights)",
    )
    pcm_cpu, pcm_gpu = cpu.decode(want[0]), gpu.decode(want[0])
    error = float(np.linalg.norm(pcm_cpu - pcm_gpu) / np.linalg.norm(pcm_cpu))
    check("strict fp32 on CUDA vs CPU audio", error < 1e-4, f"relative L2 {error:.2e}")
    reference = gpu.encode_batch(signals)
    for dtype, floor in (("float32", 0.99), ("bfloat16", 0.0)):
        fast = Codec.load(checkpoint, engine=TorchOptions(device="cuda", dtype=dtype, fast=True))
        started = time.perf_counter()
        grids = fast.encode_batch(signals)
        pcms = fast.decode_batch(reference)
        seconds = time.perf_counter() - started
        agree = float(np.mean([(a.codes == b.codes).mean() for a, b in zip(grids, reference)]))
        finite = all(np.isfinite(p).all() for p in pcms)
        check(
            f"Codec(fast=True, dtype={dtype})",
            agree >= floor and finite,
            f"{100 * agree:.2f} % of codes equal to strict fp32, finite audio, {seconds:.1f} s (incl. warm-up)",
        )
    now = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    check("precision flags untouched", now == flags, f"before {flags}, after {now}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
