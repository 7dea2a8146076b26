"""Corpus tokenization at scale: audio collections -> Parquet shards of Mimi token grids, on Ray Data; read back.

Top layer ("scale"): sits on `codec` (one `Codec` per encoder actor), `audio` (`load_audio` in CPU tasks), `tokens`
(`TokenGrid` when reading back) and `weights` (the sha256 that every row carries); driven by `cli_corpus`
(`mimistack tokenize-corpus`, `mimistack corpus-export`). The output layout, Parquet schema, resume rules and the
flat export format are specified in `docs/corpus.md`.

    result = tokenize_corpus(["audio/"], "tokens/", weights="kyutai/mimi")    # local Ray, resumable
    for record in open("tokens/"):                                           # CorpusRecord: id, grid, ...
        record.grid.codes                                                    # uint16 [32, T]
    export_flat("tokens/", "flat/", levels="0-7")                            # uint16 .bin + offsets for LM training

Why it is resumable by construction: the input list is turned once into a **plan** of numbered work units (a fixed
set of files each, `plan.parquet`, written atomically and only ever extended). Each unit becomes exactly one shard
file, `shards/part-NNNNNN.parquet`, written to a temporary name, fsynced and renamed into place; that rename is the
only record that a unit is done (its bad files travel inside the same file, in the footer metadata). A rerun skips
units whose shard exists and redoes the others whole, so a run killed at any instant loses nothing and duplicates
nothing. A lock file keeps two runs from writing one folder; temporary files left by a killed run are removed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob as globbing
import itertools
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import __version__
from .audio import SOUNDFILE_SUFFIXES
from .levels import Levels, LevelsLike
from .tokens import TokenGrid

if TYPE_CHECKING:
    import pyarrow

__all__ = [
    "AUDIO_SUFFIXES",
    "FORMAT_VERSION",
    "Corpus",
    "CorpusError",
    "CorpusInput",
    "CorpusRecord",
    "FlatExport",
    "TokenizeResult",
    "collect_inputs",
    "export_flat",
    "iter_flat",
    "open",
    "tokenize_corpus",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
AUDIO_SUFFIXES = frozenset(SOUNDFILE_SUFFIXES | {".mp3", ".m4a", ".aac", ".opus", ".webm", ".mka", ".mp4", ".wma"})
"""Suffixes picked up when INPUT is a folder (globs and manifests take whatever they name)."""
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".parquet")

PLAN_FILE = "plan.parquet"
MANIFEST_FILE = "manifest.json"
ERRORS_FILE = "errors.jsonl"
LOCK_FILE = ".lock"
SHARD_DIR = "shards"
SHARD_METADATA_KEY = b"mimistack.corpus"
DEFAULT_FILES_PER_SHARD = 256
DEFAULT_GPU_BATCH_SECONDS = 1280.0  # 128 utterances of 10 s: keeps an H100/H200 busy without running out of memory
_TMP_MARK = ".tmp-"

COLUMNS = {
    "id": "string: the utterance id (from the manifest, or the path relative to the input folder/glob root, "
          "without suffix)",
    "source_path": "string: absolute path of the audio file",
    "duration_s": "float64: seconds of audio after resampling to the model rate (num_samples / sample_rate)",
    "num_samples": "int64: samples at the model rate (24 kHz); decoding trims to it",
    "num_frames": "int32: token frames T = ceil(num_samples / 1920)",
    "codes": "list<fixed_size_list<uint16>[num_levels]>: T frames, each the tokens of all levels 0..num_levels-1 "
             "(frame-major); as numpy: flatten twice -> reshape(T, num_levels) -> .T gives [num_levels, T]",
    "weights_sha256": "string: sha256 of the weights file that produced the codes",
    "mimistack_version": "string: the mimistack version that wrote the row",
}


class CorpusError(ValueError):
    """Inputs, output folders or corpus files that cannot be used (with what is wrong and what to do)."""


# -- inputs -------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CorpusInput:
    """One file to tokenize: its id in the corpus and where the audio is."""

    id: str
    path: str


def collect_inputs(specs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[CorpusInput]:
    """Resolve INPUT arguments to an ordered list of files with unique ids.

    Each spec is a folder (searched recursively for `AUDIO_SUFFIXES`; id = path relative to it, no suffix), a glob
    (`"data/**/*.flac"`; id = path relative to the glob's fixed leading folders, no suffix), a manifest (`.csv`,
    `.jsonl` or `.parquet` with a `path` column and an optional `id` column; relative paths are relative to the
    manifest) or one audio file (id = its name without suffix).
    """
    items: list[CorpusInput] = []
    for spec in [specs] if isinstance(specs, (str, os.PathLike)) else list(specs):
        items.extend(_collect_one(os.fspath(spec)))
    if not items:
        raise CorpusError(f"no input files found in {', '.join(map(str, _as_list(specs)))}")
    seen: dict[str, str] = {}
    duplicates = []
    for item in items:
        if not item.id:
            raise CorpusError(f"{item.path}: empty id")
        if "\n" in item.id or "\r" in item.id:
            raise CorpusError(f"id {item.id!r} holds a line break")
        if item.id in seen:
            duplicates.append(f"{item.id!r} ({seen[item.id]} and {item.path})")
        seen[item.id] = item.path
    if duplicates:
        raise CorpusError(f"{len(duplicates)} duplicate id(s), e.g. {'; '.join(duplicates[:3])}; ids must be "
                          "unique: give them in a manifest's 'id' column")
    return items


def _as_list(specs: Any) -> list[Any]:
    return [specs] if isinstance(specs, (str, os.PathLike)) else list(specs)


def _strip_suffix(relative: str) -> str:
    root, suffix = os.path.splitext(relative)
    return root if suffix else relative


def _collect_one(spec: str) -> list[CorpusInput]:
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        return [CorpusInput(_strip_suffix(p.relative_to(path).as_posix()), os.path.abspath(p)) for p in files]
    if path.is_file():
        if path.suffix.lower() in MANIFEST_SUFFIXES:
            return _read_manifest(path)
        return [CorpusInput(_strip_suffix(path.name), os.path.abspath(path))]
    if globbing.has_magic(spec):
        root = _glob_root(spec)
        files = sorted(Path(p) for p in globbing.glob(os.path.expanduser(spec), recursive=True) if Path(p).is_file())
        if not files:
            raise CorpusError(f"input not found: the glob {spec} matches no file")
        return [CorpusInput(_strip_suffix(Path(os.path.relpath(p, root)).as_posix()), os.path.abspath(p))
                for p in files]
    raise CorpusError(f"input not found: {spec} is not a folder, a file or a glob that matches anything")


def _glob_root(pattern: str) -> str:
    parts = Path(os.path.expanduser(pattern)).parts
    fixed = []
    for part in parts[:-1]:
        if globbing.has_magic(part):
            break
        fixed.append(part)
    return str(Path(*fixed)) if fixed else "."


def _read_manifest(path: Path) -> list[CorpusInput]:
    suffix = path.suffix.lower()
    rows: list[dict[str, Any]]
    if suffix == ".csv":
        import csv

        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    elif suffix == ".jsonl":
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise CorpusError(f"{path}:{number}: not JSON ({error.msg})") from None
                if not isinstance(row, dict):
                    raise CorpusError(f"{path}:{number}: each line must be a JSON object with a 'path'")
                rows.append(row)
    else:
        pq = _import_pyarrow_parquet()
        table = pq.read_table(path)
        if "path" not in table.column_names:
            raise CorpusError(f"{path}: the manifest has no 'path' column (columns: {', '.join(table.column_names)})")
        rows = table.select([c for c in ("path", "id") if c in table.column_names]).to_pylist()
    items = []
    for number, row in enumerate(rows, 1):
        value = row.get("path")
        if not value:
            raise CorpusError(f"{path}: row {number} has no 'path' (a manifest needs a 'path' column)")
        text = str(value)
        file = Path(text).expanduser()
        absolute = file if file.is_absolute() else path.parent / file
        identifier = row.get("id")
        items.append(CorpusInput(str(identifier) if identifier not in (None, "") else _strip_suffix(text),
                                 os.path.abspath(absolute)))
    return items


# -- the output folder --------------------------------------------------------------------------------------
def _import_pyarrow() -> Any:
    try:
        import pyarrow
    except ImportError as error:
        raise CorpusError("corpus files need pyarrow: pip install 'mimistack[corpus]'") from error
    return pyarrow


def _import_pyarrow_parquet() -> Any:
    _import_pyarrow()
    import pyarrow.parquet as pq

    return pq


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # the [data] extra must be there too
    except ImportError as error:
        raise CorpusError("tokenize-corpus needs Ray Data: pip install 'mimistack[corpus]' "
                          "(that is: pip install 'ray[data]' pyarrow)") from error
    return ray


def shard_name(unit: int) -> str:
    return f"part-{unit:06d}.parquet"


def _unit_of(name: str) -> int | None:
    if name.startswith("part-") and name.endswith(".parquet") and _TMP_MARK not in name:
        digits = name[len("part-"):-len(".parquet")]
        if digits.isdigit():
            return int(digits)
    return None


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be opened for fsync
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _temporary(target: Path) -> Path:
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}{_TMP_MARK}")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(name, 0o666 & ~umask)  # mkstemp makes 0600; outputs are ordinary files
    return Path(name)


def _durable_replace(tmp: Path, target: Path) -> None:
    with tmp.open("rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, target)
    _fsync_dir(target.parent)


def _write_table_atomic(table: pyarrow.Table, target: Path) -> None:
    pq = _import_pyarrow_parquet()
    tmp = _temporary(target)
    try:
        pq.write_table(table, tmp, compression="zstd")
        _durable_replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _write_text_atomic(target: Path, text: str) -> None:
    tmp = _temporary(target)
    try:
        tmp.write_text(text, encoding="utf-8")
        _durable_replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


class _FolderLock:
    """An exclusive advisory lock on OUT/.lock (released by the OS if the process dies, even by SIGKILL)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_FILE
        self.fd: int | None = None

    def __enter__(self) -> _FolderLock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock, documented
            return self
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise CorpusError(f"another tokenize-corpus run is writing to {self.path.parent}; wait for it to end "
                              "(or stop it) and run again") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _clean_temporaries(folder: Path) -> int:
    removed = 0
    for place in (folder, folder / SHARD_DIR):
        if place.is_dir():
            for entry in place.iterdir():
                if entry.is_file() and _TMP_MARK in entry.name:
                    entry.unlink()
                    removed += 1
    if removed:
        logger.info("removed %d temporary file(s) left by an interrupted run in %s", removed, folder)
    return removed


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Work units: unit u holds the files `items[u]` (a list of CorpusInput), in this order."""

    units: list[list[CorpusInput]]
    weights_sha256: str
    files_per_shard: int

    @property
    def num_files(self) -> int:
        return sum(len(unit) for unit in self.units)


def _read_plan(folder: Path) -> _Plan | None:
    path = folder / PLAN_FILE
    if not path.exists():
        return None
    pq = _import_pyarrow_parquet()
    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(SHARD_METADATA_KEY, b"{}"))
    if meta.get("format_version") != FORMAT_VERSION:
        raise CorpusError(f"{path}: plan format version {meta.get('format_version')!r} is not supported by "
                          f"mimistack {__version__} (expected {FORMAT_VERSION})")
    units: list[list[CorpusInput]] = []
    for unit, identifier, source in zip(table.column("unit").to_pylist(), table.column("id").to_pylist(),
                                        table.column("source_path").to_pylist()):
        while len(units) <= unit:
            units.append([])
        units[unit].append(CorpusInput(identifier, source))
    return _Plan(units, meta["weights_sha256"], int(meta["files_per_shard"]))


def _write_plan(folder: Path, plan: _Plan) -> None:
    pa = _import_pyarrow()
    units = [u for u, items in enumerate(plan.units) for _ in items]
    table = pa.table({"unit": pa.array(units, pa.int32()),
                      "id": [item.id for items in plan.units for item in items],
                      "source_path": [item.path for items in plan.units for item in items]})
    meta = {"format_version": FORMAT_VERSION, "weights_sha256": plan.weights_sha256,
            "files_per_shard": plan.files_per_shard}
    _write_table_atomic(table.replace_schema_metadata({SHARD_METADATA_KEY: json.dumps(meta)}), folder / PLAN_FILE)


def _extend_plan(existing: _Plan | None, inputs: list[CorpusInput], weights_sha256: str,
                 files_per_shard: int) -> tuple[_Plan, int]:
    """The plan with the inputs it does not hold yet appended as new units (planned units never change)."""
    if existing is not None and existing.weights_sha256 != weights_sha256:
        raise CorpusError(f"this folder holds codes from weights {existing.weights_sha256[:16]}…, not from "
                          f"{weights_sha256[:16]}…; write to a new folder (codes from different weights must not "
                          "be mixed)")
    planned = {item.id: item.path for unit in (existing.units if existing else []) for item in unit}
    conflicts = [f"{item.id!r}: {planned[item.id]} vs {item.path}" for item in inputs
                 if item.id in planned and planned[item.id] != item.path]
    if conflicts:
        raise CorpusError(f"{len(conflicts)} id(s) were planned from other files, e.g. {conflicts[0]}; ids must "
                          "keep their file across runs (write to a new folder)")
    new = [item for item in inputs if item.id not in planned]
    size = existing.files_per_shard if existing else files_per_shard
    units = list(existing.units) if existing else []
    units += [new[start:start + size] for start in range(0, len(new), size)]
    return _Plan(units, weights_sha256, size), len(new)


def _completed_units(folder: Path) -> set[int]:
    shards = folder / SHARD_DIR
    if not shards.is_dir():
        return set()
    return {unit for unit in (_unit_of(p.name) for p in shards.iterdir()) if unit is not None}


def _prepare_output(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise CorpusError(f"{folder} exists and is not a folder")
    if folder.is_dir() and not (folder / PLAN_FILE).exists():
        foreign = [p.name for p in folder.iterdir() if p.name not in (LOCK_FILE, SHARD_DIR)
                   and _TMP_MARK not in p.name]
        if foreign:
            raise CorpusError(f"{folder} exists and is not a tokenize-corpus output (it holds {foreign[0]}); "
                              "choose a new or empty folder")
    if not folder.parent.exists():
        raise CorpusError(f"output folder's parent {folder.parent} does not exist")
    (folder / SHARD_DIR).mkdir(parents=True, exist_ok=True)


# -- weights -----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _WeightsIdentity:
    sha256: str
    num_levels: int
    sample_rate: int
    frame_rate: float
    frame_size: int
    codebook_size: int


def _weights_identity(weights: str, revision: str | None, engine: str,
                      onnx_dir: str | None) -> _WeightsIdentity:
    """What every row records about the model, found without building it (the torch engine) or on CPU (ONNX)."""
    from .codec import RANDOM_WEIGHTS, Codec, random_weights_path

    if engine == "onnx":
        codec = Codec.load(weights, engine="onnx", onnx_dir=onnx_dir, revision=revision)
        config, sha256 = codec.config, codec.weights_sha256
    else:
        from safetensors import safe_open

        from .weights import file_sha256, infer_config, resolve_weights

        path = random_weights_path(weights) if weights in RANDOM_WEIGHTS else resolve_weights(weights, revision)
        with safe_open(str(path), framework="np") as handle:
            metadata = handle.metadata() or {}
        config, sha256 = infer_config({}, metadata), file_sha256(path)
    return _WeightsIdentity(sha256, config.num_levels, config.sample_rate, config.frame_rate, config.frame_size,
                            config.codebook_size)


# -- the Ray pipeline ---------------------------------------------------------------------------------------
def _decode_row(row: dict[str, Any]) -> dict[str, Any]:
    """CPU task: one file -> float32 pcm at 24 kHz as bytes, or the reason it cannot be used."""
    from .audio import load_audio

    out = {"unit": row["unit"], "position": row["position"], "id": row["id"], "path": row["path"],
           "pcm": b"", "num_samples": 0, "error": ""}
    try:
        pcm = load_audio(row["path"], sample_rate=row["sample_rate"])
        out["pcm"], out["num_samples"] = pcm.astype("<f4").tobytes(), int(pcm.shape[0])
    except Exception as error:  # any bad file becomes an error row, never a failed job
        out["error"] = _reason(error)
    return out


def _reason(error: BaseException) -> str:
    from .audio import AudioError

    return str(error) if isinstance(error, AudioError) else f"{type(error).__name__}: {error}"


def _duration_groups(lengths: Sequence[int], budget_samples: int) -> list[list[int]]:
    """Indices grouped so that each group's padded size (count x longest) stays within `budget_samples`; longest
    first so that similar lengths share a batch. A budget of 0 gives one file per group."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for index in order:
        if groups and budget_samples > 0 and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= budget_samples:
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


class _Encoder:
    """Ray actor: holds one Codec (loaded once per actor) and encodes batches of decoded files."""

    def __init__(self, weights: str, revision: str | None, engine: str, device: str, dtype: str,
                 onnx_dir: str | None, threads: int | None, batch_seconds: float, weights_sha256: str,
                 fast: bool = False) -> None:
        from .codec import Codec

        self.codec = Codec.load(weights, engine=engine, device=device, revision=revision, dtype=dtype,
                                onnx_dir=onnx_dir, num_threads=threads, fast=fast,
                                compile=fast and device.startswith("cuda"))
        if self.codec.weights_sha256 != weights_sha256:
            raise CorpusError(f"the encoder on this node loaded weights {self.codec.weights_sha256[:16]}…, the "
                              f"driver planned {weights_sha256[:16]}…; every node needs the same weights file")
        self.budget = round(batch_seconds * self.codec.sample_rate)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        count = len(batch["id"])
        errors = [str(e) for e in batch["error"]]
        codes: list[bytes] = [b""] * count
        frames = np.zeros(count, dtype=np.int32)
        good = [i for i in range(count) if not errors[i]]
        pcms = {i: np.frombuffer(batch["pcm"][i], dtype="<f4") for i in good}
        for group in _duration_groups([len(pcms[i]) for i in good], self.budget):
            members = [good[g] for g in group]
            for index, grid in self._encode(members, pcms, errors):
                codes[index] = grid.codes.astype("<u2").tobytes()
                frames[index] = grid.num_frames
        return {"unit": np.asarray(batch["unit"]), "position": np.asarray(batch["position"]),
                "id": np.asarray(batch["id"], dtype=object), "path": np.asarray(batch["path"], dtype=object),
                "num_samples": np.asarray(batch["num_samples"], dtype=np.int64), "num_frames": frames,
                "codes": np.asarray(codes, dtype=object),
                "error": np.asarray(errors, dtype=object)}

    def _encode(self, members: list[int], pcms: dict[int, np.ndarray],
                errors: list[str]) -> Iterator[tuple[int, TokenGrid]]:
        try:
            yield from zip(members, self.codec.encode_batch([pcms[i] for i in members]))
            return
        except Exception as error:  # retry one by one so that one bad file costs only itself
            if len(members) == 1:
                errors[members[0]] = f"encoding failed: {_reason(error)}"
                return
        for index in members:
            yield from self._encode([index], pcms, errors)


def _start_ray(ray: Any, address: str | None, num_cpus: int | None) -> bool:
    """Connect to `address`, or start a private local Ray (dashboard off, bound to 127.0.0.1); reuse one that the
    caller already started. Returns whether this call started it (and so must shut it down)."""
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False, configure_logging=False)
        return True
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports leave this machine
    cpus = num_cpus or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _node_ip_address="127.0.0.1")
    return True


def _pool_sizes(ray: Any, device: str, encoders: int | None, threads: int | None) -> tuple[int, dict[str, float]]:
    """How many encoder actors, and the resources each one holds."""
    resources = ray.cluster_resources()
    if device.startswith("cuda"):
        gpus = int(resources.get("GPU", 0))
        if gpus == 0:
            raise CorpusError("--device cuda, but the Ray cluster has no GPU")
        return encoders or gpus, {"num_gpus": 1, "num_cpus": 1}
    per_actor = threads or 1
    # On CPU, Ray Data fuses the decode step into the encoder actors (same resources): each actor decodes its own
    # files, no pcm crosses the object store, and one actor per CPU keeps every core busy.
    return encoders or max(1, int(resources.get("CPU", 1)) // per_actor), {"num_cpus": per_actor}


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
    manifest: dict[str, Any]

    @property
    def audio_seconds_per_second(self) -> float:
        return self.audio_seconds / self.elapsed_seconds if self.elapsed_seconds > 0 else 0.0


class _Progress:
    """Files, audio hours and throughput on stderr with rich (nothing when disabled or not a terminal)."""

    def __init__(self, enabled: bool, total_files: int, done_files: int) -> None:
        self.bar = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        console = Console(stderr=True)
        if not console.is_terminal:
            return
        self.bar = Progress(TextColumn("tokenizing"), BarColumn(), MofNCompleteColumn(), TextColumn("files"),
                            TextColumn("{task.fields[hours]:.2f} h audio, {task.fields[speed]:.0f} audio s/s"),
                            TimeRemainingColumn(), console=console)
        self.task = self.bar.add_task("tokenizing", total=total_files, completed=done_files, hours=0.0, speed=0.0)
        self.bar.start()

    def update(self, files: int, audio_seconds: float, elapsed: float) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=files, hours=audio_seconds / 3600,
                            speed=audio_seconds / max(elapsed, 1e-9))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def tokenize_corpus(inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], output: str | os.PathLike[str],
                    weights: str | os.PathLike[str] = "kyutai/mimi", *, revision: str | None = None,
                    engine: str = "torch", device: str = "cpu", dtype: str = "float32",
                    onnx_dir: str | os.PathLike[str] | None = None, address: str | None = None,
                    num_cpus: int | None = None, encoders: int | None = None, threads: int | None = None,
                    batch_seconds: float | None = None, files_per_shard: int = DEFAULT_FILES_PER_SHARD,
                    progress: bool = False, fast: bool = False) -> TokenizeResult:
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
    if fast and engine != "torch":
        raise CorpusError("fast=True is an option of the torch engine")
    folder = Path(output)
    weights = os.fspath(weights)
    if files_per_shard <= 0:
        raise CorpusError(f"files_per_shard must be positive, got {files_per_shard}")
    if batch_seconds is not None and batch_seconds < 0:
        raise CorpusError(f"batch_seconds must be >= 0, got {batch_seconds}")
    items = collect_inputs(inputs)
    identity = _weights_identity(weights, revision, engine, None if onnx_dir is None else os.fspath(onnx_dir))
    _prepare_output(folder)
    with _FolderLock(folder):
        _clean_temporaries(folder)
        plan, added = _extend_plan(_read_plan(folder), items, identity.sha256, files_per_shard)
        if added:
            _write_plan(folder, plan)
        done = _completed_units(folder)
        pending = [u for u in range(len(plan.units)) if u not in done]
        skipped = sum(len(plan.units[u]) for u in done if u < len(plan.units))
        logger.info("%s: %d files in %d units planned, %d units done before, %d to do", folder, plan.num_files,
                    len(plan.units), len(done), len(pending))
        counts = {"processed": 0, "rows": 0, "errors": 0, "seconds": 0.0}
        if pending:
            _run_pipeline(plan, pending, folder, identity, counts, skipped, weights=weights, revision=revision,
                          engine=engine, device=device, dtype=dtype,
                          onnx_dir=None if onnx_dir is None else os.fspath(onnx_dir), address=address,
                          num_cpus=num_cpus, encoders=encoders, threads=threads, batch_seconds=batch_seconds,
                          progress=progress, started=started, fast=fast)
        manifest = _write_summary(folder, plan, inputs, weights, identity,
                                  {"engine": engine, "device": device, "dtype": dtype, "fast": fast})
    elapsed = time.perf_counter() - started
    return TokenizeResult(folder, plan.num_files, skipped, int(counts["processed"]), int(counts["rows"]),
                          int(counts["errors"]), float(counts["seconds"]), elapsed, manifest)


def _run_pipeline(plan: _Plan, pending: list[int], folder: Path, identity: _WeightsIdentity, counts: dict[str, Any],
                  skipped: int, *, weights: str, revision: str | None, engine: str, device: str, dtype: str,
                  onnx_dir: str | None, address: str | None, num_cpus: int | None, encoders: int | None,
                  threads: int | None, batch_seconds: float | None, progress: bool, started: float,
                  fast: bool = False) -> None:
    ray = _import_ray()
    from .codec import RANDOM_WEIGHTS

    if weights in RANDOM_WEIGHTS and address:
        logger.warning("random weights on a cluster: every node writes its own cached copy (same seed, same file)")
    rows = [{"unit": u, "position": p, "id": item.id, "path": item.path, "sample_rate": identity.sample_rate}
            for u in pending for p, item in enumerate(plan.units[u])]
    with warnings.catch_warnings():
        # Ray Data warns about its own deprecated settings while copying its context: noise for our users.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray(\.|$)")
        _run_ray(ray, rows, plan, pending, folder, identity, counts, skipped, weights=weights, revision=revision,
                 engine=engine, device=device, dtype=dtype, onnx_dir=onnx_dir, address=address, num_cpus=num_cpus,
                 encoders=encoders, threads=threads, batch_seconds=batch_seconds, progress=progress,
                 started=started, fast=fast)


def _run_ray(ray: Any, rows: list[dict[str, Any]], plan: _Plan, pending: list[int], folder: Path,
             identity: _WeightsIdentity, counts: dict[str, Any], skipped: int, *, weights: str, revision: str | None,
             engine: str, device: str, dtype: str, onnx_dir: str | None, address: str | None, num_cpus: int | None,
             encoders: int | None, threads: int | None, batch_seconds: float | None, progress: bool,
             started: float, fast: bool = False) -> None:
    owns_ray = _start_ray(ray, address, num_cpus)
    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars
    context.enable_progress_bars = False  # ours shows files, hours and throughput; Ray's would fight it
    bar = _Progress(progress, plan.num_files, skipped)
    batches = None
    try:
        gpu = device.startswith("cuda")
        size, resources = _pool_sizes(ray, device, encoders, threads)
        seconds = batch_seconds if batch_seconds is not None else (DEFAULT_GPU_BATCH_SECONDS if gpu else 0.0)
        blocks = max(1, min(len(rows), max(size * 4, len(rows) // 16)))
        dataset = (ray.data.from_items(rows, override_num_blocks=blocks)
                   .map(_decode_row, num_cpus=1)
                   .map_batches(_Encoder, batch_size=256 if gpu else 16, batch_format="numpy",
                                compute=ray.data.ActorPoolStrategy(size=size),
                                fn_constructor_kwargs={"weights": weights, "revision": revision, "engine": engine,
                                                       "device": device, "dtype": dtype, "onnx_dir": onnx_dir,
                                                       "threads": None if gpu else resources["num_cpus"],
                                                       "batch_seconds": seconds,
                                                       "weights_sha256": identity.sha256, "fast": fast},
                                **resources))
        waiting: dict[int, dict[int, dict[str, Any]]] = {u: {} for u in pending}
        batches = dataset.iter_batches(batch_size=None, batch_format="numpy")
        for batch in batches:
            advanced, audio = 0, 0.0
            for index in range(len(batch["id"])):
                row = {key: batch[key][index] for key in batch}
                unit = int(row["unit"])
                waiting[unit][int(row["position"])] = row
                advanced += 1
                if not row["error"]:
                    audio += int(row["num_samples"]) / identity.sample_rate
                if len(waiting[unit]) == len(plan.units[unit]):
                    written, failed = _commit_unit(folder, unit, waiting.pop(unit), plan, identity)
                    counts["rows"] += written
                    counts["errors"] += failed
            counts["processed"] += advanced
            counts["seconds"] += audio
            bar.update(advanced, audio, time.perf_counter() - started)
        if waiting:
            raise CorpusError(f"the pipeline ended with {len(waiting)} unit(s) incomplete (rows lost in Ray); "
                              "run again to redo them")
    finally:
        bar.close()
        close = getattr(batches, "close", None)
        if close is not None:
            close()
        context.enable_progress_bars = saved
        if owns_ray:
            ray.shutdown()


def _commit_unit(folder: Path, unit: int, rows: dict[int, dict[str, Any]], plan: _Plan,
                 identity: _WeightsIdentity) -> tuple[int, int]:
    """Write one unit's shard atomically (good rows in plan order; bad files in its footer). Returns counts."""
    pa = _import_pyarrow()
    ordered = [rows[p] for p in range(len(plan.units[unit]))]
    good = [r for r in ordered if not r["error"]]
    errors = [{"id": str(r["id"]), "path": str(r["path"]), "reason": str(r["error"])} for r in ordered if r["error"]]
    levels = identity.num_levels
    grids = [np.frombuffer(r["codes"], dtype="<u2").reshape(levels, int(r["num_frames"])) for r in good]
    frames = np.asarray([g.shape[1] for g in grids], dtype=np.int64)
    flat = np.concatenate([g.T.reshape(-1) for g in grids]) if grids else np.zeros(0, dtype=np.uint16)
    offsets = np.concatenate([[0], np.cumsum(frames)]).astype(np.int32)
    codes = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()),
                                     pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.uint16()), levels))
    samples = np.asarray([int(r["num_samples"]) for r in good], dtype=np.int64)
    table = pa.table({
        "id": pa.array([str(r["id"]) for r in good], pa.string()),
        "source_path": pa.array([str(r["path"]) for r in good], pa.string()),
        "duration_s": pa.array(samples / identity.sample_rate, pa.float64()),
        "num_samples": pa.array(samples, pa.int64()),
        "num_frames": pa.array(frames.astype(np.int32), pa.int32()),
        "codes": codes,
        "weights_sha256": pa.array([identity.sha256] * len(good), pa.string()),
        "mimistack_version": pa.array([__version__] * len(good), pa.string()),
    }, schema=_schema(levels))
    meta = {"format_version": FORMAT_VERSION, "unit": unit, "rows": len(good), "errors": errors,
            "audio_seconds": float(samples.sum() / identity.sample_rate), "num_levels": levels,
            "sample_rate": identity.sample_rate, "frame_rate": identity.frame_rate,
            "codebook_size": identity.codebook_size, "weights_sha256": identity.sha256,
            "codes_order": "frame-major"}
    table = table.replace_schema_metadata({SHARD_METADATA_KEY: json.dumps(meta)})
    _write_table_atomic(table, folder / SHARD_DIR / shard_name(unit))
    return len(good), len(errors)


def _schema(num_levels: int) -> pyarrow.Schema:
    pa = _import_pyarrow()
    return pa.schema([("id", pa.string()), ("source_path", pa.string()), ("duration_s", pa.float64()),
                      ("num_samples", pa.int64()), ("num_frames", pa.int32()),
                      ("codes", pa.list_(pa.list_(pa.uint16(), num_levels))), ("weights_sha256", pa.string()),
                      ("mimistack_version", pa.string())])


def _shard_meta(path: Path) -> dict[str, Any]:
    pq = _import_pyarrow_parquet()
    raw = (pq.read_schema(path).metadata or {}).get(SHARD_METADATA_KEY)
    if raw is None:
        raise CorpusError(f"{path}: not a mimistack corpus shard (no {SHARD_METADATA_KEY.decode()} metadata)")
    meta = json.loads(raw)
    if meta.get("format_version") != FORMAT_VERSION:
        raise CorpusError(f"{path}: shard format version {meta.get('format_version')!r} is not supported by "
                          f"mimistack {__version__} (expected {FORMAT_VERSION})")
    return meta


def _write_summary(folder: Path, plan: _Plan, inputs: Any, weights: str, identity: _WeightsIdentity,
                   engine: dict[str, Any]) -> dict[str, Any]:
    """Rewrite errors.jsonl and manifest.json from the shards on disk (so they are right after any crash)."""
    done = sorted(_completed_units(folder))
    shards, errors = [], []
    for unit in done:
        meta = _shard_meta(folder / SHARD_DIR / shard_name(unit))
        shards.append({"file": f"{SHARD_DIR}/{shard_name(unit)}", "unit": unit, "rows": meta["rows"],
                       "errors": len(meta["errors"]), "audio_seconds": round(meta["audio_seconds"], 3)})
        errors += [{**error, "unit": unit} for error in meta["errors"]]
    _write_text_atomic(folder / ERRORS_FILE, "".join(json.dumps(e) + "\n" for e in errors))
    files_done = sum(len(plan.units[u]) for u in done if u < len(plan.units))
    seconds = sum(s["audio_seconds"] for s in shards)
    manifest = {
        "format": "mimistack-corpus", "format_version": FORMAT_VERSION, "mimistack_version": __version__,
        "complete": files_done == plan.num_files,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": {"specs": [os.fspath(s) for s in _as_list(inputs)], "files": plan.num_files},
        "weights": {"source": weights, "sha256": identity.sha256},
        "model": {"num_levels": identity.num_levels, "codebook_size": identity.codebook_size,
                  "sample_rate": identity.sample_rate, "frame_rate": identity.frame_rate,
                  "frame_size": identity.frame_size},
        "last_run": engine,
        "counts": {"files": plan.num_files, "files_done": files_done, "rows": sum(s["rows"] for s in shards),
                   "errors": len(errors), "pending": plan.num_files - files_done, "shards": len(shards),
                   "units": len(plan.units)},
        "audio": {"seconds": round(seconds, 3), "hours": round(seconds / 3600, 6)},
        "schema": {"columns": COLUMNS, "codes_order": "frame-major", "byte_order": "little",
                   "shard_metadata_key": SHARD_METADATA_KEY.decode()},
        "errors_file": ERRORS_FILE,
        "shards": shards,
    }
    _write_text_atomic(folder / MANIFEST_FILE, json.dumps(manifest, indent=1) + "\n")
    return manifest


# -- reading back -------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CorpusRecord:
    """One utterance of a tokenized corpus. `grid.codes`: uint16 `[num_levels, T]`."""

    id: str
    source_path: str
    grid: TokenGrid

    @property
    def duration(self) -> float:
        return self.grid.duration


class Corpus:
    """A tokenize-corpus output folder, read shard by shard in unit order (bounded memory)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not (self.path / SHARD_DIR).is_dir():
            raise CorpusError(f"{self.path} is not a tokenize-corpus output (no {SHARD_DIR}/ folder)")
        manifest = self.path / MANIFEST_FILE
        self.manifest: dict[str, Any] = json.loads(manifest.read_text()) if manifest.exists() else {}
        self.shards = [self.path / SHARD_DIR / shard_name(u) for u in sorted(_completed_units(self.path))]

    def __len__(self) -> int:
        pq = _import_pyarrow_parquet()
        return sum(pq.ParquetFile(shard).metadata.num_rows for shard in self.shards)

    def __iter__(self) -> Iterator[CorpusRecord]:
        for shard in self.shards:
            yield from self._records(shard)

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def errors(self) -> list[dict[str, Any]]:
        """Files that could not be tokenized: dicts with id, path, reason, unit (from the shards themselves)."""
        return [{**error, "unit": meta["unit"]} for meta in map(_shard_meta, self.shards) for error in meta["errors"]]

    def _records(self, shard: Path) -> Iterator[CorpusRecord]:
        pq = _import_pyarrow_parquet()
        meta = _shard_meta(shard)
        table = pq.read_table(shard)
        levels = int(meta["num_levels"])
        for identifier, source, num_samples, codes in zip(
                table.column("id").to_pylist(), table.column("source_path").to_pylist(),
                table.column("num_samples").to_pylist(), _codes_arrays(table.column("codes"), levels)):
            grid = TokenGrid(codes=codes, num_samples=num_samples, sample_rate=meta["sample_rate"],
                             frame_rate=meta["frame_rate"], codebook_size=meta["codebook_size"],
                             weights_sha256=meta["weights_sha256"], metadata={"id": identifier,
                                                                              "source_path": source})
            yield CorpusRecord(identifier, source, grid)


def _codes_arrays(column: Any, levels: int) -> Iterator[np.ndarray]:
    """A `codes` column -> uint16 `[levels, T]` per row (zero-copy views, transposed from frame-major)."""
    array = column.combine_chunks()
    flat = array.flatten().flatten().to_numpy(zero_copy_only=False)
    offsets = array.offsets.to_numpy()
    offsets = offsets - offsets[0]
    for start, stop in itertools.pairwise(offsets):
        yield flat[start * levels:stop * levels].reshape(stop - start, levels).T


def open(path: str | os.PathLike[str]) -> Corpus:  # shadows the builtin on purpose, like gzip.open
    """Open a tokenize-corpus output folder: iterate it for `CorpusRecord`s (id, source_path, grid)."""
    return Corpus(path)


@dataclasses.dataclass(frozen=True)
class FlatExport:
    """Paths and sizes of a flat export (see `export_flat`)."""

    folder: Path
    tokens: Path
    index: Path
    ids: Path
    meta: Path
    num_utterances: int
    num_tokens: int
    levels: tuple[int, ...]


def export_flat(corpus: str | os.PathLike[str] | Corpus, destination: str | os.PathLike[str],
                levels: LevelsLike = "0-7", *, force: bool = False) -> FlatExport:
    """Write a corpus as flat arrays for language-model training, into the folder `destination`.

    `tokens.bin`: uint16 little-endian, utterances one after another in corpus order, each frame-major with the
    chosen levels interleaved (frame 0 levels l0 l1 ..., frame 1 ...). `index.npy`: int64 `[num_utterances + 1]`
    offsets into tokens.bin in tokens (utterance u is `tokens[index[u]:index[u+1]]`, reshape to
    `[T, len(levels)]`). `ids.txt`: one id per line, in the same order. `meta.json`: dtype, byte order, order,
    levels and model facts. Written into a temporary folder renamed into place; refuses to overwrite unless
    `force`.
    """
    source = corpus if isinstance(corpus, Corpus) else Corpus(corpus)
    target = Path(destination)
    if target.exists() and not force:
        raise FileExistsError(f"{target} exists; pass force=True (--force) to replace it")
    if not target.parent.exists():
        raise CorpusError(f"output folder's parent {target.parent} does not exist")
    num_levels = int(source.manifest.get("model", {}).get("num_levels", 32))
    selected = Levels.parse(levels, num_levels)
    if not len(selected):
        raise CorpusError("choose at least one level to export")
    rows = list(selected)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}{_TMP_MARK}"))
    try:
        offsets = [0]
        ids: list[str] = []
        facts: dict[str, Any] = {}
        with (work / "tokens.bin").open("wb") as handle:
            for record in source:
                block = np.ascontiguousarray(record.grid.codes[rows].T, dtype="<u2")
                handle.write(block.tobytes())
                offsets.append(offsets[-1] + block.size)
                ids.append(record.id)
                facts = {"sample_rate": record.grid.sample_rate, "frame_rate": record.grid.frame_rate,
                         "codebook_size": record.grid.codebook_size, "weights_sha256": record.grid.weights_sha256}
            handle.flush()
            os.fsync(handle.fileno())
        np.save(work / "index.npy", np.asarray(offsets, dtype=np.int64))
        (work / "ids.txt").write_text("".join(f"{i}\n" for i in ids), encoding="utf-8")
        meta = {"format": "mimistack-flat", "format_version": FORMAT_VERSION, "dtype": "uint16",
                "byte_order": "little", "order": "frame-major, levels interleaved: utterance u frame t level "
                "levels[j] is tokens[index[u] + t * len(levels) + j]", "levels": rows,
                "num_utterances": len(ids), "num_tokens": offsets[-1], "source": str(source.path),
                "mimistack_version": __version__, **facts}
        (work / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(work, target)
    finally:
        if work.exists():
            shutil.rmtree(work)
    return FlatExport(target, target / "tokens.bin", target / "index.npy", target / "ids.txt", target / "meta.json",
                      len(ids), offsets[-1], tuple(rows))


def iter_flat(destination: str | os.PathLike[str]) -> Iterator[tuple[str, np.ndarray]]:
    """Read a flat export back: (id, uint16 `[len(levels), T]`) per utterance, through a read-only memmap."""
    folder = Path(destination)
    meta = json.loads((folder / "meta.json").read_text())
    count = len(meta["levels"])
    tokens = np.memmap(folder / "tokens.bin", dtype="<u2", mode="r") if meta["num_tokens"] else np.zeros(0, "<u2")
    offsets = np.load(folder / "index.npy")
    ids = (folder / "ids.txt").read_text(encoding="utf-8").splitlines()
    for u, identifier in enumerate(ids):
        yield identifier, tokens[offsets[u]:offsets[u + 1]].reshape(-1, count).T
