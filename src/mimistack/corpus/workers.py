"""What runs on the Ray workers of a tokenize-corpus job: decoding one file in a CPU task (`decode_row`) and the
encoder actor that holds one `Codec` (`Encoder`), batching files of similar length.

Sits on `codec` (`Codec.load` with the engine's options), `audio` (`load_audio`), `tokens` and `errors`; used by
`pipeline`, which builds the Ray Data pipeline from these. Ray pickles them by reference to this module, so every
node imports it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypedDict

import numpy as np
from numpy.typing import NDArray

from ..audio import AudioError, load_audio
from ..codec import Codec
from ..engine.options import EngineOptions
from ..tokens import TokenGrid
from .errors import CorpusError

Batch = dict[str, NDArray[np.generic]]
"""A Ray Data batch in numpy format: column name -> one value per row."""


class FileRow(TypedDict):
    """One file of a pending unit, as the pipeline's input rows carry it."""

    unit: int
    position: int
    id: str
    path: str
    sample_rate: int


def decode_row(row: FileRow) -> dict[str, object]:
    """CPU task: one file -> float32 pcm at 24 kHz as bytes, or the reason it cannot be used."""
    out: dict[str, object] = {
        "unit": row["unit"],
        "position": row["position"],
        "id": row["id"],
        "path": row["path"],
        "pcm": b"",
        "num_samples": 0,
        "error": "",
    }
    try:
        pcm = load_audio(row["path"], sample_rate=row["sample_rate"])
        out["pcm"], out["num_samples"] = pcm.astype("<f4").tobytes(), int(pcm.shape[0])
    except Exception as error:  # any bad file becomes an error row, never a failed job
        out["error"] = _reason(error)
    return out


def _reason(error: BaseException) -> str:
    return str(error) if isinstance(error, AudioError) else f"{type(error).__name__}: {error}"


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


class Encoder:
    """Ray actor: holds one Codec (loaded once per actor) and encodes batches of decoded files."""

    def __init__(
        self, weights: str, revision: str | None, options: EngineOptions, batch_seconds: float, weights_sha256: str
    ) -> None:
        self.codec = Codec.load(weights, options, revision=revision)
        if self.codec.weights_sha256 != weights_sha256:
            raise CorpusError(
                f"the encoder on this node loaded weights {self.codec.weights_sha256[:16]}…, the "
                f"driver planned {weights_sha256[:16]}…; every node needs the same weights file"
            )
        self.budget = round(batch_seconds * self.codec.sample_rate)

    def __call__(self, batch: Batch) -> Batch:
        count = len(batch["id"])
        errors = [str(e) for e in batch["error"]]
        codes: list[bytes] = [b""] * count
        frames = np.zeros(count, dtype=np.int32)
        good = [i for i in range(count) if not errors[i]]
        pcms = {i: np.frombuffer(batch["pcm"][i], dtype="<f4") for i in good}
        for group in duration_groups([len(pcms[i]) for i in good], self.budget):
            members = [good[g] for g in group]
            for index, grid in self._encode(members, pcms, errors):
                codes[index] = grid.codes.astype("<u2").tobytes()
                frames[index] = grid.num_frames
        return {
            "unit": np.asarray(batch["unit"]),
            "position": np.asarray(batch["position"]),
            "id": np.asarray(batch["id"], dtype=object),
            "path": np.asarray(batch["path"], dtype=object),
            "num_samples": np.asarray(batch["num_samples"], dtype=np.int64),
            "num_frames": frames,
            "codes": np.asarray(codes, dtype=object),
            "error": np.asarray(errors, dtype=object),
        }

    def _encode(
        self, members: list[int], pcms: dict[int, NDArray[np.float32]], errors: list[str]
    ) -> Iterator[tuple[int, TokenGrid]]:
        try:
            yield from zip(members, self.codec.encode_batch([pcms[i] for i in members]))
            return
        except Exception as error:  # retry one by one so that one bad file costs only itself
            if len(members) == 1:
                errors[members[0]] = f"encoding failed: {_reason(error)}"
                return
        for index in members:
            yield from self._encode([index], pcms, errors)
