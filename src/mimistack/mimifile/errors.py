"""The two things a `.mimi` reader or writer reports: `ContainerError` (refused) and `TruncatedFileWarning` (cut short).

The bottom of `mimistack.mimifile`: every other module of the package (`packing`, `header`, `rangecoding`,
`record`, `level_major`, `frame_major`, `readwrite`, `inspect`) raises these. Sits on `mimistack.errors`.
"""

from __future__ import annotations

from ..errors import MimistackError


class ContainerError(MimistackError, ValueError):
    """A `.mimi` file (or byte string) that cannot be read or written: bad magic, version, header or section."""


class TruncatedFileWarning(UserWarning):
    """A `.mimi` file ended early; the complete levels (or frames) it holds were recovered."""
