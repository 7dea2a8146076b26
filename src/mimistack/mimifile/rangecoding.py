"""Lossless adaptive range coding of tokens (`coding="range"`), with the `constriction` library.

The model (docs/format.md, "Range coding") is part of the format: changing a constant changes the bit stream.
Used by `level_major` (one coder per section, levels in order) and `frame_major` (one model per stored level for
the whole stream, one coder per frame record); `inspect.measure_coding` reports what it costs. Sits on `errors`.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from .errors import ContainerError

__all__ = ["NO_LOWER", "FrameCoder", "LevelModel", "decode_levels", "encode_levels", "match_symbols"]

# Adaptive model constants (part of the format: changing any of them changes the `range` bit stream).
_MATCH_INCREMENT = 32
_TOKEN_INCREMENT = 1
_RESCALE_LIMIT = 1 << 16
NO_LOWER = 3
"""Lower-level match context for the first stored level."""


class _Encoder(Protocol):
    def encode(self, symbol: int, model: object, /) -> None: ...
    def get_compressed(self) -> NDArray[np.uint32]: ...


class _Decoder(Protocol):
    def decode(self, model: object, /) -> int: ...


class _Categorical(Protocol):
    def __call__(self, counts: NDArray[np.float64], /, *, perfect: bool) -> object: ...


def constriction() -> ModuleType:
    """The `constriction` module, or a `ContainerError` saying how to install it."""
    try:
        return importlib.import_module("constriction")
    except ImportError:  # pragma: no cover - depends on the environment
        raise ContainerError("coding='range' needs the constriction package: pip install 'constriction>=0.4'") from None


def match_symbols(tokens: NDArray[np.generic]) -> NDArray[np.int8]:
    """Per frame: 1 if the token equals the previous frame's, 2 if it equals the one before (and not the previous),
    else 0. int8 `[T]`. The context the next stored level sees."""
    t = tokens.astype(np.int64)
    match = np.zeros(t.shape[0], dtype=np.int8)
    if t.shape[0] > 1:
        match[1:][t[1:] == t[:-1]] = 1
    if t.shape[0] > 2:
        match[2:][(t[2:] == t[:-2]) & (t[2:] != t[1:-1])] = 2
    return match


class LevelModel:
    """Adaptive model of one level's token sequence.

    Each token is a match symbol (0 new, 1 = previous frame's token, 2 = the token two frames back), coded with
    adaptive counts chosen by (this level's previous match symbol, the lower stored level's match symbol in this
    frame); a new token is then coded with an adaptive frequency table over the codebook.
    """

    def __init__(self, codebook_size: int) -> None:
        self.token_counts: NDArray[np.float64] = np.ones(codebook_size, dtype=np.float64)
        self.token_total = codebook_size
        self.match_counts: NDArray[np.float64] = np.ones((3 * 4, 3), dtype=np.float64)
        self.last1 = -1
        self.last2 = -1
        self.prev_match = 0

    def context(self, lower_match: int) -> tuple[int, int]:
        """(context row, number of possible match symbols) for the next token."""
        if self.last1 < 0:
            alphabet = 1
        elif self.last2 < 0 or self.last1 == self.last2:
            alphabet = 2
        else:
            alphabet = 3
        return self.prev_match * 4 + lower_match, alphabet

    def match_of(self, token: int) -> int:
        if token == self.last1:
            return 1
        if token == self.last2:
            return 2
        return 0

    def update(self, token: int, match: int, row: int, alphabet: int) -> None:
        if alphabet > 1:
            counts = self.match_counts[row]
            counts[match] += _MATCH_INCREMENT
            if counts.sum() > _RESCALE_LIMIT:
                self.match_counts[row] = np.floor((counts + 1) / 2)
        if match == 0:
            self.token_counts[token] += _TOKEN_INCREMENT
            self.token_total += _TOKEN_INCREMENT
            if self.token_total > _RESCALE_LIMIT:
                self.token_counts = np.floor((self.token_counts + 1) / 2)
                self.token_total = int(self.token_counts.sum())
        self.last2, self.last1 = self.last1, token
        self.prev_match = match

    def encode(self, encoder: _Encoder, categorical: _Categorical, token: int, lower_match: int) -> int:
        row, alphabet = self.context(lower_match)
        match = self.match_of(token)
        if alphabet > 1:
            encoder.encode(match, categorical(self.match_counts[row, :alphabet], perfect=False))
        if match == 0 and self.token_counts.shape[0] > 1:  # a one-entry codebook needs no bits
            encoder.encode(token, categorical(self.token_counts, perfect=False))
        self.update(token, match, row, alphabet)
        return match

    def decode(self, decoder: _Decoder, categorical: _Categorical, lower_match: int) -> tuple[int, int]:
        row, alphabet = self.context(lower_match)
        match = 0
        if alphabet > 1:
            match = int(decoder.decode(categorical(self.match_counts[row, :alphabet], perfect=False)))
        if match == 0:
            token = 0
            if self.token_counts.shape[0] > 1:
                token = int(decoder.decode(categorical(self.token_counts, perfect=False)))
        else:
            token = self.last1 if match == 1 else self.last2
        self.update(token, match, row, alphabet)
        return token, match

    def observe(self, token: int, lower_match: int) -> int:
        """Update as `encode` would, without coding (for frames stored packed)."""
        row, alphabet = self.context(lower_match)
        match = self.match_of(token)
        self.update(token, match, row, alphabet)
        return match


def _words(encoder: _Encoder) -> bytes:
    return encoder.get_compressed().astype("<u4").tobytes()


def encode_levels(
    rows: Sequence[NDArray[np.generic]], lower_matches: NDArray[np.int8] | None, codebook_size: int
) -> bytes:
    """Range-code consecutive stored levels (rows of T tokens) with one coder, each level with a fresh model and
    the previous level's match symbols as context (`lower_matches` for the first row: the level stored before it,
    or None when it is the first stored level). A v1 section is one row; a v2 section one or more."""
    stream = constriction().stream
    encoder = stream.queue.RangeEncoder()
    categorical = stream.model.Categorical
    lower = lower_matches
    for tokens in rows:
        model = LevelModel(codebook_size)
        for t, token in enumerate(tokens.tolist()):
            model.encode(encoder, categorical, token, NO_LOWER if lower is None else int(lower[t]))
        lower = match_symbols(tokens)
    return _words(encoder)


def decode_levels(
    data: bytes, count: int, num_frames: int, lower_matches: NDArray[np.int8] | None, codebook_size: int
) -> NDArray[np.uint16]:
    """Inverse of `encode_levels`: uint16 `[count, num_frames]`. Malformed data raises whatever the coder raises
    (callers turn that into a `ContainerError` naming the section)."""
    stream = constriction().stream
    if len(data) % 4:
        raise ContainerError(f"range-coded data is {len(data)} bytes, not a whole number of 32-bit words")
    decoder = stream.queue.RangeDecoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))
    categorical = stream.model.Categorical
    out = np.empty((count, num_frames), dtype=np.uint16)
    lower = lower_matches
    for k in range(count):
        model = LevelModel(codebook_size)
        for t in range(num_frames):
            out[k, t] = model.decode(decoder, categorical, NO_LOWER if lower is None else int(lower[t]))[0]
        lower = match_symbols(out[k])
    return out


class FrameCoder:
    """Frame-major range coding: one model per stored level for the whole stream; each frame's tokens are coded
    in `levels_present` order, `lower` being the match symbol just coded for the previous stored level."""

    def __init__(self, num_levels: int, codebook_size: int) -> None:
        self.models = [LevelModel(codebook_size) for _ in range(num_levels)]

    def encode(self, tokens: NDArray[np.int64]) -> bytes:
        """The coded bytes of one frame. Updates the models exactly as `observe` would, so a writer that then
        stores the frame packed (the coding was not shorter) keeps its models in step with the reader's."""
        stream = constriction().stream
        encoder = stream.queue.RangeEncoder()
        lower = NO_LOWER
        for model, token in zip(self.models, tokens.tolist(), strict=True):
            lower = model.encode(encoder, stream.model.Categorical, token, lower)
        return _words(encoder)

    def decode(self, data: bytes) -> NDArray[np.uint16]:
        stream = constriction().stream
        decoder = stream.queue.RangeDecoder(np.frombuffer(data, dtype="<u4").astype(np.uint32))
        tokens = np.empty(len(self.models), dtype=np.uint16)
        lower = NO_LOWER
        for k, model in enumerate(self.models):
            tokens[k], lower = model.decode(decoder, stream.model.Categorical, lower)
        return tokens

    def observe(self, tokens: NDArray[np.int64]) -> None:
        lower = NO_LOWER
        for model, token in zip(self.models, tokens.tolist(), strict=True):
            lower = model.observe(token, lower)
