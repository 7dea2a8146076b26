"""Tokenizing a corpus on Ray Data (`tokenize_corpus`): files decoded in CPU tasks, encoded by actors that each hold
one `Codec`, and each finished unit written as one shard, resumably.

Sits on `inputs` (`collect_inputs`), `layout` (plan, lock, summary), `shards` (`write_shard`), `errors` (Ray),
`workers` (what runs on the Ray workers), `codec` (the engine's options), `progress` and `weights` (the sha256
every row carries); used by `cli.corpus` (`mimistack tokenize-corpus`) and `bench/bench_corpus.py`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import warnings
from pathlib import Path
from types import ModuleType

from safetensors import safe_open

from ..codec import RANDOM_WEIGHTS, Codec, random_weights_path
from ..engine.options import EngineOptions, OnnxOptions, TorchDtype, TorchOptions, torch_available
from ..weights import file_sha256, infer_config, resolve_weights
from .errors import CorpusError, require_ray
from .inputs import InputSpecs, collect_inputs
from .layout import (
    FolderLock,
    Manifest,
    Plan,
    WeightsIdentity,
    clean_temporaries,
    completed_units,
    extend_plan,
    prepare_output,
    read_plan,
    write_plan,
    write_summary,
)
from .progress import TokenizeProgress
from .shards import EncodedRow, write_shard
from .workers import Batch, Encoder, FileRow, decode_row

logger = logging.getLogger(__name__)

DEFAULT_FILES_PER_SHARD = 256
DEFAULT_GPU_BATCH_SECONDS = 1280.0  # 128 utterances of 10 s: keeps an H100/H200 busy without running out of memory


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


@dataclasses.dataclass
class _Counts:
    processed: int = 0
    rows: int = 0
    errors: int = 0
    seconds: float = 0.0


def engine_options(engine: str, device: str, dtype: TorchDtype, onnx_dir: str | None, fast: bool) -> EngineOptions:
    """The options the encoder actors load their Codec with (threads are set per actor, from its resources).

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


def _weights_identity(weights: str, revision: str | None, options: EngineOptions) -> WeightsIdentity:
    """What every row records about the model, found without building it (the torch engine) or on CPU (ONNX)."""
    if isinstance(options, OnnxOptions):
        codec = Codec.load(weights, OnnxOptions(onnx_dir=options.onnx_dir), revision=revision)
        config, sha256 = codec.config, codec.weights_sha256
    else:
        path = random_weights_path(weights) if weights in RANDOM_WEIGHTS else resolve_weights(weights, revision)
        with safe_open(str(path), framework="np") as handle:
            metadata = handle.metadata() or {}
        config, sha256 = infer_config({}, metadata), file_sha256(path)
    return WeightsIdentity(
        sha256, config.num_levels, config.sample_rate, config.frame_rate, config.frame_size, config.codebook_size
    )


def _start_ray(ray: ModuleType, address: str | None, num_cpus: int | None) -> bool:
    """Connect to `address`, or start a private local Ray (dashboard off, bound to 127.0.0.1); reuse one that the
    caller already started. Returns whether this call started it (and so must shut it down)."""
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
        return True
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports leave this machine
    cpus = num_cpus or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    ray.init(
        num_cpus=cpus,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _node_ip_address="127.0.0.1",
    )
    return True


def _pool_sizes(
    ray: ModuleType, device: str, encoders: int | None, threads: int | None
) -> tuple[int, dict[str, float]]:
    """How many encoder actors, and the resources each one holds."""
    resources: dict[str, float] = ray.cluster_resources()
    if device.startswith("cuda"):
        gpus = int(resources.get("GPU", 0))
        if gpus == 0:
            raise CorpusError("--device cuda, but the Ray cluster has no GPU")
        return encoders or gpus, {"num_gpus": 1, "num_cpus": 1}
    per_actor = threads or 1
    # On CPU, Ray Data fuses the decode step into the encoder actors (same resources): each actor decodes its own
    # files, no pcm crosses the object store, and one actor per CPU keeps every core busy.
    return encoders or max(1, int(resources.get("CPU", 1)) // per_actor), {"num_cpus": per_actor}


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
    address: str | None = None,
    num_cpus: int | None = None,
    encoders: int | None = None,
    threads: int | None = None,
    batch_seconds: float | None = None,
    files_per_shard: int = DEFAULT_FILES_PER_SHARD,
    progress: bool = False,
    fast: bool = False,
) -> TokenizeResult:
    """Tokenize every input file into Parquet shards under `output` (created, or resumed if it exists).

    `inputs`: folders, globs, manifests or files (see `collect_inputs`). `address`: a Ray cluster (default: a
    private local Ray with `num_cpus` CPUs, all of this machine's by default; an already initialised Ray is
    reused). Files are decoded and resampled in CPU tasks and encoded by `encoders` actors that each hold one
    Codec: on CPU with `threads` threads each, or on one GPU each with `device="cuda"`. `batch_seconds`: padded
    audio seconds per encode call; 0 (the CPU default) encodes one file per call, which gives exactly the codes
    of `Codec.encode` on that file; batching (the GPU default, 1280 s) is faster but float rounding then depends
    on the batch, which can flip a few near-tie tokens, as a different device does. Bad files are recorded with
    their reason and never stop the job. `fast` (torch engine): the whole-input fast path of `TorchEngine`
    (compiled on CUDA), for GPU runs with dtype="bfloat16"; its codes differ from fp32's on many tokens.
    """
    started = time.perf_counter()
    options = engine_options(engine, device, dtype, None if onnx_dir is None else os.fspath(onnx_dir), fast)
    folder = Path(output)
    weights = os.fspath(weights)
    if files_per_shard <= 0:
        raise CorpusError(f"files_per_shard must be positive, got {files_per_shard}")
    if batch_seconds is not None and batch_seconds < 0:
        raise CorpusError(f"batch_seconds must be >= 0, got {batch_seconds}")
    items = collect_inputs(inputs)
    identity = _weights_identity(weights, revision, options)
    prepare_output(folder)
    with FolderLock(folder):
        clean_temporaries(folder)
        plan, added = extend_plan(read_plan(folder), items, identity.sha256, files_per_shard)
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
        counts = _Counts()
        if pending:
            if weights in RANDOM_WEIGHTS and address:
                logger.warning(
                    "random weights on a cluster: every node writes its own cached copy (same seed, same file)"
                )
            run = _Run(plan, folder, identity, weights, revision, options, batch_seconds, counts)
            with warnings.catch_warnings():
                # Ray Data warns about its own deprecated settings while copying its context: noise for our users.
                warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray(\.|$)")
                run.execute(pending, skipped, address, num_cpus, encoders, threads, progress, started)
        last_run: dict[str, object] = {"engine": options.name, "device": device, "dtype": dtype, "fast": fast}
        manifest = write_summary(folder, plan, inputs, weights, identity, last_run)
    elapsed = time.perf_counter() - started
    return TokenizeResult(
        folder, plan.num_files, skipped, counts.processed, counts.rows, counts.errors, counts.seconds, elapsed, manifest
    )


@dataclasses.dataclass
class _Run:
    """One pass of the Ray pipeline over the pending units of a plan."""

    plan: Plan
    folder: Path
    identity: WeightsIdentity
    weights: str
    revision: str | None
    options: EngineOptions
    batch_seconds: float | None
    counts: _Counts

    def execute(
        self,
        pending: list[int],
        skipped: int,
        address: str | None,
        num_cpus: int | None,
        encoders: int | None,
        threads: int | None,
        progress: bool,
        started: float,
    ) -> None:
        ray = require_ray()
        owns_ray = _start_ray(ray, address, num_cpus)
        context = ray.data.DataContext.get_current()
        saved = context.enable_progress_bars
        context.enable_progress_bars = False  # ours shows files, hours and throughput; Ray's would fight it
        bar = TokenizeProgress(progress, self.plan.num_files, skipped)
        batches = None
        try:
            gpu = self.options.device.startswith("cuda")
            size, resources = _pool_sizes(ray, self.options.device, encoders, threads)
            seconds = self.batch_seconds
            if seconds is None:
                seconds = DEFAULT_GPU_BATCH_SECONDS if gpu else 0.0
            options = dataclasses.replace(self.options, num_threads=None if gpu else int(resources["num_cpus"]))
            rows = [
                FileRow(unit=u, position=p, id=item.id, path=item.path, sample_rate=self.identity.sample_rate)
                for u in pending
                for p, item in enumerate(self.plan.units[u])
            ]
            blocks = max(1, min(len(rows), max(size * 4, len(rows) // 16)))
            dataset = (
                ray.data.from_items(rows, override_num_blocks=blocks)
                .map(decode_row, num_cpus=1)
                .map_batches(
                    Encoder,
                    batch_size=256 if gpu else 16,
                    batch_format="numpy",
                    compute=ray.data.ActorPoolStrategy(size=size),
                    fn_constructor_kwargs={
                        "weights": self.weights,
                        "revision": self.revision,
                        "options": options,
                        "batch_seconds": seconds,
                        "weights_sha256": self.identity.sha256,
                    },
                    **resources,
                )
            )
            waiting: dict[int, dict[int, EncodedRow]] = {u: {} for u in pending}
            batches = dataset.iter_batches(batch_size=None, batch_format="numpy")
            for batch in batches:
                advanced, audio = self._collect(batch, waiting)
                self.counts.processed += advanced
                self.counts.seconds += audio
                bar.update(advanced, audio, time.perf_counter() - started)
            if waiting:
                raise CorpusError(
                    f"the pipeline ended with {len(waiting)} unit(s) incomplete (rows lost in Ray); "
                    "run again to redo them"
                )
        finally:
            bar.close()
            close = getattr(batches, "close", None)
            if close is not None:
                close()
            context.enable_progress_bars = saved
            if owns_ray:
                ray.shutdown()

    def _collect(self, batch: Batch, waiting: dict[int, dict[int, EncodedRow]]) -> tuple[int, float]:
        """File the batch's rows under their units and write each unit that is now complete; returns the files
        and the audio seconds the batch held."""
        advanced, audio = 0, 0.0
        for index in range(len(batch["id"])):
            row = EncodedRow(
                unit=int(batch["unit"][index]),
                position=int(batch["position"][index]),
                id=str(batch["id"][index]),
                path=str(batch["path"][index]),
                num_samples=int(batch["num_samples"][index]),
                num_frames=int(batch["num_frames"][index]),
                codes=bytes(batch["codes"][index]),
                error=str(batch["error"][index]),
            )
            unit = row["unit"]
            waiting[unit][row["position"]] = row
            advanced += 1
            if not row["error"]:
                audio += row["num_samples"] / self.identity.sample_rate
            if len(waiting[unit]) == len(self.plan.units[unit]):
                finished = waiting.pop(unit)
                ordered = [finished[p] for p in range(len(self.plan.units[unit]))]
                written, failed = write_shard(self.folder, unit, ordered, self.identity)
                self.counts.rows += written
                self.counts.errors += failed
        return advanced, audio
