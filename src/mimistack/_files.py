"""Never half-written, never clobbered, and with the mode `open()` would give: the one writer every output shares.

Every file mimistack writes (audio, `.mimi`, reports, ONNX exports, corpus shards, checkpoints) is written to a
temporary name beside its target, fsynced, given the mode a plain `open()` would give it under the process umask
(0644 under umask 022: `mkstemp` alone makes 0600), then moved into place by `commit`, which refuses to replace an
existing file unless `force`. Folders that are published whole (an ONNX export, a flat corpus export) are built
in a staging folder and renamed by `publish_dir`.

- `atomic_write(target)`: a context manager yielding a binary (or text) handle;
- `atomic_path(target)`: yields a temporary path, for libraries that write by file name (soundfile, safetensors,
  pyarrow, onnx);
- `open_temporary` + `commit` + `discard`: for writers that stay open across calls (streamed audio, frame-major
  `.mimi`);
- `write_bytes` / `write_text`: one-shot helpers.

Sits at the bottom of the package (standard library only); used by `audio`, `tokens`/`mimifile`, `analysis`,
`corpus`, `export` and `testing`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, TextIO, overload

TMP_MARK = ".tmp-"  # temporary names are `.{target.name}.tmp-XXXX`: hidden, and recognisable for clean-up
_umask_lock = threading.Lock()


def output_mode() -> int:
    """The permission bits `open(path, "w")` would give a new file now: 0o666 less the process umask."""
    umask = _current_umask()
    return 0o666 & ~umask


def _current_umask() -> int:
    try:  # Linux reports it without changing it (os.umask must set it to read it, which races other threads)
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _umask_lock:
        umask = os.umask(0o022)
        os.umask(umask)
    return umask


def refuse_overwrite(target: Path, force: bool) -> None:
    """Raise `FileExistsError` when `target` exists (even as a dangling link) and `force` is off."""
    if not force and os.path.lexists(target):
        raise FileExistsError(f"{target} already exists; pass force=True (CLI: --force) to overwrite it")


def _check_parent(target: Path) -> None:
    if not target.parent.is_dir():
        raise FileNotFoundError(f"cannot write {target}: folder {target.parent} does not exist")


def temporary_path(target: Path) -> Path:
    """A new, empty temporary file beside `target` (same folder, so the final rename is atomic)."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}{TMP_MARK}")
    os.close(fd)
    return Path(name)


def open_temporary(target: Path, force: bool = False, mode: Literal["wb", "w+b"] = "wb") -> tuple[BinaryIO, Path]:
    """Check `target` can be written, then open a temporary file beside it; finish with `commit` or `discard`."""
    target = Path(target)
    refuse_overwrite(target, force)
    _check_parent(target)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}{TMP_MARK}")
    return os.fdopen(fd, mode), Path(name)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp: Path, target: Path, force: bool) -> None:
    """Move a finished temporary file into place with the mode `open()` would give it.

    Replaces `target` when `force`, else hard-links (which fails rather than clobber a target that appeared
    meanwhile); then fsyncs the folder so that the new name survives a crash."""
    os.chmod(tmp, output_mode())
    if force:
        os.replace(tmp, target)
    else:
        try:
            os.link(tmp, target)
        except FileExistsError:
            raise FileExistsError(f"{target} already exists; pass force=True (CLI: --force) to overwrite it") from None
        except OSError:  # file systems without hard links
            refuse_overwrite(target, force)
            os.replace(tmp, target)
        else:
            os.unlink(tmp)
    fsync_path(target.parent)


def discard(tmp: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


@overload
def atomic_write(
    target: str | os.PathLike[str], *, force: bool = ..., text: Literal[False] = ...
) -> contextlib.AbstractContextManager[BinaryIO]: ...
@overload
def atomic_write(
    target: str | os.PathLike[str], *, force: bool = ..., text: Literal[True]
) -> contextlib.AbstractContextManager[TextIO]: ...
def atomic_write(
    target: str | os.PathLike[str], *, force: bool = False, text: bool = False
) -> contextlib.AbstractContextManager[Any]:
    """`with atomic_write(path) as handle: handle.write(...)`: the file appears, whole, only on success."""
    return _atomic_write(Path(target), force, text)


@contextlib.contextmanager
def _atomic_write(target: Path, force: bool, text: bool) -> Iterator[IO[bytes] | IO[str]]:
    handle, tmp = open_temporary(target, force)
    try:
        if text:
            with open(handle.fileno(), "w", encoding="utf-8", closefd=False) as text_handle:
                yield text_handle
        else:
            yield handle
        handle.flush()
        os.fsync(handle.fileno())
        handle.close()
        commit(tmp, target, force)
    finally:
        handle.close()
        discard(tmp)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], *, force: bool = False) -> Iterator[Path]:
    """`with atomic_path(path) as tmp: library.save(tmp)`: for writers that take a file name. The temporary
    file exists (empty) when the block starts; the library may replace it."""
    final = Path(target)
    refuse_overwrite(final, force)
    _check_parent(final)
    tmp = temporary_path(final)
    try:
        yield tmp
        fsync_path(tmp)
        commit(tmp, final, force)
    finally:
        discard(tmp)


def write_bytes(target: str | os.PathLike[str], data: bytes, *, force: bool = False) -> Path:
    with atomic_write(target, force=force) as handle:
        handle.write(data)
    return Path(target)


def write_text(target: str | os.PathLike[str], data: str, *, force: bool = False) -> Path:
    return write_bytes(target, data.encode("utf-8"), force=force)


@contextlib.contextmanager
def staging_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """A fresh folder beside `target` to build a whole output folder in; removed if the block fails or the
    folder was not published (see `publish_dir`)."""
    final = Path(target)
    _check_parent(final)
    staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}{TMP_MARK}"))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def publish_dir(staging: Path, target: Path) -> None:
    """Rename a finished staging folder to `target`, replacing an existing `target` folder (callers decide whether
    that is allowed); readers never see a half-written folder. Files get `output_mode()`, folders the mode
    `mkdir` would give."""
    file_mode = output_mode()
    dir_mode = 0o777 & ~_current_umask()
    for root, dirs, files in os.walk(staging):
        for name in files:
            os.chmod(os.path.join(root, name), file_mode)
        for name in dirs:
            os.chmod(os.path.join(root, name), dir_mode)
    os.chmod(staging, dir_mode)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(target, old)
    try:
        os.replace(staging, target)
    except OSError as error:
        if old is not None:
            os.replace(old, target)
        raise FileExistsError(f"{target} appeared while it was being written: {error}") from error
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    fsync_path(target.parent)


def cache_dir() -> Path:
    """mimistack's cache root: `$MIMISTACK_CACHE` when set and not empty, else `~/.cache/mimistack`. Holds random
    test checkpoints and ONNX exports made on first use; never the Hugging Face cache."""
    return Path(os.environ.get("MIMISTACK_CACHE") or Path.home() / ".cache" / "mimistack").expanduser()
