"""Smoke test of the ONNX engine without torch: CI runs it in a virtual environment where torch is not installed.

    python tests/no_torch_smoke.py ONNX_DIR [AUDIO] [--block-torch]

Given a folder written by `mimistack export-onnx`, it encodes a speech file (default: 4 s of synthetic audio),
decodes it at several level subsets, streams it through the stream encoder and decoder, checks streaming == batch,
and asserts that torch was never importable.
`--block-torch` makes torch unimportable in this process first (for machines that have torch, e.g. the test
suite's subprocess check). Exit status 0 and a last line starting with "ok" on success.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("onnx_dir")
    parser.add_argument("audio", nargs="?", default=None)
    parser.add_argument("--block-torch", action="store_true", help="make torch unimportable before starting")
    args = parser.parse_args(argv)
    if args.block_torch:
        sys.modules["torch"] = None  # type: ignore[assignment] - the documented way to make an import fail
    try:
        import torch  # noqa: F401
    except ImportError:
        pass
    else:
        print(
            "FAIL: torch is importable here; run in an environment without torch or pass --block-torch", file=sys.stderr
        )
        return 1

    import numpy as np

    from mimistack import Codec, OnnxOptions, load_audio
    from mimistack.testing import synthetic_signal

    started = time.perf_counter()
    from mimistack.engine.options import resolve_options

    assert isinstance(resolve_options("auto"), OnnxOptions), "engine='auto' must pick ONNX Runtime without torch"
    codec = Codec.load(engine=OnnxOptions(onnx_dir=args.onnx_dir))
    loaded = time.perf_counter() - started
    if args.audio:
        audio = Path(args.audio)
        pcm, source = load_audio(audio)[: 6 * codec.sample_rate], audio.name
    else:
        pcm, source = synthetic_signal(4.0, seed=5), "synthetic signal"

    started = time.perf_counter()
    grid = codec.encode(pcm)
    encoded = time.perf_counter() - started
    assert grid.codes.shape == (codec.num_levels, -(-len(pcm) // codec.frame_size)), grid.codes.shape
    assert grid.weights_sha256 == codec.weights_sha256
    for levels in ("0", "0-7", "all", "0,3,9"):
        out = codec.decode(grid, levels)
        assert out.shape == pcm.shape and out.dtype == np.float32 and np.isfinite(out).all(), (levels, out.shape)

    encoder = codec.stream_encoder()
    step = 1234
    pieces = [encoder.push(pcm[start : start + step]) for start in range(0, len(pcm), step)]
    pieces.append(encoder.flush())
    streamed = np.concatenate(pieces, axis=1)
    agreement = float((streamed == grid.codes).mean())
    # Not 100 %: near-ties between two centroids may resolve differently when float rounding differs between a
    # one-frame and a whole-file call (tests/test_onnx.py proves such differences to be near-ties); a broken state
    # would agree on a few percent.
    assert agreement >= 0.99, f"streamed codes agree with batch on only {agreement:.4%}"

    decoder = codec.stream_decoder("0-7")
    streamed_pcm = np.concatenate([decoder.push(grid.codes[:, t : t + 1]) for t in range(grid.num_frames)])
    batch_pcm = codec.decode(grid, "0-7")
    error = float(np.linalg.norm(streamed_pcm[: len(pcm)] - batch_pcm) / max(np.linalg.norm(batch_pcm), 1e-12))
    assert error <= 1e-5, f"streamed decode differs from batch: relative L2 {error:.2e}"

    assert sys.modules.get("torch") is None, "torch was imported"
    print(
        f"ok: {source}, {len(pcm) / codec.sample_rate:.2f} s, {grid.num_frames} frames x {grid.num_levels} levels; "
        f"load {loaded:.2f} s, encode {encoded:.2f} s; stream==batch codes {agreement:.2%}, decode rel L2 "
        f"{error:.1e}; torch not importable"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
