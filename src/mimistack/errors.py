"""The root of every error mimistack raises on purpose: `except mimistack.MimistackError` catches them all.

Each concrete error also derives from the builtin it has always been (`ValueError` for bad input,
`RuntimeError` for a backend that cannot run, ...), so older `except ValueError:` code keeps working.
Standard library only; the bottom of the package, next to `_files`.
"""

from __future__ import annotations


class MimistackError(Exception):
    """Base class of mimistack's public errors (bad input, missing weights, engine failures, bad files)."""
