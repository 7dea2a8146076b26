"""Corpus tokenization at scale: audio collections -> Parquet shards of Mimi token grids, in this process or on Ray
Data; read back.

Top layer ("scale"): sits on `codec` (one `Codec` per runner or encoder actor), `audio` (`load_audio`, and
`AUDIO_SUFFIXES` for folder scans), `tokens` (`TokenGrid` when reading back), `weights` (the sha256 that every row
carries) and `_files` (every write); driven by `cli.corpus` (`mimistack tokenize-corpus`, `mimistack
corpus-export`). The output layout, Parquet schema, resume rules and the flat export format are specified in
`docs/corpus.md`.

    result = tokenize_corpus(["audio/"], "tokens/", weights="kyutai/mimi")    # this process, resumable
    for record in open("tokens/"):                                           # CorpusRecord: id, grid, ...
        record.grid.codes                                                    # uint16 [32, T]
    export_flat("tokens/", "flat/", levels="0-7")                            # uint16 .bin + offsets for LM training

Why it is resumable by construction: the input list is turned once into a **plan** of numbered work units (a fixed
set of files each, `plan.parquet`, written atomically and only ever extended). Each unit becomes exactly one shard
file, `shards/part-NNNNNN.parquet`, written to a temporary name, fsynced and renamed into place; that rename is the
only record that a unit is done (its bad files travel inside the same file, in the footer metadata). A rerun skips
units whose shard exists and redoes the others whole, so a run killed at any instant loses nothing and duplicates
nothing. A lock file keeps two runs from writing one folder; temporary files left by a killed run are removed.

Who executes the units is a runner, and only that differs between a run here and one on a cluster: `local` (the
default without a Ray address: one process, one Codec on every CPU, decoding overlapped with encoding) or
`raydata` (Ray Data's CPU tasks and encoder actors). Both hand their rows to the same sink, so shards, manifest,
errors table and resume are the same.

Modules, bottom to top: `errors` (`CorpusError`, optional imports), `inputs` (INPUT arguments -> files), `layout`
(the folder: names, plan, lock, manifest), `shards` (writing one unit), `workers` (decoding and encoding files:
shared by both runners, plus the Ray task and actor), `progress`, `units` (the work, the sink, `Runner`), `local`
and `raydata` (the runners), `pipeline` (`tokenize_corpus`), `reader` (`open`, `Corpus`) and `flat` (the export).
"""

from __future__ import annotations

from ..audio import AUDIO_SUFFIXES
from .errors import CorpusError
from .flat import FlatExport, export_flat, iter_flat
from .inputs import CorpusInput, collect_inputs
from .layout import FORMAT_VERSION
from .pipeline import TokenizeResult, tokenize_corpus
from .reader import Corpus, CorpusRecord, open

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
