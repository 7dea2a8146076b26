"""Throughput of `mimistack tokenize-corpus` (local runner, and Ray Data on local Ray) against a plain
single-process loop, on this machine.

Uses `mimistack.corpus.tokenize_corpus` and `mimistack.Codec`; see docs/corpus.md. CPU only (the GPU measurement
is bench/gpu_corpus.py). Builds a corpus from the speech clips in a temporary folder (`--files N`: N files, cycling
through the clips; or `--copies N`: N copies of all of them), then for each engine (torch; onnx when its graphs are
available):

  loop   for each file: codec.encode(load_audio(file)), one process, the engine using every CPU. Its wall time
         includes Codec.load and a warm-up encode, as the runners' include their model loads; the loop alone is
         reported beside it
  local  tokenize_corpus(..., runner="local"): one process, one Codec on every CPU, the next files decoded in a
         background thread (the default without --address)
  local-files  tokenize_corpus(..., runner="local", encoders=CPUs): one process, one single-threaded Codec per
         CPU, each thread decoding and encoding whole files (parallel over files, as Ray's CPU actors, without Ray)
  ray    tokenize_corpus(..., runner="ray") on a local Ray started after the other rows (its start is reported
         apart, and its idle daemons do not share the CPUs with them); actor start-up and model loading are
         inside the measured time, as a user would see them
  cluster  tokenize_corpus(..., address=...) on a two-node Ray cluster started on this machine with `ray start`
         (a head and a second node, half the CPUs each: tests/ray_cluster.py, as the cluster test uses), after
         every other row; its start is reported apart, and it is stopped (its own processes only) at the end.
         On one machine it measures what a second node costs (two raylets and object stores, actors spread
         over them), not a speed-up

and prints audio seconds per second (= audio hours per hour) and whether each runner's codes equal the loop's (the
local runner's must: same thread count, same calls; Ray's CPU actors run one thread each, which can flip near-tied
tokens).

    python bench/bench_corpus.py --quick              # 3 short files: proves it runs (a minute or two)
    python bench/bench_corpus.py --files 33           # the 33-file corpus (~240 s of speech)
    python bench/bench_corpus.py --files 300          # the 300-file corpus (~2,000 s)
    python bench/bench_corpus.py --runners loop,local --engines torch
    python bench/bench_corpus.py --files 300 --engines torch --runners loop,local,local-files,ray,cluster
    python bench/bench_corpus.py --engines torch,onnx --onnx mimi-onnx
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the one speech helper (tests/speech_data.py) and the local cluster
from speech_data import SPEECH_DIR, speech_files  # noqa: E402

QUICK_FILES = (
    "real_sense_and_sensibility_01_austen_64kb-0880.wav",
    "real_sense_and_sensibility_01_austen_64kb-0890.wav",
    "flite_awb.wav",
)


def clips(speech_dir: Path, quick: bool) -> list[Path]:
    if speech_dir == SPEECH_DIR:
        sources = [SPEECH_DIR / name for name in QUICK_FILES] if quick else speech_files()
    else:
        sources = sorted(speech_dir.glob("*.wav"))
    if not sources or not all(p.exists() for p in sources):
        raise SystemExit(f"speech clips missing in {speech_dir}")
    return sources


def build_corpus(folder: Path, sources: list[Path], count: int) -> list[Path]:
    """`count` files: the clips in order, again and again (copy k of a clip is copyKKK/<name>)."""
    files = []
    for index in range(count):
        source = sources[index % len(sources)]
        target = folder / f"copy{index // len(sources):03d}" / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        files.append(target)
    return files


def plain_loop(
    files: list[Path], weights: str, engine: str, onnx_dir: str | None, threads: int
) -> tuple[float, float, float, dict[str, np.ndarray]]:
    """Audio seconds, wall seconds (model load and warm-up included), seconds of the loop alone, codes by path."""
    from mimistack import Codec, OnnxOptions, TorchOptions, load_audio

    started = time.perf_counter()
    options = (
        OnnxOptions(onnx_dir=onnx_dir, num_threads=threads) if engine == "onnx" else TorchOptions(num_threads=threads)
    )
    codec = Codec.load(weights, engine=options)
    codec.encode(np.zeros(codec.frame_size, dtype=np.float32))  # warm-up: first-call allocations
    codes, seconds = {}, 0.0
    looping = time.perf_counter()
    for path in files:
        pcm = load_audio(path)
        codes[str(path)] = codec.encode(pcm).codes
        seconds += len(pcm) / codec.sample_rate
    done = time.perf_counter()
    return seconds, done - started, done - looping, codes


def run_corpus(
    runner: str,
    folder: Path,
    out: Path,
    weights: str,
    engine: str,
    onnx_dir: str | None,
    num_cpus: int,
    encoders: int | None,
    address: str | None = None,
) -> tuple[float, float, dict[str, np.ndarray]]:
    from mimistack import corpus

    result = corpus.tokenize_corpus(
        folder,
        out,
        weights,
        engine=engine,
        onnx_dir=onnx_dir,
        runner="ray" if address else "local" if runner == "local-files" else runner,  # type: ignore[arg-type]
        address=address,
        num_cpus=None if address else num_cpus,
        encoders=encoders if runner in ("ray", "cluster") else num_cpus if runner == "local-files" else None,
    )
    codes = {record.source_path: record.grid.codes for record in corpus.open(out)}
    return result.audio_seconds, result.elapsed_seconds, codes


def agreement(reference: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> str:
    if set(reference) != set(other):
        return f"files differ ({len(reference)} vs {len(other)})"
    equal = sum(int(np.array_equal(reference[k], other[k])) for k in reference)
    tokens = sum(reference[k].size for k in reference)
    same = sum(int((reference[k] == other[k]).sum()) for k in reference if reference[k].shape == other[k].shape)
    return f"{equal}/{len(reference)} files identical, {100 * same / tokens:.3f}% tokens"


def prepare_weights(weights: str) -> None:
    """Write a random checkpoint or download the weights, and read the file once, before any row is timed (the
    first row must not pay for it)."""
    from mimistack.codec import RANDOM_WEIGHTS, random_weights_path
    from mimistack.weights import WeightsRef

    WeightsRef.resolve(random_weights_path(weights) if weights in RANDOM_WEIGHTS else weights)


def failure(engine: str, path: str, what: str, error: Exception) -> tuple[str, ...]:
    return (engine, path, "-", "-", "-", f"{what}: {type(error).__name__}: {str(error).splitlines()[0][:100]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 short files (proves the script runs)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--files", type=int, default=None, help="files in the corpus, cycling through the clips (33, 300)"
    )
    size.add_argument("--copies", type=int, default=None, help="copies of all the speech clips (default 10)")
    parser.add_argument(
        "--weights", default="random", help="default: random official-size weights (same speed as kyutai/mimi)"
    )
    parser.add_argument("--engines", default="torch,onnx", help="comma-separated: torch, onnx")
    parser.add_argument(
        "--runners",
        default="loop,local,ray",
        help="comma-separated: loop, local, local-files, ray, cluster (two local nodes)",
    )
    parser.add_argument("--onnx", dest="onnx_dir", default=None, help="exported ONNX graphs for the onnx engine")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs for the loop, the local runner and Ray")
    parser.add_argument("--encoders", type=int, default=None, help="Ray encoder actors (default: one per CPU)")
    parser.add_argument("--speech-dir", type=Path, default=SPEECH_DIR)
    args = parser.parse_args()
    runners = [r.strip() for r in args.runners.split(",") if r.strip()]
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if unknown := set(runners) - {"loop", "local", "local-files", "ray", "cluster"}:
        parser.error(f"unknown runner(s): {', '.join(sorted(unknown))}")

    if "cluster" in runners:
        # Ray reads its authentication mode once per process: a driver whose first Ray (the local-Ray row) ran
        # with token authentication cannot then run actors on the no-token test cluster. Both are private to
        # this machine, so the whole bench runs without tokens.
        os.environ["RAY_AUTH_MODE"] = "disabled"

    import torch

    from mimistack import __version__

    try:
        import ray

        ray_version = ray.__version__
    except ImportError:
        ray, ray_version = None, "not installed"
    cpus = args.num_cpus or len(os.sched_getaffinity(0))
    print(
        f"mimistack {__version__}, torch {torch.__version__}, ray {ray_version}, python "
        f"{platform.python_version()}; {cpus} CPUs ({platform.processor() or platform.machine()}), load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; weights {args.weights}"
    )
    prepare_weights(args.weights)
    rows: list[tuple[str, ...]] = []
    with tempfile.TemporaryDirectory(prefix="bench-corpus-") as scratch:
        folder = Path(scratch) / "audio"
        sources = clips(args.speech_dir, args.quick)
        count = args.files or len(sources) * (args.copies or (1 if args.quick else 10))
        files = build_corpus(folder, sources, count)
        print(f"corpus: {len(files)} files from {len(sources)} clips")
        loop_codes: dict[str, dict[str, np.ndarray]] = {}
        unavailable: set[str] = set()
        for engine in engines:
            if "loop" in runners:
                try:
                    seconds, elapsed, alone, loop_codes[engine] = plain_loop(
                        files, args.weights, engine, args.onnx_dir, cpus
                    )
                    note = f"reference (loop alone: {alone:.1f} s, {seconds / alone:.2f} audio s/s)"
                    rows.append(
                        (
                            engine,
                            "single-process loop",
                            f"{seconds:.1f}",
                            f"{elapsed:.1f}",
                            f"{seconds / elapsed:.2f}",
                            note,
                        )
                    )
                except Exception as error:  # one engine failing must not hide the others
                    rows.append(failure(engine, "single-process loop", "unavailable", error))
                    unavailable.add(engine)
                    continue
            for local in ("local", "local-files"):
                if local in runners:
                    rows.append(measure(local, folder, Path(scratch), args, engine, cpus, loop_codes.get(engine)))
        if "ray" in runners and ray is None:
            rows.append(("-", "ray tokenize-corpus", "-", "-", "-", "ray is not installed: pip install 'ray[data]'"))
        elif "ray" in runners:
            started = time.perf_counter()
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(
                num_cpus=cpus,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
                _node_ip_address="127.0.0.1",
            )
            print(f"ray start: {time.perf_counter() - started:.1f} s (not in the figures below)")
            try:
                for engine in [e for e in engines if e not in unavailable]:
                    rows.append(measure("ray", folder, Path(scratch), args, engine, cpus, loop_codes.get(engine)))
            finally:
                ray.shutdown()
        if "cluster" in runners and ray is not None:
            rows += measure_cluster(
                folder, Path(scratch), args, [e for e in engines if e not in unavailable], cpus, loop_codes
            )
    header = ("engine", "path", "audio s", "wall s", "audio s/s (= h/h)", "codes vs loop")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("| " + " | ".join(str(cell).ljust(width) for cell, width in zip(row, widths)) + " |")
    return 0


def measure_cluster(
    folder: Path,
    scratch: Path,
    args: argparse.Namespace,
    engines: list[str],
    cpus: int,
    loop_codes: dict[str, dict[str, np.ndarray]],
) -> list[tuple[str, ...]]:
    """The `cluster` rows: a head and a second node with half the CPUs each, started here, always stopped."""
    from ray_cluster import LocalCluster

    started = time.perf_counter()
    nodes = LocalCluster(scratch / "cluster")
    (scratch / "cluster").mkdir()
    rows = []
    try:
        head_cpus = max(1, cpus // 2)
        nodes.start(head=True, cpus=head_cpus)
        nodes.start(head=False, cpus=max(1, cpus - head_cpus))
        print(f"two-node cluster start: {time.perf_counter() - started:.1f} s (not in the figures below)")
        saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")}
        os.environ.update({"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"})  # as the nodes run
        try:
            for engine in engines:
                rows.append(
                    measure("cluster", folder, scratch, args, engine, cpus, loop_codes.get(engine), nodes.address)
                )
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    except Exception as error:
        rows.append(failure("-", "cluster tokenize-corpus", "cluster failed", error))
    finally:
        nodes.stop()
    return rows


def measure(
    runner: str,
    folder: Path,
    scratch: Path,
    args: argparse.Namespace,
    engine: str,
    cpus: int,
    reference: dict[str, np.ndarray] | None,
    address: str | None = None,
) -> tuple[str, ...]:
    path = f"{runner} tokenize-corpus"
    try:
        seconds, elapsed, codes = run_corpus(
            runner,
            folder,
            scratch / f"tokens-{runner}-{engine}",
            args.weights,
            engine,
            args.onnx_dir,
            cpus,
            args.encoders,
            address,
        )
    except Exception as error:
        return failure(engine, path, "failed", error)
    note = agreement(reference, codes) if reference is not None else "no loop to compare with"
    return (engine, path, f"{seconds:.1f}", f"{elapsed:.1f}", f"{seconds / elapsed:.2f}", note)


if __name__ == "__main__":
    sys.exit(main())
