"""`TokenGrid`: the 32 x T grid of Mimi tokens for one utterance, with its provenance.

Sits on `config`, `levels` and `mimifile` (the `.mimi` format, which knows only its own `MimiRecord`: `save`/`load`
and the helpers `read_grid`, `write_grid`, `grid_from_bytes`, `grid_to_bytes` here convert). Engines produce and
consume it; `ops` edits it; `container` (the 0.1 import path) re-exports the helpers.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import mimifile
from .config import CODEBOOK_SIZE, FRAME_RATE, SAMPLE_RATE
from .errors import MimistackError
from .levels import Levels, LevelsLike
from .mimifile import DEFAULT_MAX_TOKENS, Coding, ContainerError, Layout, MimiRecord, TruncatedFileWarning
from .mimifile.level_major import Decoded
from .mimifile.readwrite import read_bytes
from .mimifile.record import keep_levels

__all__ = ["TokenGrid", "TokenGridError", "grid_from_bytes", "grid_to_bytes", "read_grid", "write_grid"]


class TokenGridError(MimistackError, ValueError):
    """A token grid whose contents contradict its description."""


@dataclasses.dataclass(frozen=True, eq=False)
class TokenGrid:
    """Tokens of one utterance.

    `codes`: uint16 `[num_levels, T]` (row i = level i). Rows of levels not in `levels_present` (for example after
    a truncated file was read) hold zeros and must not be decoded; `levels_present` says which rows are real.
    `num_samples`: length of the source audio at `sample_rate`; decoding trims to it.
    """

    codes: NDArray[Any]  # any integer array in; uint16, read-only, once built
    num_samples: int
    sample_rate: int = SAMPLE_RATE
    frame_rate: float = FRAME_RATE
    codebook_size: int = CODEBOOK_SIZE
    weights_sha256: str = ""
    levels_present: tuple[int, ...] | None = None
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        codes = np.asarray(self.codes)
        if codes.ndim != 2:
            raise TokenGridError(f"codes must be [num_levels, T], got shape {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise TokenGridError(
                f"tokens must lie in 0-{self.codebook_size - 1}, got {int(codes.min())}..{int(codes.max())}"
            )
        codes = np.ascontiguousarray(codes, dtype=np.uint16)
        codes.setflags(write=False)
        object.__setattr__(self, "codes", codes)
        if self.num_samples < 0:
            raise TokenGridError(f"num_samples must be >= 0, got {self.num_samples}")
        frame_size = self.sample_rate / self.frame_rate
        expected = int(np.ceil(self.num_samples / frame_size)) if self.num_samples else 0
        if expected != codes.shape[1]:
            raise TokenGridError(
                f"{codes.shape[1]} frames do not match {self.num_samples} samples "
                f"(expected {expected} frames of {frame_size:g} samples)"
            )
        present = (
            tuple(range(codes.shape[0]))
            if self.levels_present is None
            else tuple(sorted(set(int(i) for i in self.levels_present)))
        )
        if any(not 0 <= i < codes.shape[0] for i in present):
            raise TokenGridError(f"levels_present {present} out of range for {codes.shape[0]} levels")
        object.__setattr__(self, "levels_present", present)
        object.__setattr__(self, "metadata", dict(self.metadata))

    # -- shape ----------------------------------------------------------------------------------------------
    @property
    def num_levels(self) -> int:
        return int(self.codes.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.codes.shape[1])

    @property
    def duration(self) -> float:
        """Seconds of source audio."""
        return self.num_samples / self.sample_rate

    @property
    def frame_size(self) -> int:
        return round(self.sample_rate / self.frame_rate)

    @property
    def present(self) -> Levels:
        return Levels(tuple(self.levels_present or ()), self.num_levels)

    def bitrate(self, levels: LevelsLike = None) -> float:
        """Bits per second of the chosen levels with fixed-width tokens (137.5 bit/s per level for Mimi)."""
        count = len(Levels.parse(levels, self.num_levels))
        return count * self.frame_rate * float(np.log2(self.codebook_size))

    def check_levels(self, levels: LevelsLike) -> Levels:
        """Parse `levels` and make sure every one of them is present in this grid."""
        selected = Levels.parse(levels, self.num_levels)
        missing = [i for i in selected if i not in (self.levels_present or ())]
        if missing:
            raise TokenGridError(
                f"level(s) {missing} are not in this grid (it holds {self.present}); the file may have been truncated"
            )
        return selected

    # -- edits (return new grids) -------------------------------------------------------------------------
    def replace(self, **changes: Any) -> TokenGrid:
        return dataclasses.replace(self, **changes)

    def with_levels(self, levels: LevelsLike) -> TokenGrid:
        """Keep only `levels`: the other rows are zeroed and marked absent."""
        codes, present = keep_levels(self.codes, self.check_levels(levels))
        return self.replace(codes=codes, levels_present=present)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TokenGrid):
            return NotImplemented
        return (
            np.array_equal(self.codes, other.codes)
            and self.num_samples == other.num_samples
            and self.sample_rate == other.sample_rate
            and self.frame_rate == other.frame_rate
            and self.codebook_size == other.codebook_size
            and self.weights_sha256 == other.weights_sha256
            and self.levels_present == other.levels_present
        )

    __hash__ = None  # type: ignore[assignment]

    # -- files ----------------------------------------------------------------------------------------------
    def save(
        self,
        path: str | os.PathLike[str],
        *,
        force: bool = False,
        layout: Layout = "level-major",
        coding: Coding = "packed11",
        version: int = mimifile.FORMAT_VERSION,
    ) -> Path:
        """Write a `.mimi` file atomically (see `docs/format.md`); refuses to overwrite unless `force`."""
        return mimifile.write_record(self, path, force=force, layout=layout, coding=coding, version=version)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TokenGrid:
        """Read a `.mimi` file (v1 or v2); a truncated file gives the levels it holds (with a warning)."""
        return _from_decoded(mimifile.decode(read_bytes(Path(path)), str(path)), 3)

    @classmethod
    def from_record(cls, record: MimiRecord) -> TokenGrid:
        """The grid of a `.mimi` file's record."""
        return cls(
            codes=record.codes,
            num_samples=record.num_samples,
            sample_rate=record.sample_rate,
            frame_rate=record.frame_rate,
            codebook_size=record.codebook_size,
            weights_sha256=record.weights_sha256,
            levels_present=record.levels_present,
            metadata=dict(record.metadata),
        )

    def to_record(self) -> MimiRecord:
        """What a `.mimi` file of this grid holds."""
        return mimifile.to_record(self)


# -- `.mimi` helpers that return TokenGrids (re-exported by `mimistack.container`, the 0.1 import path) -------------
def _from_decoded(decoded: Decoded, stacklevel: int) -> TokenGrid:
    if decoded.truncation:
        warnings.warn(decoded.truncation, TruncatedFileWarning, stacklevel=stacklevel)
    try:
        return TokenGrid.from_record(decoded.record)
    except TokenGridError as exc:  # pragma: no cover - MimiRecord checks the same rules
        raise ContainerError(f"header and tokens disagree: {exc}") from None


def read_grid(path: str | os.PathLike[str]) -> TokenGrid:
    """Read a `.mimi` file (v1 or v2); a truncated file gives the levels it holds, with a `TruncatedFileWarning`."""
    return _from_decoded(mimifile.decode(read_bytes(Path(path)), str(path)), 3)


def grid_from_bytes(
    data: bytes | bytearray | memoryview, *, source: str = "<bytes>", max_tokens: int = DEFAULT_MAX_TOKENS
) -> TokenGrid:
    """Decode `.mimi` bytes. A truncated file gives the complete levels (or frames) with a `TruncatedFileWarning`;
    anything else wrong raises `ContainerError`. `max_tokens` bounds what a header may ask the reader to allocate."""
    return _from_decoded(mimifile.decode(data, source, max_tokens), 3)


def grid_to_bytes(
    grid: TokenGrid,
    *,
    layout: Layout = "level-major",
    coding: Coding = "packed11",
    version: int = mimifile.FORMAT_VERSION,
) -> bytes:
    """The `.mimi` bytes of `grid` (see `docs/format.md`); v2 unless `version=1`."""
    return mimifile.record_to_bytes(grid, layout=layout, coding=coding, version=version)


def write_grid(
    grid: TokenGrid,
    path: str | os.PathLike[str],
    *,
    force: bool = False,
    layout: Layout = "level-major",
    coding: Coding = "packed11",
    version: int = mimifile.FORMAT_VERSION,
) -> Path:
    """Write `grid` as a `.mimi` file atomically; refuses to overwrite an existing file unless `force`."""
    return mimifile.write_record(grid, path, force=force, layout=layout, coding=coding, version=version)
