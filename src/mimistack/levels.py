"""Level algebra shared by every backend: level sets, codebook tables, latents from codes.

Sits on `config`; used by `tokens`, the engines (`engine/`), `ops`, `analysis` and the web app (whose JS mirrors
`latent_from_codes`). Pure numpy.

The decoder's input latent is a sum of one term per level::

    z = P_sem · e0[c0] · [0 ∈ S]  +  P_ac · Σ_{i ∈ S, i ≥ 1} e_i[c_i]

so decoding a subset S of levels leaves the other terms out. That is not the same as setting their codes to 0:
index 0 is a real centroid.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Iterator
from typing import Union

import numpy as np

from .config import NUM_LEVELS
from .errors import MimistackError

LevelsLike = Union["Levels", str, int, Iterable[int], None]


class LevelsError(MimistackError, ValueError):
    """A level specification that cannot be parsed or is out of range."""


_RANGE = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+))?\s*$")


@dataclasses.dataclass(frozen=True)
class Levels:
    """An ordered set of quantizer level indices, `0 <= i < num_levels`.

    Parse with `Levels.parse("0-7")`, `"0,3,9"`, `"all"`, `"none"`, an int (a prefix of that many levels) or any
    iterable of ints.
    """

    indices: tuple[int, ...]
    num_levels: int = NUM_LEVELS

    def __post_init__(self) -> None:
        if self.num_levels <= 0:
            raise LevelsError(f"num_levels must be positive, got {self.num_levels}")
        bad = [i for i in self.indices if not 0 <= i < self.num_levels]
        if bad:
            raise LevelsError(f"level(s) {bad} out of range 0-{self.num_levels - 1}")
        object.__setattr__(self, "indices", tuple(sorted(set(int(i) for i in self.indices))))

    @classmethod
    def parse(cls, spec: LevelsLike, num_levels: int = NUM_LEVELS) -> Levels:
        if spec is None:
            return cls.all(num_levels)
        if isinstance(spec, Levels):
            if spec.num_levels != num_levels:
                return cls(spec.indices, num_levels)
            return spec
        if isinstance(spec, bool):
            raise LevelsError(f"not a level specification: {spec!r}")
        if isinstance(spec, (int, np.integer)):
            if not 0 <= int(spec) <= num_levels:
                raise LevelsError(f"a prefix of {spec} levels is out of range 0-{num_levels}")
            return cls.prefix(int(spec), num_levels)
        if isinstance(spec, str):
            return cls._parse_text(spec, num_levels)
        try:
            items = list(spec)
        except TypeError:
            raise LevelsError(f"not a level specification: {spec!r}") from None
        if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in items):
            raise LevelsError(f"levels must be integers, got {items!r}")
        return cls(tuple(int(i) for i in items), num_levels)

    @classmethod
    def _parse_text(cls, text: str, num_levels: int) -> Levels:
        lowered = text.strip().lower()
        if lowered in ("all", "*"):
            return cls.all(num_levels)
        if lowered in ("none", ""):
            if lowered == "":
                raise LevelsError("empty level specification; use 'none' for no levels")
            return cls((), num_levels)
        if lowered in ("semantic",):
            return cls((0,), num_levels)
        if lowered in ("acoustic",):
            return cls(tuple(range(1, num_levels)), num_levels)
        indices: list[int] = []
        for part in lowered.split(","):
            match = _RANGE.match(part)
            if not match:
                raise LevelsError(
                    f"cannot parse level specification {text!r}: use e.g. '0-7', '0,3,9', 'all' or 'none'"
                )
            start = int(match.group(1))
            stop = int(match.group(2)) if match.group(2) is not None else start
            if stop < start:
                raise LevelsError(f"descending range {part.strip()!r} in {text!r}")
            indices.extend(range(start, stop + 1))
        return cls(tuple(indices), num_levels)

    @classmethod
    def all(cls, num_levels: int = NUM_LEVELS) -> Levels:
        return cls(tuple(range(num_levels)), num_levels)

    @classmethod
    def prefix(cls, count: int, num_levels: int = NUM_LEVELS) -> Levels:
        return cls(tuple(range(count)), num_levels)

    # -- views ----------------------------------------------------------------------------------------------
    @property
    def is_prefix(self) -> bool:
        """True for 0..k-1 (what the decoder was trained on); other subsets are experimental."""
        return self.indices == tuple(range(len(self.indices)))

    @property
    def mask(self) -> np.ndarray:
        """Float32 `[num_levels]`, 1.0 for selected levels."""
        mask = np.zeros(self.num_levels, dtype=np.float32)
        mask[list(self.indices)] = 1.0
        return mask

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __contains__(self, item: object) -> bool:
        return item in self.indices

    def __str__(self) -> str:
        return format_levels(self.indices)


def format_levels(indices: Iterable[int]) -> str:
    """Compact text for a level set: (0, 1, 2, 5) -> '0-2,5'; empty -> 'none'."""
    items = sorted(set(indices))
    if not items:
        return "none"
    parts: list[str] = []
    start = prev = items[0]
    for i in [*items[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ",".join(parts)


@dataclasses.dataclass(frozen=True)
class CodebookTables:
    """The quantizer as numpy arrays, enough to turn codes into the decoder's latent and back.

    `semantic_codebooks`: float32 `[num_semantic, codebook_size, codebook_dim]`;
    `acoustic_codebooks`: float32 `[num_acoustic, codebook_size, codebook_dim]`;
    `*_input_proj`: float32 `[codebook_dim, dimension]`; `*_output_proj`: float32 `[dimension, codebook_dim]`.
    """

    semantic_codebooks: np.ndarray
    acoustic_codebooks: np.ndarray
    semantic_input_proj: np.ndarray
    semantic_output_proj: np.ndarray
    acoustic_input_proj: np.ndarray
    acoustic_output_proj: np.ndarray

    @property
    def num_semantic(self) -> int:
        return int(self.semantic_codebooks.shape[0])

    @property
    def num_levels(self) -> int:
        return self.num_semantic + int(self.acoustic_codebooks.shape[0])

    @property
    def codebook_size(self) -> int:
        return int(self.semantic_codebooks.shape[1])

    @property
    def dimension(self) -> int:
        return int(self.semantic_output_proj.shape[0])


def latent_from_codes(tables: CodebookTables, codes: np.ndarray, levels: LevelsLike = None) -> np.ndarray:
    """Decoder input latent from codes, with only the selected levels' terms in the sum.

    `codes`: integer `[B, K, T]` or `[K, T]` with K = num_levels (rows of unselected levels are ignored and may
    hold anything). Returns float32 `[B, dimension, T]` (or `[dimension, T]`), at the token frame rate.
    """
    squeeze = codes.ndim == 2
    if squeeze:
        codes = codes[None]
    if codes.ndim != 3:
        raise ValueError(f"codes must be [B, K, T] or [K, T], got shape {codes.shape}")
    selected = Levels.parse(levels, tables.num_levels)
    batch, num_rows, frames = codes.shape
    if num_rows != tables.num_levels:
        raise ValueError(f"codes have {num_rows} levels, the model has {tables.num_levels}")
    dimension = tables.dimension
    latent = np.zeros((batch, dimension, frames), dtype=np.float32)
    for branch_levels, books, proj in (
        ([i for i in selected if i < tables.num_semantic], tables.semantic_codebooks, tables.semantic_output_proj),
        ([i for i in selected if i >= tables.num_semantic], tables.acoustic_codebooks, tables.acoustic_output_proj),
    ):
        if not branch_levels:
            continue
        offset = 0 if books is tables.semantic_codebooks else tables.num_semantic
        summed = np.zeros((batch, frames, books.shape[2]), dtype=np.float32)
        for level in branch_levels:
            index = codes[:, level, :].astype(np.int64)
            if index.min(initial=0) < 0 or index.max(initial=0) >= tables.codebook_size:
                raise ValueError(f"level {level} holds tokens outside 0-{tables.codebook_size - 1}")
            summed += books[level - offset][index]
        latent += np.einsum("ed,btd->bet", proj, summed, dtype=np.float32)
    return latent[0] if squeeze else latent


def quantize(tables: CodebookTables, latent: np.ndarray) -> np.ndarray:
    """Nearest-neighbour split RVQ encode of a latent: float `[B, dimension, T]` -> int64 codes `[B, K, T]`.

    Both branches quantize the same latent; the acoustic branch is a residual chain. Distances by L2.
    """
    batch, _, frames = latent.shape
    x = latent.transpose(0, 2, 1).reshape(batch * frames, -1).astype(np.float32)
    out = []
    for books, proj in (
        (tables.semantic_codebooks, tables.semantic_input_proj),
        (tables.acoustic_codebooks, tables.acoustic_input_proj),
    ):
        residual = x @ proj.T
        for book in books:
            dist = (residual**2).sum(1, keepdims=True) - 2 * residual @ book.T + (book**2).sum(1)[None]
            index = dist.argmin(1)
            out.append(index)
            residual = residual - book[index]
    codes = np.stack(out, 0).reshape(len(out), batch, frames).transpose(1, 0, 2)
    return codes.astype(np.int64)
