"""GPU batch throughput for corpus tokenization: the transformers reference MimiModel vs our torch engine vs a fast
path, at batch 128 x 10 s, encode and decode, with code agreement against our fp32 engine.

One self-contained script for a lent H100/H200 (needs nothing from the network; finishes inside `--budget`
seconds, 210 by default). It writes a random official-size checkpoint (`mimistack.testing`), builds batch-128 x
10 s audio (the test speech clips, tiled), then measures, each
in its own try/except (one failure never stops the rest), with warm-up iterations and `torch.cuda.synchronize`:

  hf fp32 / hf bf16      transformers.MimiModel(MimiConfig()) with our weights (`weights.to_transformers_layout`),
                         `model.encode(x, num_quantizers=32)` / `model.decode(codes)`, bf16 = autocast
  ours fp32 / ours bf16  `Codec.load(path, engine=TorchOptions(device="cuda", dtype=...))`, `encode_batch` /
                         `decode_batch` (numpy in and out: host<->device copies included, as in the corpus
                         pipeline's actors)
  fast bf16 nhwc         our model with the SEANet/transformer weights in bf16 (no autocast casts), the quantizer
                         in strict fp32 (no TF32), the SEANet stacks run as 2-D convolutions on [B, C, 1, T] in
                         channels-last memory, each stride-s transposed convolution rewritten as a kernel-2
                         convolution to s x C_out channels whose phases interleave for free in that memory
                         (cuDNN's transposed-convolution kernels are the slow part of decoding), cuDNN autotuning,
                         `torch.compile` of the stacks (fuses ELU/pad/residual/LayerScale/RoPE), pinned host
                         buffers; codes and pcm copied back to the host inside the timing
  fast bf16              the same with the plain 1-D modules (to show what channels-last + polyphase bring)
  fast tf32 nhwc         fp32 weights with TF32 tensor cores (quantizer still strict fp32): slower than bf16,
                         closer to fp32 codes
  tokenize-corpus        the real `tokenize_corpus(..., device=--device)` path (local runner) over the batch's rows
                         written as WAV files (`--corpus-copies` times), in fp32 and in bf16 --fast; prints each
                         run's manifest `precision` record (dtype, fast path, batching, exactness and, for bf16,
                         the measured agreement with strict fp32 on 8 files)

Measured on an NVIDIA H200 (torch 2.11.0+cu130, transformers 5.17.0, random official-size weights, batch 128 x
10 s of tiled speech), audio seconds per second, encode / decode:
  hf fp32 6,068 / 5,589; hf bf16 autocast 9,261 / 6,820; ours fp32 (torch defaults) 4,733 / 3,758; ours bf16
  autocast 6,894 / 5,328; fast bf16 nhwc compiled 19,585 / 27,479 (19,726 in another run); fast tf32 nhwc
  compiled 14,291 encode.
Codes agree with strict fp32 on 28.5% of tokens for bf16 (level 0: 90.5%), 83% for TF32, and 86.8% for torch's
own default fp32 (its convolutions use TF32) and for transformers fp32: random weights make the residual chain
hypersensitive (one flipped level changes every later one), so only a strict-fp32 path reproduces the fp32 codes.

Reference codes: our fp32 engine with TF32 off everywhere ("strict", as on a CPU). Agreement = % of the 32 x T
tokens equal to those; decode quality = SNR (dB) of each path's pcm against our fp32 decode of the same codes.

    PYTHONPATH=src python3 bench/gpu_corpus.py                     # on the GPU machine (see requirements-gpu.txt)
    python bench/gpu_corpus.py --device cpu --quick               # proves it runs, tiny sizes, anywhere

Uses `mimistack.testing`, `mimistack.weights`, `mimistack.codec`, `mimistack.torch.mimi`; see docs/corpus.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # runs from a plain checkout on the GPU machine (no pip install there)

import torch  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))  # the one speech helper: tests/speech_data.py
from speech_data import speech_files  # noqa: E402


class Budget:
    """Seconds left of the whole script's allowance; measurements that would not fit are skipped."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    @property
    def left(self) -> float:
        return self.deadline - time.monotonic()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def precision(matmul_tf32: bool, conv_tf32: bool, benchmark: bool) -> Iterator[None]:
    """TF32 for matmuls / convolutions on or off, cuDNN autotuning on or off; restored afterwards. PyTorch's
    defaults are (False, True, False): its "fp32" convolutions already use TF32 on GPUs."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    torch.backends.cuda.matmul.allow_tf32 = matmul_tf32
    torch.backends.cudnn.allow_tf32 = conv_tf32
    torch.backends.cudnn.benchmark = benchmark
    try:
        yield
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark) = saved


def timed(run: Callable[[], Any], device: torch.device, warmup: int, iters: int, budget: Budget) -> tuple[Any, float]:
    """Mean seconds per call after `warmup` calls (fewer iterations if the budget runs short)."""
    result = None
    for _ in range(warmup):
        result = run()
    sync(device)
    times = []
    for _ in range(iters):
        started = time.perf_counter()
        result = run()
        sync(device)
        times.append(time.perf_counter() - started)
        if budget.left < 20:
            break
    return result, float(np.mean(times))


def build_audio(batch: int, seconds: float, sample_rate: int, frame_size: int) -> np.ndarray:
    """float32 `[batch, 1, N]`, N = `seconds` rounded up to whole frames: windows of the tiled test speech."""
    length = -(-int(seconds * sample_rate) // frame_size) * frame_size
    import soundfile

    source = np.concatenate([soundfile.read(f, dtype="float32")[0] for f in speech_files()])
    tiled = np.tile(source, int(np.ceil((length + batch * 4801) / len(source))) + 1)
    return np.stack([tiled[row * 4801 : row * 4801 + length] for row in range(batch)])[:, None, :].astype(np.float32)


def snr(reference: np.ndarray, estimate: np.ndarray) -> float:
    noise = float(np.sum((reference.astype(np.float64) - estimate) ** 2))
    return 10 * np.log10(max(float(np.sum(reference.astype(np.float64) ** 2)), 1e-20) / max(noise, 1e-20))


# -- the paths ------------------------------------------------------------------------------------------------
def hf_model(tensors: dict[str, np.ndarray], config: Any, device: torch.device) -> Any:
    import transformers

    from mimistack.weights import to_transformers_layout

    model = transformers.MimiModel(transformers.MimiConfig())
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in to_transformers_layout(tensors, config).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or [m for m in missing if "embed" not in m and "initialized" not in m]:
        raise RuntimeError(f"transformers state dict mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.to(device).eval()


def stage_profile(mimi: Any, pinned: torch.Tensor, codes: np.ndarray | None, device: torch.device, label: str) -> None:
    """Milliseconds per stage of the eager bf16 path (one warm-up, one timed call each): where the time goes."""
    stages: list[tuple[str, Callable[[], Any]]] = []
    with precision(False, False, True), torch.inference_mode():
        x = pinned.to(device)
        h = x.to(mimi.dtype)
        stages.append(("h2d pcm", lambda: pinned.to(device, non_blocking=True)))
        stages.append(("encoder seanet", lambda: mimi.encoder(h)))
        e = mimi.encoder(h)
        stages.append(("encoder transformer", lambda: mimi.encoder_transformer(e, None, "window")[0]))
        t = mimi.encoder_transformer(e, None, "window")[0]
        stages.append(("downsample", lambda: mimi.downsample(t)[0]))
        latent = mimi.downsample(t)[0].float()
        stages.append(("quantizer (fp32)", lambda: mimi.quantizer.encode(latent)))
        if codes is not None:
            levels = list(range(mimi.config.num_levels))
            c = torch.from_numpy(codes.astype(np.int64)).to(device)
            stages.append(("latent sum (fp32)", lambda: mimi.quantizer.decode(c, levels)))
            z = mimi.quantizer.decode(c, levels).to(mimi.dtype)
            stages.append(("upsample", lambda: mimi.upsample(z)[0]))
            u = mimi.upsample(z)[0]
            stages.append(("decoder transformer", lambda: mimi.decoder_transformer(u, None, "window")[0]))
            d = mimi.decoder_transformer(u, None, "window")[0]
            stages.append(("decoder seanet", lambda: mimi.decoder(d)))
        parts = []
        for stage, run in stages:
            run()
            sync(device)
            started = time.perf_counter()
            run()
            sync(device)
            parts.append(f"{stage} {1000 * (time.perf_counter() - started):.1f}")
    print(f"  stage ms (eager bf16, {label} SEANet): " + ", ".join(parts), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=10.0, help="audio seconds per batch row")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--budget", type=float, default=210.0, help="seconds for the whole script")
    parser.add_argument("--quick", action="store_true", help="batch 2 x 1 s, 1 warm-up, 1 iteration (a smoke run)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile in the fast paths")
    parser.add_argument("--only", default="", help="comma-separated subset of: hf, ours, codec, fast, corpus")
    parser.add_argument(
        "--corpus-copies",
        type=int,
        default=4,
        help="corpus: the batch's rows written this many times as WAV files, then tokenized (fp32, bf16 --fast)",
    )
    parser.add_argument(
        "--fast",
        default="bf16-nhwc,fp32-nhwc,tf32-nhwc",
        help="fast variants in order: bf16-nhwc, bf16, tf32-nhwc, tf32, fp32-nhwc (TF32 off) (later "
        "ones may not fit the "
        "budget)",
    )
    parser.add_argument("--no-profile", action="store_true", help="skip the per-stage timing of the fast path")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.seconds, args.warmup, args.iters = 2, 1.0, 1, 1
    budget = Budget(args.budget)
    device = torch.device(args.device)
    wanted = {w.strip() for w in args.only.split(",") if w.strip()} or {"hf", "ours", "codec", "fast", "corpus"}

    from mimistack import __version__
    from mimistack.codec import Codec
    from mimistack.engine.options import TorchOptions
    from mimistack.testing import write_random_checkpoint
    from mimistack.torch.fast import FastMimi
    from mimistack.torch.mimi import MimiModel
    from mimistack.weights import load_weights

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"mimistack {__version__}, torch {torch.__version__}, device {name}; batch {args.batch} x "
        f"{args.seconds:g} s; budget {args.budget:.0f} s",
        flush=True,
    )
    scratch = Path(tempfile.mkdtemp(prefix="gpu-corpus-"))
    started = time.perf_counter()
    checkpoint = write_random_checkpoint(scratch / "official.safetensors", "official", seed=0)
    weights = load_weights(checkpoint)
    config = weights.config
    audio = build_audio(args.batch, args.seconds, config.sample_rate, config.frame_size)
    audio_seconds = audio.shape[0] * audio.shape[-1] / config.sample_rate
    print(f"checkpoint and {audio_seconds:g} s of audio ready in {time.perf_counter() - started:.1f} s", flush=True)
    rows: list[dict[str, Any]] = []
    reference: dict[str, Any] = {}

    def record(path: str, direction: str, seconds: float | None, quality: str, note: str = "") -> None:
        speed = audio_seconds / seconds if seconds else None
        rows.append(
            {
                "path": path,
                "direction": direction,
                "seconds_per_batch": seconds,
                "audio_seconds_per_second": speed,
                "quality": quality,
                "note": note,
            }
        )
        shown = f"{speed:,.0f}" if speed else "-"
        print(f"  {path:<22} {direction:<7} {shown:>10} audio s/s  {quality} {note}", flush=True)

    def agreement(codes: np.ndarray) -> str:
        if "codes" not in reference:
            return "(no fp32 reference)"
        ref = reference["codes"]
        if codes.shape != ref.shape:
            return f"shape {codes.shape} vs {ref.shape}"
        equal = codes == ref
        return (
            f"codes {100 * float(equal.mean()):.3f}% equal (level 0: {100 * float(equal[:, 0].mean()):.2f}%, "
            f"0-7: {100 * float(equal[:, :8].mean()):.2f}%)"
        )

    def quality(pcm: np.ndarray) -> str:
        return f"SNR {snr(reference['pcm'], pcm):.1f} dB vs fp32" if "pcm" in reference else "(no fp32 reference)"

    def attempt(path: str, direction: str, body: Callable[[], tuple[float, str]], need: float = 15.0) -> None:
        if budget.left < need:
            record(path, direction, None, "skipped", f"(budget: {budget.left:.0f} s left)")
            return
        try:
            seconds, text = body()
            record(path, direction, seconds, text)
        except Exception as error:  # each measurement stands alone
            record(path, direction, None, "failed", f"{type(error).__name__}: {str(error).splitlines()[0][:160]}")
            traceback.print_exc(limit=3, file=sys.stderr)
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()

    # -- ours fp32, strict: the reference codes and pcm ----------------------------------------------------------
    codec32 = Codec.load(checkpoint, engine=TorchOptions(device=args.device, dtype="float32"))
    signals = list(audio[:, 0])

    def ours_encode(codec: Any, strict: bool) -> tuple[float, str]:
        with precision(False, not strict, False), torch.inference_mode():
            grids, seconds = timed(lambda: codec.encode_batch(signals), device, args.warmup, args.iters, budget)
        codes = np.stack([g.codes for g in grids])
        if strict:
            reference["codes"] = codes
            reference["grids"] = grids
            return seconds, "reference codes (TF32 off)"
        return seconds, agreement(codes)

    def ours_decode(codec: Any, strict: bool) -> tuple[float, str]:
        grids = reference["grids"]
        with precision(False, not strict, False), torch.inference_mode():
            pcms, seconds = timed(lambda: codec.decode_batch(grids), device, args.warmup, args.iters, budget)
        pcm = np.stack(pcms)
        if strict:
            reference["pcm"] = pcm
            return seconds, "reference pcm (TF32 off)"
        return seconds, quality(pcm)

    attempt("ours fp32 strict", "encode", lambda: ours_encode(codec32, True), need=0)
    attempt("ours fp32 strict", "decode", lambda: ours_decode(codec32, True), need=0)
    if "ours" in wanted:
        attempt("ours fp32 (defaults)", "encode", lambda: ours_encode(codec32, False))
        attempt("ours fp32 (defaults)", "decode", lambda: ours_decode(codec32, False))
        del codec32
        codec16 = Codec.load(checkpoint, engine=TorchOptions(device=args.device, dtype="bfloat16"))
        attempt("ours bf16 autocast", "encode", lambda: ours_encode(codec16, False))
        attempt("ours bf16 autocast", "decode", lambda: ours_decode(codec16, False))
        del codec16
    if "codec" in wanted:
        # The integrated fast path, as the corpus pipeline's GPU actors run it: numpy in and out.
        codec_fast = Codec.load(
            checkpoint,
            engine=TorchOptions(device=args.device, dtype="bfloat16", fast=True, compile=not args.no_compile),
        )

        def codec_encode() -> tuple[float, str]:
            with precision(False, False, True), torch.inference_mode():  # the engine keeps its quantizer strict
                grids, seconds = timed(
                    lambda: codec_fast.encode_batch(signals), device, args.warmup, args.iters, budget
                )
            return seconds, agreement(np.stack([g.codes for g in grids]))

        def codec_decode() -> tuple[float, str]:
            with precision(False, False, True), torch.inference_mode():
                pcms, seconds = timed(
                    lambda: codec_fast.decode_batch(reference["grids"]), device, args.warmup, args.iters, budget
                )
            return seconds, quality(np.stack(pcms))

        attempt("Codec(fast=True) bf16", "encode", codec_encode, need=60)
        attempt("Codec(fast=True) bf16", "decode", codec_decode, need=60)
        del codec_fast

    # -- the whole tokenize-corpus path, files to shards --------------------------------------------------------
    if "corpus" in wanted:
        from mimistack.audio import save_audio
        from mimistack.corpus import tokenize_corpus

        folder = scratch / "corpus-audio"
        folder.mkdir()
        for index in range(args.corpus_copies):
            for row, pcm in enumerate(audio[:, 0]):
                save_audio(folder / f"f{index:03d}-{row:04d}.wav", pcm, config.sample_rate)
        corpus_seconds = audio_seconds * args.corpus_copies

        def tokenize(dtype: str, fast: bool) -> tuple[float, str]:
            out = scratch / f"tokens-{dtype}-{'fast' if fast else 'exact'}"
            result = tokenize_corpus(
                folder,
                out,
                checkpoint,
                device=args.device,
                dtype=dtype,
                fast=fast,
                agreement_files=8,  # type: ignore[arg-type]
            )
            record_precision = dict(result.manifest["precision"])
            agreement = record_precision.pop("agreement", None)
            measured = (
                f"; vs strict fp32 on {agreement['files']} files: {100 * agreement['tokens_equal']:.2f}% of tokens "
                f"(level 0: {100 * agreement['level_0_equal']:.2f}%)"
                if agreement
                else ""
            )
            corpus_precision.append({"dtype": dtype, "fast": fast, "manifest_precision": result.manifest["precision"]})
            # Scaled to one batch's audio so the column compares with the module rows above; the wall time
            # includes the model load (and torch.compile for --fast).
            return result.elapsed_seconds * audio_seconds / corpus_seconds, (
                f"{corpus_seconds:g} s of audio in {result.elapsed_seconds:.1f} s incl. load; manifest precision "
                f"{json.dumps(record_precision)}{measured}"
            )

        corpus_precision: list[dict[str, Any]] = []
        attempt("tokenize-corpus fp32", "encode", lambda: tokenize("float32", False), need=30)
        attempt("tokenize-corpus bf16 fast", "encode", lambda: tokenize("bfloat16", True), need=60)
        reference["corpus_precision"] = corpus_precision

    # -- transformers reference -------------------------------------------------------------------------------
    if "hf" in wanted:
        try:
            hf = hf_model(weights.tensors, config, device)
        except Exception as error:
            hf = None
            record("hf (transformers)", "both", None, "unavailable", f"{type(error).__name__}: {error}"[:160])
        if hf is not None:
            x = torch.from_numpy(audio).to(device)

            def hf_encode(autocast: bool) -> tuple[float, str]:
                context = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
                with torch.inference_mode(), context:
                    out, seconds = timed(
                        lambda: hf.encode(x, num_quantizers=config.num_levels).audio_codes,
                        device,
                        args.warmup,
                        args.iters,
                        budget,
                    )
                return seconds, agreement(out.cpu().numpy().astype(np.uint16))

            def hf_decode(autocast: bool) -> tuple[float, str]:
                codes = torch.from_numpy(reference["codes"].astype(np.int64)).to(device)
                context = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
                with torch.inference_mode(), context:
                    out, seconds = timed(lambda: hf.decode(codes).audio_values, device, args.warmup, args.iters, budget)
                return seconds, quality(out.float().cpu().numpy()[:, 0, : audio.shape[-1]])

            attempt("hf fp32", "encode", lambda: hf_encode(False))
            attempt("hf fp32", "decode", lambda: hf_decode(False))
            attempt("hf bf16 autocast", "encode", lambda: hf_encode(True))
            attempt("hf bf16 autocast", "decode", lambda: hf_decode(True))
            del hf, x

    # -- the fast paths --------------------------------------------------------------------------------------
    if "fast" in wanted:
        model = MimiModel(config)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.tensors.items()})
        model = model.to(device).eval()
        pinned = torch.from_numpy(audio)
        if device.type == "cuda":
            pinned = pinned.pin_memory()
        compile_ok = not args.no_compile

        all_levels = list(range(config.num_levels))

        def fast(dtype: torch.dtype, nhwc: bool, compiled: bool) -> FastMimi:
            return FastMimi(model, dtype, channels_last=nhwc, compile=compiled).eval()

        def fast_encode(mimi: FastMimi, tf32: bool) -> tuple[float, str]:
            def run() -> np.ndarray:
                return mimi.encode(pinned.to(device, non_blocking=True)).to("cpu").numpy()

            with precision(tf32, tf32, True), torch.inference_mode():
                codes, seconds = timed(run, device, args.warmup, args.iters, budget)
            return seconds, agreement(codes.astype(np.uint16))

        def fast_decode(mimi: FastMimi, tf32: bool) -> tuple[float, str]:
            codes = torch.from_numpy(reference["codes"].astype(np.int64))
            if device.type == "cuda":
                codes = codes.pin_memory()

            host: list[torch.Tensor] = []

            def run() -> np.ndarray:
                pcm = mimi.decode(codes.to(device, non_blocking=True), all_levels)
                if not host:  # page-locked destination: the 4 bytes x 24 kHz of output cross PCIe at full speed
                    host.append(torch.empty(pcm.shape, dtype=pcm.dtype, pin_memory=device.type == "cuda"))
                host[0].copy_(pcm, non_blocking=True)
                sync(device)
                return host[0].numpy()

            with precision(tf32, tf32, True), torch.inference_mode():
                pcm, seconds = timed(run, device, args.warmup, args.iters, budget)
            return seconds, quality(pcm[:, 0, : audio.shape[-1]])

        if budget.left > 30 and not args.no_profile:
            try:
                for nhwc in (False, True):
                    mimi = FastMimi(model, torch.bfloat16, channels_last=nhwc).eval()
                    stage_profile(mimi, pinned, reference.get("codes"), device, "nhwc" if nhwc else "nchw")
            except Exception as error:
                print(f"  stage profile failed: {type(error).__name__}: {error}", flush=True)
        variants = {
            "bf16-nhwc": ("fast bf16 nhwc", torch.bfloat16, False, True),
            "bf16": ("fast bf16", torch.bfloat16, False, False),
            "tf32-nhwc": ("fast tf32 nhwc", torch.float32, True, True),
            "fp32-nhwc": ("fast fp32 strict nhwc", torch.float32, False, True),
            "tf32": ("fast tf32", torch.float32, True, False),
        }
        for key in [v.strip() for v in args.fast.split(",") if v.strip()]:
            label, dtype, tf32, nhwc = variants[key]
            for compiled in [True, False] if compile_ok else [False]:
                suffix = " compiled" if compiled else " eager"
                need = 60.0 if compiled else 15.0
                try:
                    mimi = fast(dtype, nhwc, compiled)
                except Exception as error:
                    record(label + suffix, "both", None, "failed", f"{type(error).__name__}: {error}"[:160])
                    continue
                attempt(label + suffix, "encode", lambda m=mimi, t=tf32: fast_encode(m, t), need=need)
                attempt(label + suffix, "decode", lambda m=mimi, t=tf32: fast_decode(m, t), need=need)
                measured = [r for r in rows if r["path"] == label + suffix and r["audio_seconds_per_second"]]
                if compiled and len(measured) == 2:
                    break  # the compiled variant worked: its eager twin would only be slower
                del mimi

    print()
    print(
        f"batch {args.batch} x {args.seconds:g} s = {audio_seconds:g} s of audio per call, device {name}, "
        f"torch {torch.__version__}; total {time.perf_counter() - started:.0f} s"
    )
    header = ("path", "direction", "audio s/s", "ms / batch", "vs fp32 engine")
    lines = [
        (
            r["path"],
            r["direction"],
            f"{r['audio_seconds_per_second']:,.0f}" if r["audio_seconds_per_second"] else "-",
            f"{1000 * r['seconds_per_batch']:.1f}" if r["seconds_per_batch"] else "-",
            (r["quality"] + " " + r["note"]).strip(),
        )
        for r in rows
    ]
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))]
    for line in [header, tuple("-" * w for w in widths), *lines]:
        print("| " + " | ".join(str(cell).ljust(width) for cell, width in zip(line, widths)) + " |")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "device": name,
                    "torch": torch.__version__,
                    "batch": args.batch,
                    "seconds": args.seconds,
                    "rows": rows,
                    "corpus_precision": reference.get("corpus_precision", []),
                },
                indent=1,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
