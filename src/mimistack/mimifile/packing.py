"""Fixed-width token packing (`packed11`): n tokens of w bits as ceil(n*w/8) bytes, least significant bit first.

The one token packer of mimistack: the `.mimi` sections and records (`level_major`, `frame_major`) and the
streaming protocol (`mimistack.stream`) all use it. Its browser twin is `web/src/packing.ts`. Sits on `errors`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from .errors import ContainerError

__all__ = ["bits_per_token", "pack_tokens", "packed_size", "unpack_tokens"]


def bits_per_token(codebook_size: int) -> int:
    """Width of one token in the fixed-width packing: ceil(log2(codebook_size)), at least 1 (11 for Mimi)."""
    if (
        isinstance(codebook_size, bool)
        or not isinstance(codebook_size, (int, np.integer))
        or not 1 <= codebook_size <= 65536
    ):
        raise ContainerError(f"codebook_size must lie in 1-65536, got {codebook_size}")
    return max(1, (int(codebook_size) - 1).bit_length())


def packed_size(count: int, width: int) -> int:
    """Bytes that `count` tokens of `width` bits take: ceil(count * width / 8)."""
    return (count * width + 7) // 8


def pack_tokens(tokens: NDArray[np.generic] | Sequence[int], bits_per_token: int = 11) -> bytes:
    """Pack integer tokens (any shape, read in C order) at `bits_per_token` bits each, little-endian bit order.

    Token i occupies stream bits `i*w .. i*w+w-1`, least significant bit first; stream bit j is bit `j % 8` of byte
    `j // 8`. The last byte is padded with zero bits. Returns `ceil(n*w/8)` bytes.
    """
    width = _check_width(bits_per_token)
    values = np.asarray(tokens)
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise ContainerError(f"tokens must be integers, got dtype {values.dtype}")
    flat = values.ravel().astype(np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= 1 << width):
        raise ContainerError(
            f"tokens must lie in 0-{(1 << width) - 1} to pack at {width} bits, got {int(flat.min())}..{int(flat.max())}"
        )
    shifts = np.arange(width, dtype=np.int64)
    bits = ((flat[:, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(bits.ravel(), bitorder="little").tobytes()


def unpack_tokens(data: bytes | bytearray | memoryview, count: int, bits_per_token: int = 11) -> NDArray[np.uint16]:
    """Inverse of `pack_tokens`: the first `count` tokens of `data` as uint16 `[count]`."""
    width = _check_width(bits_per_token)
    if count < 0:
        raise ContainerError(f"count must be >= 0, got {count}")
    needed = packed_size(count, width)
    if len(data) < needed:
        raise ContainerError(f"{count} tokens of {width} bits need {needed} bytes, got {len(data)}")
    raw = np.frombuffer(data, dtype=np.uint8, count=needed)
    bits = np.unpackbits(raw, bitorder="little", count=count * width).reshape(count, width)
    weights = 1 << np.arange(width, dtype=np.int64)
    return (bits.astype(np.int64) @ weights).astype(np.uint16)


def _check_width(bits_per_token: int) -> int:
    if (
        isinstance(bits_per_token, bool)
        or not isinstance(bits_per_token, (int, np.integer))
        or not 1 <= bits_per_token <= 16
    ):
        raise ContainerError(f"bits_per_token must be an integer in 1-16, got {bits_per_token!r}")
    return int(bits_per_token)
