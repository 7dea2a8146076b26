"""Which files a corpus is made of: INPUT arguments (folders, globs, manifests, single files) resolved to an ordered
list of `CorpusInput`s with unique ids.

Besides audio files, an INPUT can be a container of audio (`members`): a WebDataset `.tar` shard, a Hugging Face
`datasets`-style `.parquet` / `.arrow` table with an audio column, or a `Dataset.save_to_disk` folder. Each audio
inside becomes one `CorpusInput` whose `path` is the member's source string (`tar://MEMBER::ARCHIVE`, …).

Sits on `errors` (`CorpusError`, pyarrow for Parquet manifests), `members` (containers) and `audio`
(`AUDIO_SUFFIXES`, what a folder scan picks up); used by `layout` (the plan records inputs), `pipeline`
(`tokenize_corpus`) and the tests.
"""

from __future__ import annotations

import csv
import dataclasses
import glob as globbing
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..audio import AUDIO_SUFFIXES
from .errors import CorpusError, require_parquet
from .members import (
    COMPRESSED_TAR_SUFFIXES,
    TABLE_SUFFIXES,
    TAR_SUFFIXES,
    audio_column,
    list_table,
    list_tar,
    refuse_compressed,
    saved_dataset_files,
    table_schema,
)

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".parquet")

InputSpecs = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
"""One INPUT argument, or several."""


@dataclasses.dataclass(frozen=True)
class CorpusInput:
    """One file to tokenize: its id in the corpus and where the audio is."""

    id: str
    path: str
    """A file path, or the source string of audio inside a container (`members`)."""


def as_list(specs: InputSpecs) -> list[str | os.PathLike[str]]:
    return [specs] if isinstance(specs, str | os.PathLike) else list(specs)


def collect_inputs(specs: InputSpecs) -> list[CorpusInput]:
    """Resolve INPUT arguments to an ordered list of files with unique ids.

    Each spec is a folder (searched recursively for `mimistack.audio.AUDIO_SUFFIXES`; id = path relative to it, no
    suffix), a glob (`"data/**/*.flac"`; id = path relative to the glob's fixed leading folders, no suffix), a
    manifest (`.csv`, `.jsonl` or `.parquet` with a `path` column and an optional `id` column; relative paths are
    relative to the manifest), one audio file (id = its name without suffix), or a container: a WebDataset `.tar`
    shard (id = the sample key), a `.parquet` / `.arrow` table with a `datasets`-style audio column of
    `{"bytes", "path"}` structs (id = the `id` column, else the audio's path without suffix, else
    `<file>/<row>`) or a `Dataset.save_to_disk` folder. Globs expand the containers they match.
    """
    items: list[CorpusInput] = []
    for spec in as_list(specs):
        items.extend(_collect_one(os.fspath(spec)))
    if not items:
        raise CorpusError(f"no input files found in {', '.join(map(str, as_list(specs)))}")
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
        raise CorpusError(
            f"{len(duplicates)} duplicate id(s), e.g. {'; '.join(duplicates[:3])}; ids must be "
            "unique: give them in a manifest's 'id' column"
        )
    return items


def _strip_suffix(relative: str) -> str:
    root, suffix = os.path.splitext(relative)
    return root if suffix else relative


def _collect_one(spec: str) -> list[CorpusInput]:
    path = Path(spec).expanduser()
    if path.is_dir():
        saved = saved_dataset_files(path)
        if saved is not None:
            return [item for file in saved for item in _table_inputs(file, required=True) or []]
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
        return [CorpusInput(_strip_suffix(p.relative_to(path).as_posix()), os.path.abspath(p)) for p in files]
    if path.is_file():
        contained = _container_inputs(path)
        if contained is not None:
            return contained
        if path.suffix.lower() in MANIFEST_SUFFIXES:
            return _read_manifest(path)
        return [CorpusInput(_strip_suffix(path.name), os.path.abspath(path))]
    if globbing.has_magic(spec):
        root = _glob_root(spec)
        files = sorted(Path(p) for p in globbing.glob(os.path.expanduser(spec), recursive=True) if Path(p).is_file())
        if not files:
            raise CorpusError(f"input not found: the glob {spec} matches no file")
        items: list[CorpusInput] = []
        for file in files:
            contained = _container_inputs(file)
            if contained is not None:
                items += contained
            else:
                items.append(
                    CorpusInput(_strip_suffix(Path(os.path.relpath(file, root)).as_posix()), os.path.abspath(file))
                )
        return items
    raise CorpusError(f"input not found: {spec} is not a folder, a file or a glob that matches anything")


def _container_inputs(path: Path) -> list[CorpusInput] | None:
    """The audio inside `path` if it is a container (a tar, or a table with an audio column), else None."""
    name = path.name.lower()
    if name.endswith(COMPRESSED_TAR_SUFFIXES):
        refuse_compressed(path)
    if name.endswith(TAR_SUFFIXES):
        return [CorpusInput(m.id, m.source) for m in list_tar(path)]
    if path.suffix.lower() in TABLE_SUFFIXES:
        return _table_inputs(path, required=path.suffix.lower() == ".arrow")
    return None


def _table_inputs(path: Path, required: bool) -> list[CorpusInput] | None:
    kind = TABLE_SUFFIXES[path.suffix.lower()]
    schema = table_schema(path, kind)
    column = audio_column(schema, path)
    if column is None:
        if required:
            raise CorpusError(
                f"{path}: no audio column (a struct column with 'bytes' and 'path' fields, as Hugging Face "
                f"datasets' Audio feature stores; columns: {', '.join(schema.names)})"
            )
        return None
    return [CorpusInput(m.id, m.source) for m in list_table(path, kind, column)]


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
    rows: list[Mapping[str, object]]
    if suffix == ".csv":
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
        table = require_parquet().read_table(path)
        columns: list[str] = table.column_names
        if "path" not in columns:
            raise CorpusError(
                f"{path}: neither a manifest (no 'path' column) nor an audio table (no struct column with "
                f"'bytes' and 'path' fields, as Hugging Face datasets' Audio feature stores); columns: "
                f"{', '.join(columns)}"
            )
        rows = table.select([c for c in ("path", "id") if c in columns]).to_pylist()
    items = []
    for number, row in enumerate(rows, 1):
        value = row.get("path")
        if not value:
            raise CorpusError(f"{path}: row {number} has no 'path' (a manifest needs a 'path' column)")
        text = str(value)
        file = Path(text).expanduser()
        absolute = file if file.is_absolute() else path.parent / file
        identifier = row.get("id")
        items.append(
            CorpusInput(
                str(identifier) if identifier not in (None, "") else _strip_suffix(text), os.path.abspath(absolute)
            )
        )
    return items
