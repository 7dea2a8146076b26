"""What encodes a corpus, whichever runner drives it: decoding one file (`decode_file`; `decode_row` in a Ray CPU
task), encoding decoded files in duration groups on one `Codec` (`encode_files`), and the Ray encoder actor that
holds that Codec (`Encoder`).

Audio inside a container (`members`: a WebDataset tar member, a row of a `datasets`-style table) is decoded by
the same `load_audio` as a file: its bytes are written to a private temporary file (through `_files`) named with
the member's suffix, decoded, and removed, so its samples are exactly those of the extracted file.

Sits on `codec` (`Codec.load` with the engine's options), `audio` (`load_audio`), `members`, `tokens`, `errors` and
`_files`; used by
`local` (the in-process runner calls `decode_file` and `encode_files` directly) and `raydata` (which builds the
Ray Data pipeline from `decode_row` and `Encoder`). Ray pickles them by reference to this module, so every node
imports it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypedDict

import numpy as np
from numpy.typing import NDArray

from .._files import write_bytes
from ..audio import AudioError, load_audio
from ..codec import Codec
from ..engine.options import EngineOptions
from ..tokens import TokenGrid
from .errors import CorpusError
from .members import is_member, read_member

Batch = dict[str, NDArray[np.generic]]
"""A Ray Data batch in numpy format: column name -> one value per row."""

Pcm = NDArray[np.float32]


class FileRow(TypedDict):
    """One file of a pending unit, as the runners carry it."""

    unit: int
    position: int
    id: str
    path: str
    sample_rate: int


def decode_file(path: str, sample_rate: int) -> tuple[Pcm | None, str]:
    """One file -> (float32 pcm at `sample_rate`, "") or (None, the reason it cannot be used)."""
    try:
        if is_member(path):
            return decode_member(path, sample_rate), ""
        return load_audio(path, sample_rate=sample_rate), ""
    except Exception as error:  # any bad file becomes an error row, never a failed job
        return None, _reason(error)


_scratch_lock = threading.Lock()
_scratch: list[Path] = []


def _scratch_dir() -> Path:
    """This process's private folder for members being decoded (removed when the process exits)."""
    with _scratch_lock:
        if not _scratch or not _scratch[0].is_dir():
            _scratch[:] = [Path(tempfile.mkdtemp(prefix="mimistack-members-"))]
            atexit.register(shutil.rmtree, _scratch[0], True)
        return _scratch[0]


def decode_member(source: str, sample_rate: int) -> Pcm:
    """Audio inside a container, decoded exactly as `load_audio` decodes the extracted file; errors name `source`."""
    data, name = read_member(source)
    suffix = Path(name).suffix.lower() if name else ""
    scratch = write_bytes(_scratch_dir() / f"{uuid.uuid4().hex}{suffix}", data)
    try:
        return load_audio(scratch, sample_rate=sample_rate)
    except AudioError as error:
        raise AudioError(str(error).replace(str(scratch), source)) from None
    finally:
        os.unlink(scratch)


def decode_row(row: FileRow) -> dict[str, object]:
    """Ray CPU task: one file -> float32 pcm at 24 kHz as bytes, or the reason it cannot be used."""
    pcm, error = decode_file(row["path"], row["sample_rate"])
    return {
        "unit": row["unit"],
        "position": row["position"],
        "id": row["id"],
        "path": row["path"],
        "pcm": b"" if pcm is None else pcm.astype("<f4").tobytes(),
        "num_samples": 0 if pcm is None else int(pcm.shape[0]),
        "error": error,
    }


def _reason(error: BaseException) -> str:
    return str(error) if isinstance(error, AudioError | CorpusError) else f"{type(error).__name__}: {error}"


def duration_groups(lengths: Sequence[int], budget_samples: int) -> list[list[int]]:
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


def encode_files(
    codec: Codec, pcms: Sequence[Pcm | None], errors: list[str], budget_samples: int
) -> list[TokenGrid | None]:
    """Encode the good files of a batch (`pcms[i]` not None, `errors[i]` empty) with `Codec.encode_batch`, in the
    `duration_groups` of `budget_samples` (0: one file per call, exactly `Codec.encode`). A file whose encode
    fails gets its reason in `errors` and no grid; one bad file costs only itself."""
    grids: list[TokenGrid | None] = [None] * len(pcms)
    good = [i for i, pcm in enumerate(pcms) if pcm is not None and not errors[i]]
    signals: dict[int, Pcm] = {i: pcm for i in good if (pcm := pcms[i]) is not None}
    for group in duration_groups([len(signals[i]) for i in good], budget_samples):
        for index, grid in _encode(codec, [good[g] for g in group], signals, errors):
            grids[index] = grid
    return grids


def _encode(
    codec: Codec, members: list[int], pcms: dict[int, Pcm], errors: list[str]
) -> Iterator[tuple[int, TokenGrid]]:
    try:
        yield from zip(members, codec.encode_batch([pcms[i] for i in members]))
        return
    except Exception as error:  # retry one by one so that one bad file costs only itself
        if len(members) == 1:
            errors[members[0]] = f"encoding failed: {_reason(error)}"
            return
    for index in members:
        yield from _encode(codec, [index], pcms, errors)


def check_weights(codec: Codec, weights_sha256: str) -> None:
    if codec.weights_sha256 != weights_sha256:
        raise CorpusError(
            f"the encoder loaded weights {codec.weights_sha256[:16]}…, the driver planned "
            f"{weights_sha256[:16]}…; every node needs the same weights file"
        )


class Encoder:
    """Ray actor: holds one Codec (loaded once per actor) and encodes batches of decoded files."""

    def __init__(
        self, weights: str, revision: str | None, options: EngineOptions, batch_seconds: float, weights_sha256: str
    ) -> None:
        self.codec = Codec.load(weights, options, revision=revision)
        check_weights(self.codec, weights_sha256)
        self.budget = round(batch_seconds * self.codec.sample_rate)

    def __call__(self, batch: Batch) -> Batch:
        count = len(batch["id"])
        errors = [str(e) for e in batch["error"]]
        pcms = [None if errors[i] else np.frombuffer(batch["pcm"][i], dtype="<f4") for i in range(count)]
        grids = encode_files(self.codec, pcms, errors, self.budget)
        return {
            "unit": np.asarray(batch["unit"]),
            "position": np.asarray(batch["position"]),
            "id": np.asarray(batch["id"], dtype=object),
            "path": np.asarray(batch["path"], dtype=object),
            "num_samples": np.asarray(batch["num_samples"], dtype=np.int64),
            "num_frames": np.asarray([0 if g is None else g.num_frames for g in grids], dtype=np.int32),
            "codes": np.asarray([b"" if g is None else g.codes.astype("<u2").tobytes() for g in grids], dtype=object),
            "error": np.asarray(errors, dtype=object),
        }
