"""What every runner of a tokenize-corpus job shares: the work it is given (`Work`: the pending units of a plan and
how to encode them), where its encoded rows go (`UnitSink`: each unit written as one shard as soon as all of its
files are back, counts, the progress bar), and what a runner is (`Runner`).

A runner only decides *how* the files of the pending units are decoded and encoded: `local.LocalRunner` in this
process, `raydata.RayRunner` on Ray Data. Everything that makes a run resumable and its output the same either way
(the plan, the unit -> shard mapping, the shard write, the summary) is outside the runners.

Sits on `layout` (`Plan`, `WeightsIdentity`), `shards` (`EncodedRow`, `write_shard`), `progress` and `workers`
(`FileRow`); used by `local`, `raydata` and `pipeline`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Protocol

from ..engine.options import EngineOptions
from ..weights import WeightsRef
from .errors import CorpusError
from .layout import Plan, WeightsIdentity
from .progress import TokenizeProgress
from .shards import EncodedRow, write_shard
from .workers import FileRow

DEFAULT_GPU_BATCH_SECONDS = 1280.0  # 128 utterances of 10 s: keeps an H100/H200 busy without running out of memory


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclasses.dataclass(frozen=True)
class Work:
    """The pending units of a plan, and the model and settings that encode them."""

    plan: Plan
    pending: list[int]
    identity: WeightsIdentity
    weights: str
    revision: str | None
    options: EngineOptions
    batch_seconds: float | None
    """Padded audio seconds per encode call; None: the device's default (`batch_seconds_for_device`)."""
    ref: WeightsRef | None = None
    """The weights as the plan resolved them (path and sha256), for an in-process runner: not hashed again."""

    @property
    def gpu(self) -> bool:
        return self.options.device.startswith("cuda")

    def batch_seconds_for_device(self) -> float:
        """`batch_seconds`, or its default: 0 (one file per call, exactly `Codec.encode`) on CPU, 1280 s on GPU."""
        if self.batch_seconds is not None:
            return self.batch_seconds
        return DEFAULT_GPU_BATCH_SECONDS if self.gpu else 0.0

    def rows(self) -> list[FileRow]:
        """Every file of the pending units, unit by unit in plan order."""
        rate = self.identity.sample_rate
        return [
            FileRow(unit=u, position=p, id=item.id, path=item.path, sample_rate=rate)
            for u in self.pending
            for p, item in enumerate(self.plan.units[u])
        ]


@dataclasses.dataclass
class Counts:
    """What a run did: files back from the encoders, rows and bad files written to shards, audio seconds."""

    processed: int = 0
    rows: int = 0
    errors: int = 0
    seconds: float = 0.0


class UnitSink:
    """Takes encoded rows in any order, files them under their units and writes each unit's shard the moment its
    last file is back (so a killed run keeps every finished unit). As a context manager it shows the progress bar.
    """

    def __init__(self, work: Work, folder: Path, progress: bool, skipped_files: int, started: float) -> None:
        self.work = work
        self.folder = folder
        self.counts = Counts()
        self.waiting: dict[int, dict[int, EncodedRow]] = {u: {} for u in work.pending}
        self.progress = progress
        self.skipped_files = skipped_files
        self.started = started
        self.bar: TokenizeProgress | None = None

    def __enter__(self) -> UnitSink:
        self.bar = TokenizeProgress(self.progress, self.work.plan.num_files, self.skipped_files)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def add(self, rows: Iterable[EncodedRow]) -> None:
        """File the rows under their units, write each unit that is now complete, advance the bar."""
        files, audio = 0, 0.0
        rate = self.work.identity.sample_rate
        for row in rows:
            unit = row["unit"]
            self.waiting[unit][row["position"]] = row
            files += 1
            if not row["error"]:
                audio += row["num_samples"] / rate
            size = len(self.work.plan.units[unit])
            if len(self.waiting[unit]) == size:
                finished = self.waiting.pop(unit)
                written, failed = write_shard(self.folder, unit, [finished[p] for p in range(size)], self.work.identity)
                self.counts.rows += written
                self.counts.errors += failed
        self.counts.processed += files
        self.counts.seconds += audio
        if self.bar is not None:
            self.bar.update(files, self.counts.seconds, time.perf_counter() - self.started)

    def check_complete(self, runner: str) -> None:
        """Raise if a unit is still waiting for rows once the runner is done (it lost some)."""
        if self.waiting:
            raise CorpusError(
                f"the {runner} runner ended with {len(self.waiting)} unit(s) incomplete (rows lost); "
                "run again to redo them"
            )


class Runner(Protocol):
    """Executes the pending units of `work`: decodes and encodes every file of `work.rows()` and hands each encoded
    row (good or bad, each exactly once) to `sink.add`, inside `with sink:`."""

    @property
    def name(self) -> str:
        """What the manifest's `last_run.runner` records: "local" or "ray"."""
        ...

    def execute(self, work: Work, sink: UnitSink) -> None: ...
