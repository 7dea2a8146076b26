"""Audio inside containers: the members of WebDataset tar shards and the rows of Hugging Face `datasets`-style
Arrow/Parquet tables (an audio column of `{"bytes", "path"}` structs), listed for the plan and read back, one at a
time, for decoding.

A file inside a container is addressed by one string, its *source* (what the plan and the shards' `source_path`
column record):

    tar://MEMBER::/abs/shard-000.tar            a WebDataset member (fsspec's chained-URL form: fsspec opens it)
    parquet://COLUMN/ROW::/abs/train-0.parquet  row ROW (0-based, in the file) of the struct column COLUMN
    arrow://COLUMN/ROW::/abs/data-0.arrow       the same for an Arrow IPC file or stream (`Dataset.save_to_disk`)

Reading is by offset: a tar's member index and a table's row groups are cached per process (a few of each), so a
runner reading the members of one container in order reads each byte about once. Compressed tars (`.tar.gz` …)
have no offsets to seek to and are refused with what to do.

Sits on `errors` (`CorpusError`, pyarrow) and `audio` (`AUDIO_SUFFIXES`); used by `inputs` (listing) and `workers`
(reading, to decode).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import tarfile
import threading
from pathlib import Path
from typing import Any, Literal

from ..audio import AUDIO_SUFFIXES
from .errors import CorpusError, require_parquet, require_pyarrow

TableKind = Literal["parquet", "arrow"]
SCHEMES = ("tar", "parquet", "arrow")
TAR_SUFFIXES = (".tar",)
COMPRESSED_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar.zst", ".tzst")
TABLE_SUFFIXES: dict[str, TableKind] = {".parquet": "parquet", ".arrow": "arrow"}
_COMPRESSION_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
_CACHED_CONTAINERS = 4


@dataclasses.dataclass(frozen=True)
class Member:
    """One audio file inside a container: its id in the corpus and its source string."""

    id: str
    source: str


def is_member(source: str) -> bool:
    """Whether `source` addresses audio inside a container (else it is a plain file path)."""
    return _parse(source) is not None


def _parse(source: str) -> tuple[str, str, str] | None:
    """(scheme, inner part, container path) of a member's source, or None for a plain path."""
    scheme, separator, rest = source.partition("://")
    if not separator or scheme not in SCHEMES or "::" not in rest:
        return None
    inner, container = rest.rsplit("::", 1)
    return scheme, inner, container


def _strip_suffix(name: str) -> str:
    root, suffix = os.path.splitext(name)
    return root if suffix else name


# -- WebDataset tar shards --------------------------------------------------------------------------------------
def tar_source(archive: Path, member: str) -> str:
    return f"tar://{member}::{os.path.abspath(archive)}"


def refuse_compressed(path: Path) -> None:
    """A compressed tar cannot be read by offset: say so, and how to fix it."""
    with path.open("rb") as handle:
        head = handle.read(6)
    kind = next((name for magic, name in _COMPRESSION_MAGIC.items() if head.startswith(magic)), None)
    if kind is not None or path.name.lower().endswith(COMPRESSED_TAR_SUFFIXES):
        raise CorpusError(
            f"{path}: a {kind or 'compressed'} tar; WebDataset shards are read by offset, which needs an "
            "uncompressed .tar (audio is compressed already): decompress it first, e.g. gunzip or zstd -d"
        )


def _tar_index(path: Path) -> dict[str, tuple[int, int]]:
    """member name -> (offset of its data, size), for the regular files of an uncompressed tar."""
    refuse_compressed(path)
    try:
        with tarfile.open(path, mode="r:") as archive:
            return {m.name: (m.offset_data, m.size) for m in archive.getmembers() if m.isfile()}
    except tarfile.TarError as error:
        raise CorpusError(f"{path}: not a readable tar file ({error})") from None


def list_tar(path: Path) -> list[Member]:
    """The samples of a WebDataset shard that hold audio: id = the sample key (the member's name up to the first
    dot of its file name, WebDataset's rule), source = its audio member (the one whose suffix is an audio one).
    Members that are not audio (.json, .txt, .cls …) are not picked up; a sample with two audio members is
    refused, naming them."""
    found: dict[str, list[str]] = {}
    for name in _cached_tar_index(path):
        folder, _, base = name.rpartition("/")
        if base.startswith(".") or Path(base).suffix.lower() not in AUDIO_SUFFIXES:
            continue
        key = f"{folder}/{base.split('.', 1)[0]}" if folder else base.split(".", 1)[0]
        found.setdefault(key, []).append(name)
    several = {key: names for key, names in found.items() if len(names) > 1}
    if several:
        key, names = next(iter(several.items()))
        raise CorpusError(
            f"{path}: {len(several)} sample(s) hold more than one audio member, e.g. {key!r}: {', '.join(names)}; "
            "give each sample one audio member (or list the files in a manifest)"
        )
    return [Member(key, tar_source(path, names[0])) for key, names in found.items()]


# -- Hugging Face datasets-style tables -------------------------------------------------------------------------
def table_source(kind: TableKind, path: Path, column: str, row: int) -> str:
    return f"{kind}://{column}/{row}::{os.path.abspath(path)}"


def _is_audio_struct(kind: Any) -> bool:
    pa = require_pyarrow()
    if not pa.types.is_struct(kind):
        return False
    fields = {kind.field(i).name: kind.field(i).type for i in range(kind.num_fields)}
    binary = fields.get("bytes")
    return binary is not None and (pa.types.is_binary(binary) or pa.types.is_large_binary(binary)) and "path" in fields


def audio_column(schema: Any, path: Path) -> str | None:
    """The table's audio column: the struct column with `bytes` and `path` fields (what `datasets.Audio` stores);
    with several, the one named "audio". None if it has none."""
    names = [field.name for field in schema if _is_audio_struct(field.type)]
    if len(names) > 1:
        if "audio" in names:
            return "audio"
        raise CorpusError(
            f"{path}: {len(names)} audio columns ({', '.join(names)}); keep one (or name it 'audio') to tokenize it"
        )
    return names[0] if names else None


def _read_arrow(path: Path) -> Any:
    """A whole Arrow IPC file or stream, memory-mapped (no copy of the audio bytes)."""
    pa = require_pyarrow()
    try:
        source = pa.memory_map(str(path))
        try:
            return pa.ipc.open_file(source).read_all()
        except pa.ArrowInvalid:
            source.seek(0)
            return pa.ipc.open_stream(source).read_all()
    except (pa.ArrowInvalid, OSError) as error:
        raise CorpusError(f"{path}: not a readable Arrow file ({error})") from None


def table_schema(path: Path, kind: TableKind) -> Any:
    pa = require_pyarrow()
    if kind == "arrow":
        return _cached_arrow(path).schema
    try:
        return require_parquet().read_schema(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise CorpusError(f"{path}: not a readable Parquet file ({error})") from None


def list_table(path: Path, kind: TableKind, column: str) -> list[Member]:
    """One member per row of the audio `column`: id = the `id` column when there is one, else the audio's `path`
    field without suffix, else `<file name without suffix>/<row>`."""
    schema = table_schema(path, kind)
    has_id = "id" in schema.names
    if kind == "parquet":
        wanted = (["id"] if has_id else []) + [f"{column}.path"]
        table = require_parquet().read_table(path, columns=wanted)
        ids = table.column("id").to_pylist() if has_id else [None] * table.num_rows
        paths = table.column(table.num_columns - 1).to_pylist()
    else:
        table = _cached_arrow(path)
        ids = table.column("id").to_pylist() if has_id else [None] * table.num_rows
        paths = table.column(column).combine_chunks().field("path").to_pylist()
    stem = _strip_suffix(path.name)
    members = []
    for row, (identifier, inner) in enumerate(zip(ids, paths)):
        if identifier not in (None, ""):
            name = str(identifier)
        elif inner:
            name = _strip_suffix(str(inner))
        else:
            name = f"{stem}/{row}"
        members.append(Member(name, table_source(kind, path, column, row)))
    return members


def saved_dataset_files(folder: Path) -> list[Path] | None:
    """The Arrow files of a `Dataset.save_to_disk` folder (state.json's `_data_files`, in order), or None when
    `folder` is not one."""
    state = folder / "state.json"
    if not state.is_file():
        return None
    try:
        files = [folder / entry["filename"] for entry in json.loads(state.read_text(encoding="utf-8"))["_data_files"]]
    except (ValueError, KeyError, TypeError):
        return None
    return files if files and all(f.suffix == ".arrow" and f.is_file() for f in files) else None


# -- reading one member -----------------------------------------------------------------------------------------
_lock = threading.Lock()
_tar_indices: collections.OrderedDict[tuple[str, int, int], dict[str, tuple[int, int]]] = collections.OrderedDict()
_arrow_tables: collections.OrderedDict[tuple[str, int, int], Any] = collections.OrderedDict()
_row_groups: collections.OrderedDict[tuple[str, int, int, str, int], Any] = collections.OrderedDict()
_parquet_offsets: collections.OrderedDict[tuple[str, int, int], list[int]] = collections.OrderedDict()


def _identity(path: Path) -> tuple[str, int, int]:
    status = path.stat()
    return str(path), status.st_mtime_ns, status.st_size


def _cached(cache: collections.OrderedDict[Any, Any], key: Any, make: Any, keep: int = _CACHED_CONTAINERS) -> Any:
    with _lock:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
    value = make()
    with _lock:
        cache[key] = value
        while len(cache) > keep:
            cache.popitem(last=False)
    return value


def _cached_tar_index(path: Path) -> dict[str, tuple[int, int]]:
    result: dict[str, tuple[int, int]] = _cached(_tar_indices, _identity(path), lambda: _tar_index(path))
    return result


def _cached_arrow(path: Path) -> Any:
    return _cached(_arrow_tables, _identity(path), lambda: _read_arrow(path))


def _parquet_row(path: Path, column: str, row: int) -> dict[str, Any]:
    identity = _identity(path)
    pq = require_parquet()

    def starts() -> list[int]:
        metadata = pq.ParquetFile(path).metadata
        offsets = [0]
        for group in range(metadata.num_row_groups):
            offsets.append(offsets[-1] + metadata.row_group(group).num_rows)
        return offsets

    offsets: list[int] = _cached(_parquet_offsets, identity, starts)
    if not 0 <= row < offsets[-1]:
        raise CorpusError(f"{path}: no row {row} (the file has {offsets[-1]} rows)")
    group = next(g for g in range(len(offsets) - 1) if offsets[g] <= row < offsets[g + 1])
    values = _cached(
        _row_groups,
        (*identity, column, group),
        lambda: pq.ParquetFile(path).read_row_group(group, columns=[column]).column(0).combine_chunks(),
        keep=2,
    )
    value: dict[str, Any] = values[row - offsets[group]].as_py()
    return value


def read_member(source: str) -> tuple[bytes, str]:
    """The bytes of the audio at `source`, and a name whose suffix says its format ("" when unknown). Raises
    `CorpusError` (a missing container or member, a row without audio) and `OSError`."""
    parsed = _parse(source)
    if parsed is None:
        raise CorpusError(f"{source}: not the source of a file inside a container")
    scheme, inner, container = parsed
    path = Path(container)
    if not path.is_file():
        raise CorpusError(f"{source}: the container {container} is not a file")
    if scheme == "tar":
        index = _cached_tar_index(path)
        if inner not in index:
            raise CorpusError(f"{source}: the tar has no member {inner!r}")
        offset, size = index[inner]
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read(size)
        if len(data) != size:
            raise CorpusError(f"{source}: the tar ends inside the member (truncated archive)")
        return data, inner
    column, _, number = inner.rpartition("/")
    if not number.isdigit():
        raise CorpusError(f"{source}: the row must be a number")
    row = int(number)
    if scheme == "parquet":
        value = _parquet_row(path, column, row)
    else:
        table = _cached_arrow(path)
        if not 0 <= row < table.num_rows:
            raise CorpusError(f"{path}: no row {row} (the file has {table.num_rows} rows)")
        value = table.column(column)[row].as_py()
    if value is None:
        raise CorpusError(f"{source}: the row's audio is null")
    name = str(value.get("path") or "")
    suffix = Path(name).suffix.lower()
    if value.get("bytes"):
        return bytes(value["bytes"]), name if suffix in AUDIO_SUFFIXES else ""
    if name:  # `datasets` stores local files as a path without bytes
        file = Path(name).expanduser()
        file = file if file.is_absolute() else path.parent / file
        if file.is_file():
            return file.read_bytes(), name
        raise CorpusError(f"{source}: the row has no audio bytes, and its path {name!r} is not a file")
    raise CorpusError(f"{source}: the row has neither audio bytes nor a path")
