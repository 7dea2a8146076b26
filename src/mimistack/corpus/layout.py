"""A tokenize-corpus output folder and the bookkeeping that makes a run resumable (spec: `docs/corpus.md`).

Sits on `errors`, `inputs` (`CorpusInput`) and `_files` (atomic writes, `TMP_MARK`); used by `shards` (names and
footer key), `units` and `pipeline` (plans, locks, the summary), `reader` (finding the finished shards, the
manifest) and `flat` (`FORMAT_VERSION`).

    OUT/plan.parquet            the numbered work units (written once, only ever extended)
    OUT/shards/part-NNNNNN.parquet   one per finished unit: its existence is the only record that it is done
    OUT/manifest.json, errors.jsonl  rewritten from the shards at the end of every run
    OUT/.lock                   an advisory lock: one run per folder

Temporary files (`.NAME.tmp-XXXX`, from `mimistack._files`) left by a killed run are removed when a run starts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import TypedDict

from .._files import TMP_MARK, atomic_path, write_text
from .._version import __version__
from .errors import CorpusError, require_parquet, require_pyarrow
from .inputs import CorpusInput, InputSpecs, as_list

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
PLAN_FILE = "plan.parquet"
MANIFEST_FILE = "manifest.json"
ERRORS_FILE = "errors.jsonl"
LOCK_FILE = ".lock"
SHARD_DIR = "shards"
SHARD_METADATA_KEY = b"mimistack.corpus"

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
"""The shard schema, column by column, as manifest.json documents it."""


class FailedFile(TypedDict):
    """A file that could not be tokenized, as a shard's footer lists it."""

    id: str
    path: str
    reason: str


class FileError(FailedFile):
    """A failed file with the unit it belongs to, as errors.jsonl lists it."""

    unit: int


class ShardMeta(TypedDict):
    """A shard's footer (Parquet key-value metadata under `SHARD_METADATA_KEY`, as JSON)."""

    format_version: int
    unit: int
    rows: int
    errors: list[FailedFile]
    audio_seconds: float
    num_levels: int
    sample_rate: int
    frame_rate: float
    codebook_size: int
    weights_sha256: str
    codes_order: str


class ShardEntry(TypedDict):
    file: str
    unit: int
    rows: int
    errors: int
    audio_seconds: float


class Counts(TypedDict):
    files: int
    files_done: int
    rows: int
    errors: int
    pending: int
    shards: int
    units: int


class Manifest(TypedDict, total=False):
    """manifest.json; a folder whose first run was killed has none yet (read back as {})."""

    format: str
    format_version: int
    mimistack_version: str
    complete: bool
    updated: str
    inputs: dict[str, object]
    weights: dict[str, str]
    model: dict[str, int | float]
    last_run: dict[str, object]
    counts: Counts
    audio: dict[str, float]
    schema: dict[str, object]
    errors_file: str
    shards: list[ShardEntry]
    precision: dict[str, object]


@dataclasses.dataclass(frozen=True)
class WeightsIdentity:
    """What every row and the manifest record about the model that made the codes."""

    sha256: str
    num_levels: int
    sample_rate: int
    frame_rate: float
    frame_size: int
    codebook_size: int


def shard_name(unit: int) -> str:
    return f"part-{unit:06d}.parquet"


def _unit_of(name: str) -> int | None:
    if name.startswith("part-") and name.endswith(".parquet") and TMP_MARK not in name:
        digits = name[len("part-") : -len(".parquet")]
        if digits.isdigit():
            return int(digits)
    return None


class FolderLock:
    """An exclusive advisory lock on OUT/.lock (released by the OS if the process dies, even by SIGKILL)."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_FILE
        self.fd: int | None = None

    def __enter__(self) -> FolderLock:
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
            raise CorpusError(
                f"another tokenize-corpus run is writing to {self.path.parent}; wait for it to end "
                "(or stop it) and run again"
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def clean_temporaries(folder: Path) -> int:
    """Remove what a killed run was writing (never a finished shard: those have no `TMP_MARK`)."""
    removed = 0
    for place in (folder, folder / SHARD_DIR):
        if place.is_dir():
            for entry in place.iterdir():
                if entry.is_file() and TMP_MARK in entry.name:
                    entry.unlink()
                    removed += 1
    if removed:
        logger.info("removed %d temporary file(s) left by an interrupted run in %s", removed, folder)
    return removed


def prepare_output(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise CorpusError(f"{folder} exists and is not a folder")
    if folder.is_dir() and not (folder / PLAN_FILE).exists():
        foreign = [p.name for p in folder.iterdir() if p.name not in (LOCK_FILE, SHARD_DIR) and TMP_MARK not in p.name]
        if foreign:
            raise CorpusError(
                f"{folder} exists and is not a tokenize-corpus output (it holds {foreign[0]}); "
                "choose a new or empty folder"
            )
    if not folder.parent.exists():
        raise CorpusError(f"output folder's parent {folder.parent} does not exist")
    (folder / SHARD_DIR).mkdir(parents=True, exist_ok=True)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Work units: unit u holds the files `units[u]`, in this order."""

    units: list[list[CorpusInput]]
    weights_sha256: str
    files_per_shard: int
    codes: dict[str, object] | None = None
    """What the codes are computed in ({"engine", "dtype", "fast"}); None in plans written before it was recorded."""

    @property
    def num_files(self) -> int:
        return sum(len(unit) for unit in self.units)


def read_plan(folder: Path) -> Plan | None:
    path = folder / PLAN_FILE
    if not path.exists():
        return None
    table = require_parquet().read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(SHARD_METADATA_KEY, b"{}"))
    if meta.get("format_version") != FORMAT_VERSION:
        raise CorpusError(
            f"{path}: plan format version {meta.get('format_version')!r} is not supported by "
            f"mimistack {__version__} (expected {FORMAT_VERSION})"
        )
    units: list[list[CorpusInput]] = []
    unit_numbers: list[int] = table.column("unit").to_pylist()
    identifiers: list[str] = table.column("id").to_pylist()
    sources: list[str] = table.column("source_path").to_pylist()
    for unit, identifier, source in zip(unit_numbers, identifiers, sources):
        while len(units) <= unit:
            units.append([])
        units[unit].append(CorpusInput(identifier, source))
    return Plan(units, meta["weights_sha256"], int(meta["files_per_shard"]), meta.get("codes"))


def write_plan(folder: Path, plan: Plan) -> None:
    pa = require_pyarrow()
    units = [u for u, items in enumerate(plan.units) for _ in items]
    table = pa.table(
        {
            "unit": pa.array(units, pa.int32()),
            "id": [item.id for items in plan.units for item in items],
            "source_path": [item.path for items in plan.units for item in items],
        }
    )
    meta = {
        "format_version": FORMAT_VERSION,
        "weights_sha256": plan.weights_sha256,
        "files_per_shard": plan.files_per_shard,
    }
    if plan.codes is not None:
        meta["codes"] = plan.codes
    write_table(table.replace_schema_metadata({SHARD_METADATA_KEY: json.dumps(meta)}), folder / PLAN_FILE)


def write_table(table: object, target: Path) -> None:
    """A Parquet file written atomically, replacing an older version (a plan being extended, a unit redone)."""
    with atomic_path(target, force=True) as tmp:
        require_parquet().write_table(table, tmp, compression="zstd")


def extend_plan(
    existing: Plan | None,
    inputs: list[CorpusInput],
    weights_sha256: str,
    files_per_shard: int,
    codes: dict[str, object] | None = None,
) -> tuple[Plan, int]:
    """The plan with the inputs it does not hold yet appended as new units (planned units never change). `codes`:
    the engine, dtype and fast path of this run; a folder planned with others is refused (as other weights are)."""
    if existing is not None and existing.weights_sha256 != weights_sha256:
        raise CorpusError(
            f"this folder holds codes from weights {existing.weights_sha256[:16]}…, not from "
            f"{weights_sha256[:16]}…; write to a new folder (codes from different weights must not be mixed)"
        )
    if existing is not None and existing.codes is not None and codes is not None and existing.codes != codes:
        before = ", ".join(f"{k}={v}" for k, v in existing.codes.items())
        asked = ", ".join(f"{k}={v}" for k, v in codes.items())
        raise CorpusError(
            f"this folder holds codes computed with {before}, not {asked}; rerun with the same engine, "
            "--dtype and --fast, or write to a new folder (codes of different precisions must not be mixed)"
        )
    planned = {item.id: item.path for unit in (existing.units if existing else []) for item in unit}
    conflicts = [
        f"{item.id!r}: {planned[item.id]} vs {item.path}"
        for item in inputs
        if item.id in planned and planned[item.id] != item.path
    ]
    if conflicts:
        raise CorpusError(
            f"{len(conflicts)} id(s) were planned from other files, e.g. {conflicts[0]}; ids must "
            "keep their file across runs (write to a new folder)"
        )
    new = [item for item in inputs if item.id not in planned]
    size = existing.files_per_shard if existing else files_per_shard
    units = list(existing.units) if existing else []
    units += [new[start : start + size] for start in range(0, len(new), size)]
    recorded = existing.codes if existing is not None and existing.codes is not None else codes
    return Plan(units, weights_sha256, size, recorded), len(new)


def completed_units(folder: Path) -> set[int]:
    shards = folder / SHARD_DIR
    if not shards.is_dir():
        return set()
    return {unit for unit in (_unit_of(p.name) for p in shards.iterdir()) if unit is not None}


def shard_meta(path: Path) -> ShardMeta:
    """A shard's footer: its unit, row and error counts, the files that failed, and the model facts."""
    raw = (require_parquet().read_schema(path).metadata or {}).get(SHARD_METADATA_KEY)
    if raw is None:
        raise CorpusError(f"{path}: not a mimistack corpus shard (no {SHARD_METADATA_KEY.decode()} metadata)")
    meta: ShardMeta = json.loads(raw)
    if meta.get("format_version") != FORMAT_VERSION:
        raise CorpusError(
            f"{path}: shard format version {meta.get('format_version')!r} is not supported by "
            f"mimistack {__version__} (expected {FORMAT_VERSION})"
        )
    return meta


def read_manifest(folder: Path) -> Manifest:
    """manifest.json as the last finished run wrote it ({} when there is none, or it cannot be read)."""
    try:
        manifest: Manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def write_summary(
    folder: Path,
    plan: Plan,
    inputs: InputSpecs,
    weights: str,
    identity: WeightsIdentity,
    engine: dict[str, object],
    precision: dict[str, object] | None = None,
) -> Manifest:
    """Rewrite errors.jsonl and manifest.json from the shards on disk (so they are right after any crash)."""
    done = sorted(completed_units(folder))
    shards: list[ShardEntry] = []
    errors: list[FileError] = []
    for unit in done:
        meta = shard_meta(folder / SHARD_DIR / shard_name(unit))
        shards.append(
            ShardEntry(
                file=f"{SHARD_DIR}/{shard_name(unit)}",
                unit=unit,
                rows=meta["rows"],
                errors=len(meta["errors"]),
                audio_seconds=round(meta["audio_seconds"], 3),
            )
        )
        errors += [FileError(id=e["id"], path=e["path"], reason=e["reason"], unit=unit) for e in meta["errors"]]
    write_text(folder / ERRORS_FILE, "".join(json.dumps(e) + "\n" for e in errors), force=True)
    files_done = sum(len(plan.units[u]) for u in done if u < len(plan.units))
    seconds = sum(s["audio_seconds"] for s in shards)
    manifest: Manifest = {
        "format": "mimistack-corpus",
        "format_version": FORMAT_VERSION,
        "mimistack_version": __version__,
        "complete": files_done == plan.num_files,
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": {"specs": [os.fspath(s) for s in as_list(inputs)], "files": plan.num_files},
        "weights": {"source": weights, "sha256": identity.sha256},
        "model": {
            "num_levels": identity.num_levels,
            "codebook_size": identity.codebook_size,
            "sample_rate": identity.sample_rate,
            "frame_rate": identity.frame_rate,
            "frame_size": identity.frame_size,
        },
        "last_run": engine,
        "counts": {
            "files": plan.num_files,
            "files_done": files_done,
            "rows": sum(s["rows"] for s in shards),
            "errors": len(errors),
            "pending": plan.num_files - files_done,
            "shards": len(shards),
            "units": len(plan.units),
        },
        "audio": {"seconds": round(seconds, 3), "hours": round(seconds / 3600, 6)},
        "schema": {
            "columns": COLUMNS,
            "codes_order": "frame-major",
            "byte_order": "little",
            "shard_metadata_key": SHARD_METADATA_KEY.decode(),
        },
        "errors_file": ERRORS_FILE,
        "shards": shards,
    }
    if precision is not None:
        manifest["precision"] = precision
    write_text(folder / MANIFEST_FILE, json.dumps(manifest, indent=1) + "\n", force=True)
    return manifest
