"""`MimiRecord`: what one `.mimi` file holds, as a plain frozen record (no `TokenGrid`: `mimistack.tokens` sits above
this package and converts), plus the names and limits every other module shares.

Read by `level_major`/`frame_major`, written from any `GridLike` (a `MimiRecord` or a `mimistack.tokens.TokenGrid`)
by `readwrite`; `inspect.truncate` edits it. Sits on `errors`, `mimistack.config` and `mimistack.levels`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal, Protocol

import numpy as np
from numpy.typing import NDArray

from ..config import CODEBOOK_SIZE, FRAME_RATE, SAMPLE_RATE
from ..levels import Levels, LevelsLike
from .errors import ContainerError

__all__ = [
    "CODINGS",
    "DEFAULT_MAX_TOKENS",
    "FORMAT_VERSION",
    "LAYOUTS",
    "MAGIC",
    "READ_VERSIONS",
    "Coding",
    "GridLike",
    "JsonValue",
    "Layout",
    "MimiRecord",
    "check_metadata",
    "frames_for",
    "to_record",
    "whole_frame_samples",
]

MAGIC = b"MIMI\x00TOK"
"""First 8 bytes of every `.mimi` file (both versions)."""
FORMAT_VERSION = 2
"""The version writers write by default."""
READ_VERSIONS = (1, 2)
LAYOUTS = ("level-major", "frame-major")
CODINGS = ("packed11", "range")
Layout = Literal["level-major", "frame-major"]
Coding = Literal["packed11", "range"]
DEFAULT_MAX_TOKENS = 1 << 28
"""Readers refuse headers that declare more tokens than this (512 MiB of uint16), before allocating anything."""
MAX_LEVELS = 0xFFFF
MAX_FRAMES = 0xFFFF_FFFE
MAX_SAMPLES = 1 << 62
MAX_SAMPLE_RATE = 1 << 31

JsonValue = None | bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"]


class GridLike(Protocol):
    """What a writer needs of a grid: `MimiRecord` and `mimistack.tokens.TokenGrid` both have it."""

    @property
    def codes(self) -> NDArray[np.generic]: ...
    @property
    def num_samples(self) -> int: ...
    @property
    def sample_rate(self) -> int: ...
    @property
    def frame_rate(self) -> float: ...
    @property
    def codebook_size(self) -> int: ...
    @property
    def weights_sha256(self) -> str: ...
    @property
    def levels_present(self) -> tuple[int, ...] | None: ...
    @property
    def metadata(self) -> dict[str, JsonValue]: ...


def frames_for(num_samples: int, sample_rate: int, frame_rate: float) -> int:
    """Frames that cover `num_samples` (the rule `TokenGrid` checks): ceil(num_samples / (sample_rate/frame_rate));
    -1 when that is not a finite number (absurd rates)."""
    if not num_samples:
        return 0
    value = float(np.ceil(num_samples / (sample_rate / frame_rate)))
    return int(value) if math.isfinite(value) else -1


def whole_frame_samples(num_frames: int, sample_rate: int, frame_rate: float) -> int:
    """Samples of `num_frames` whole frames, floor(num_frames * sample_rate / frame_rate) (what a frame-major file
    without its end record is taken to hold); more than `MAX_SAMPLES` when that is not a sane number."""
    value = num_frames * sample_rate / frame_rate
    return math.floor(value) if math.isfinite(value) and value <= MAX_SAMPLES else MAX_SAMPLES + 1


@dataclasses.dataclass(frozen=True, eq=False)
class MimiRecord:
    """The contents of one `.mimi` file.

    `codes`: `[num_levels, num_frames]`, any integer array in, uint16 (read-only) once built; rows of levels not in
    `levels_present` hold zeros.
    """

    codes: NDArray[np.generic]
    num_samples: int
    sample_rate: int = SAMPLE_RATE
    frame_rate: float = FRAME_RATE
    codebook_size: int = CODEBOOK_SIZE
    weights_sha256: str = ""
    levels_present: tuple[int, ...] = ()
    metadata: dict[str, JsonValue] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        codes = np.asarray(self.codes)
        if codes.ndim != 2:
            raise ContainerError(f"codes must be [num_levels, T], got shape {codes.shape}")
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ContainerError(
                f"tokens must lie in 0-{self.codebook_size - 1}, got {int(codes.min())}..{int(codes.max())}"
            )
        codes = np.ascontiguousarray(codes, dtype=np.uint16)
        codes.setflags(write=False)
        object.__setattr__(self, "codes", codes)
        if isinstance(self.codebook_size, bool) or not 1 <= self.codebook_size <= 65536:
            raise ContainerError(f"codebook_size must lie in 1-65536, got {self.codebook_size}")
        if not 1 <= self.sample_rate <= MAX_SAMPLE_RATE:
            raise ContainerError(f"sample_rate must lie in 1-{MAX_SAMPLE_RATE}, got {self.sample_rate}")
        if not (math.isfinite(self.frame_rate) and self.frame_rate > 0):
            raise ContainerError(f"frame_rate must be positive, got {self.frame_rate}")
        if not 0 <= self.num_samples <= MAX_SAMPLES:
            raise ContainerError(f"num_samples must lie in 0-{MAX_SAMPLES}, got {self.num_samples}")
        expected = frames_for(self.num_samples, self.sample_rate, self.frame_rate)
        if expected != codes.shape[1]:
            raise ContainerError(
                f"{codes.shape[1]} frames do not match {self.num_samples} samples (expected {expected})"
            )
        present = tuple(int(i) for i in self.levels_present)
        if list(present) != sorted(set(present)) or any(not 0 <= i < codes.shape[0] for i in present):
            raise ContainerError(
                f"levels_present {present} must be ascending, unique and within 0-{codes.shape[0] - 1}"
            )
        object.__setattr__(self, "levels_present", present)
        object.__setattr__(self, "metadata", dict(self.metadata))

    @property
    def num_levels(self) -> int:
        return int(self.codes.shape[0])

    @property
    def num_frames(self) -> int:
        return int(self.codes.shape[1])

    def with_levels(self, levels: LevelsLike) -> MimiRecord:
        """Keep only `levels` (each must be present): the other rows are zeroed and marked absent."""
        selected = Levels.parse(levels, self.num_levels)
        missing = [i for i in selected if i not in self.levels_present]
        if missing:
            raise ContainerError(
                f"level(s) {missing} are not in this grid (it holds "
                f"{Levels(self.levels_present, self.num_levels)}); the file may have been truncated"
            )
        codes, present = keep_levels(self.codes, selected)
        return dataclasses.replace(self, codes=codes, levels_present=present)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MimiRecord):
            return NotImplemented
        return (
            np.array_equal(self.codes, other.codes)
            and self.num_samples == other.num_samples
            and self.sample_rate == other.sample_rate
            and self.frame_rate == other.frame_rate
            and self.codebook_size == other.codebook_size
            and self.weights_sha256 == other.weights_sha256
            and self.levels_present == other.levels_present
            and self.metadata == other.metadata
        )

    __hash__ = None  # type: ignore[assignment]


def to_record(grid: GridLike) -> MimiRecord:
    """The record of any grid (a `TokenGrid` keeps `levels_present=None` for "all levels")."""
    if isinstance(grid, MimiRecord):
        return grid
    codes = np.asarray(grid.codes)
    present = tuple(range(codes.shape[0])) if grid.levels_present is None else tuple(grid.levels_present)
    return MimiRecord(
        codes=codes,
        num_samples=int(grid.num_samples),
        sample_rate=int(grid.sample_rate),
        frame_rate=float(grid.frame_rate),
        codebook_size=int(grid.codebook_size),
        weights_sha256=grid.weights_sha256,
        levels_present=present,
        metadata=dict(grid.metadata),
    )


def check_metadata(value: object, where: str = "metadata") -> None:
    """Metadata must survive a JSON round trip unchanged: str keys, no NaN, only JSON types (tuples become lists)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ContainerError(f"{where} has a non-string key {key!r}; JSON keys must be strings")
            check_metadata(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_metadata(item, f"{where}[{i}]")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ContainerError(f"{where} is {value}; JSON has no NaN or infinity")
    elif not (value is None or isinstance(value, (str, int, bool))):
        raise ContainerError(f"{where} is a {type(value).__name__}, which JSON cannot store")


def keep_levels(codes: NDArray[Any], levels: Levels) -> tuple[NDArray[Any], tuple[int, ...]]:
    """`codes [K, T]` with every row outside `levels` zeroed, and the rows kept: how a record or a grid drops levels
    (zeroed rows are marked absent, never decoded)."""
    kept = np.zeros_like(codes)
    rows = list(levels)
    kept[rows] = codes[rows]
    return kept, tuple(rows)
