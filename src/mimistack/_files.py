"""Never half-written, never clobbered: the two steps every writer of this package shares.

A writer creates a temporary file beside its target (`tempfile.mkstemp(dir=target.parent)`), writes and fsyncs it,
then `commit`s it. Used by `audio` (WAV/FLAC/... writers) and `container` (.mimi files).
"""

from __future__ import annotations

import os
from pathlib import Path


def refuse_overwrite(target: Path, force: bool) -> None:
    """Raise `FileExistsError` when `target` exists (even as a dangling link) and `force` is off."""
    if not force and os.path.lexists(target):
        raise FileExistsError(f"{target} already exists; pass force=True to overwrite it")


def commit(tmp: Path, target: Path, force: bool) -> None:
    """Move a finished temporary file into place: replace when `force`, else hard-link (which fails rather than
    clobber a target that appeared meanwhile); then fsync the folder so the new name survives a crash."""
    if force:
        os.replace(tmp, target)
    else:
        try:
            os.link(tmp, target)
        except FileExistsError:
            raise FileExistsError(f"{target} already exists; pass force=True to overwrite it") from None
        except OSError:  # file systems without hard links
            refuse_overwrite(target, force)
            os.replace(tmp, target)
    directory = os.open(target.parent or ".", os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
