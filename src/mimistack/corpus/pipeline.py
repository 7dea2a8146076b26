"""Tokenizing a corpus (`tokenize_corpus`): the inputs planned into numbered units, the pending ones executed by a
runner, each finished unit written as one shard, resumably, and the summary rebuilt from the shards.

The runner is the only thing that differs between a run on this machine and one on a cluster: `local.LocalRunner`
(the default without `--address`: one process, one Codec on every CPU, decoding overlapped) or `raydata.RayRunner`
(Ray Data: a cluster with `--address`, or a private local Ray with `runner="ray"`). Both get the same `units.Work`
and hand their rows to the same `units.UnitSink`, so shards, manifest, errors and resume are the same.

Sits on `inputs` (`collect_inputs`), `layout` (plan, lock, summary), `units`, `local`, `raydata`, `errors`,
`codec` (the engine's options) and `weights` (the sha256 every row carries); used by `cli.corpus` (`mimistack
tokenize-corpus`) and `bench/bench_corpus.py`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Literal, get_args

from ..codec import RANDOM_WEIGHTS, Codec, random_weights_path
from ..engine.options import EngineOptions, OnnxOptions, TorchDtype, TorchOptions, torch_available
from ..weights import WeightsRef
from .errors import CorpusError, require_ray
from .inputs import InputSpecs, collect_inputs
from .layout import (
    FolderLock,
    Manifest,
    WeightsIdentity,
    clean_temporaries,
    completed_units,
    extend_plan,
    prepare_output,
    read_manifest,
    read_plan,
    write_plan,
    write_summary,
)
from .local import GPU_ENCODERS, LocalRunner
from .precision import DEFAULT_AGREEMENT_FILES, describe, measure_agreement, reduced
from .raydata import RayRunner
from .units import DEFAULT_GPU_BATCH_SECONDS, Runner, UnitSink, Work

logger = logging.getLogger(__name__)

DEFAULT_FILES_PER_SHARD = 256
RunnerName = Literal["auto", "local", "ray"]

__all__ = [
    "DEFAULT_FILES_PER_SHARD",
    "DEFAULT_GPU_BATCH_SECONDS",
    "RunnerName",
    "TokenizeResult",
    "choose_runner",
    "engine_options",
    "tokenize_corpus",
]


@dataclasses.dataclass(frozen=True)
class TokenizeResult:
    """What one `tokenize_corpus` call did; `manifest` is the folder's manifest.json as written."""

    output: Path
    files_planned: int
    files_skipped: int
    """Files in units finished by an earlier run."""
    files_processed: int
    rows_written: int
    errors: int
    audio_seconds: float
    """Audio encoded by this call."""
    elapsed_seconds: float
    manifest: Manifest

    @property
    def audio_seconds_per_second(self) -> float:
        return self.audio_seconds / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0


def engine_options(engine: str, device: str, dtype: TorchDtype, onnx_dir: str | None, fast: bool) -> EngineOptions:
    """The options the runner loads its Codec(s) with (threads are the runner's: every CPU for the local one, per
    actor from its resources on Ray).

    `engine`: "torch", "onnx" or "auto" (ONNX Runtime when `onnx_dir` is given or torch is not installed, as on the
    command line); `fast` compiles the fast path on CUDA."""
    if engine == "auto":
        engine = "onnx" if onnx_dir is not None or not torch_available() else "torch"
    if fast and engine != "torch":
        raise CorpusError("fast=True is an option of the torch engine")
    if engine == "onnx":
        return OnnxOptions(onnx_dir=onnx_dir, device=device)
    if engine == "torch":
        return TorchOptions(device=device, dtype=dtype, fast=fast, compile=fast and device.startswith("cuda"))
    raise CorpusError(f"unknown engine {engine!r}; expected 'auto', 'torch' or 'onnx'")


def _weights_identity(
    weights: str, revision: str | None, options: EngineOptions
) -> tuple[WeightsIdentity, WeightsRef | None]:
    """What every row records about the model, found without building it (the torch engine) or on CPU (ONNX)."""
    ref: WeightsRef | None = None
    if isinstance(options, OnnxOptions):
        codec = Codec.load(weights, OnnxOptions(onnx_dir=options.onnx_dir), revision=revision)
        config, sha256, ref = codec.config, codec.weights_sha256, codec.weights
    else:
        ref = WeightsRef.resolve(random_weights_path(weights) if weights in RANDOM_WEIGHTS else weights, revision)
        config, sha256 = ref.config, ref.sha256
    identity = WeightsIdentity(
        sha256, config.num_levels, config.sample_rate, config.frame_rate, config.frame_size, config.codebook_size
    )
    return identity, ref


def choose_runner(
    runner: str, address: str | None, num_cpus: int | None, encoders: int | None, threads: int | None
) -> Runner:
    """The runner a run uses: "auto" is Ray with an `address`, else the local runner. Options that the chosen
    runner cannot honour are refused, never ignored; Ray's absence is reported before any work."""
    if runner not in get_args(RunnerName):
        raise CorpusError(f"unknown runner {runner!r}; expected 'auto', 'local' or 'ray'")
    if runner == "auto":
        runner = "ray" if address else "local"
    if runner == "local":
        if address:
            raise CorpusError(
                f"--address {address} is a Ray cluster, but --runner local runs everything in this process; "
                "use --runner ray (or the default, auto) to run on the cluster, or drop --address"
            )
        if encoders is not None and encoders > 1:
            # Several codecs in this process, each on --threads threads (default 1), parallel over files.
            return LocalRunner(threads=threads or 1, encoders=encoders)
        return LocalRunner(threads=threads or num_cpus)
    require_ray()
    return RayRunner(address=address, num_cpus=num_cpus, encoders=encoders, threads=threads)


def tokenize_corpus(
    inputs: InputSpecs,
    output: str | os.PathLike[str],
    weights: str | os.PathLike[str] = "kyutai/mimi",
    *,
    revision: str | None = None,
    engine: str = "torch",
    device: str = "cpu",
    dtype: TorchDtype = "float32",
    onnx_dir: str | os.PathLike[str] | None = None,
    runner: RunnerName = "auto",
    address: str | None = None,
    num_cpus: int | None = None,
    encoders: int | None = None,
    threads: int | None = None,
    batch_seconds: float | None = None,
    files_per_shard: int = DEFAULT_FILES_PER_SHARD,
    progress: bool = False,
    fast: bool = False,
    agreement_files: int = DEFAULT_AGREEMENT_FILES,
) -> TokenizeResult:
    """Tokenize every input file into Parquet shards under `output` (created, or resumed if it exists).

    `inputs`: folders, globs, manifests or files (see `collect_inputs`). `runner`: "local" runs the job in this
    process (one Codec on `threads` CPU threads, default `num_cpus` or every CPU, or on the GPU with
    `device="cuda"`; the next files are decoded in a background thread; with `encoders` > 1, that many codecs
    on `threads` (default 1) threads each, parallel over files); "ray" runs it on Ray Data, on the
    cluster at `address` or a private local Ray with `num_cpus` CPUs (an already initialised Ray is reused):
    files decoded in CPU tasks and encoded by `encoders` actors that each hold one Codec, on CPU with `threads`
    threads each or on one GPU each. "auto" (default): "ray" when `address` is given, else "local". Both
    write the same shards, manifest and errors, and resume the same way. `batch_seconds`: padded audio
    seconds per encode call; 0 (the CPU default) encodes one file per call, which gives exactly the codes of
    `Codec.encode` on that file (on the same torch thread count); batching (the GPU default, 1280 s) is faster
    but float rounding then depends on the batch, which can flip a few near-tie tokens, as a different device
    does. Bad files are recorded with their reason and never stop the job. `fast` (torch engine): the
    whole-input fast path of `TorchEngine` (compiled on CUDA), for GPU runs with dtype="bfloat16"; its codes
    differ from fp32's on many tokens. The manifest's `precision` records the run's dtype, fast path and
    batching; for a reduced-precision torch run (bfloat16/float16 or `fast`) this process re-encodes the first
    `agreement_files` rows in strict float32 and records the share of equal tokens (0: not measured).
    """
    started = time.perf_counter()
    options = engine_options(engine, device, dtype, None if onnx_dir is None else os.fspath(onnx_dir), fast)
    folder = Path(output)
    weights = os.fspath(weights)
    if files_per_shard <= 0:
        raise CorpusError(f"files_per_shard must be positive, got {files_per_shard}")
    if batch_seconds is not None and batch_seconds < 0:
        raise CorpusError(f"batch_seconds must be >= 0, got {batch_seconds}")
    if agreement_files < 0:
        raise CorpusError(f"agreement_files must be >= 0, got {agreement_files}")
    chosen = choose_runner(runner, address, num_cpus, encoders, threads)
    if isinstance(chosen, LocalRunner) and chosen.encoders > 1 and options.device != "cpu":
        raise CorpusError(GPU_ENCODERS)
    items = collect_inputs(inputs)
    identity, ref = _weights_identity(weights, revision, options)
    prepare_output(folder)
    with FolderLock(folder):
        clean_temporaries(folder)
        precision = describe(options, 0.0)
        codes = {"engine": precision["engine"], "dtype": precision["dtype"], "fast": precision["fast"]}
        plan, added = extend_plan(read_plan(folder), items, identity.sha256, files_per_shard, codes)
        if added:
            write_plan(folder, plan)
        done = completed_units(folder)
        pending = [u for u in range(len(plan.units)) if u not in done]
        skipped = sum(len(plan.units[u]) for u in done if u < len(plan.units))
        logger.info(
            "%s: %d files in %d units planned, %d units done before, %d to do",
            folder,
            plan.num_files,
            len(plan.units),
            len(done),
            len(pending),
        )
        work = Work(plan, pending, identity, weights, revision, options, batch_seconds, ref)
        sink = UnitSink(work, folder, progress, skipped, started)
        if pending:
            if weights in RANDOM_WEIGHTS and address:
                logger.warning(
                    "random weights on a cluster: every node writes its own cached copy (same seed, same file)"
                )
            chosen.execute(work, sink)
        last_run: dict[str, object] = {
            "runner": chosen.name,
            "engine": options.name,
            "device": device,
            "dtype": dtype,
            "fast": fast,
        }
        precision = describe(options, work.batch_seconds_for_device())
        if reduced(options) and agreement_files and sink.counts.rows and isinstance(options, TorchOptions):
            precision["agreement"] = measure_agreement(folder, ref or weights, options, agreement_files)
        else:  # nothing new to compare: keep what an earlier run of the same precision measured
            earlier = read_manifest(folder).get("precision", {})
            if {k: v for k, v in earlier.items() if k != "agreement"} == {
                k: v for k, v in precision.items() if k != "agreement"
            }:
                precision["agreement"] = earlier.get("agreement")  # type: ignore[typeddict-item]
        manifest = write_summary(folder, plan, inputs, weights, identity, last_run, dict(precision))
    elapsed = time.perf_counter() - started
    counts = sink.counts
    return TokenizeResult(
        folder, plan.num_files, skipped, counts.processed, counts.rows, counts.errors, counts.seconds, elapsed, manifest
    )
