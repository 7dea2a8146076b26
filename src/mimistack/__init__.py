"""mimistack: the complete, local toolkit for the full token stack of Kyutai's Mimi speech codec.

Public API (imports are lazy so that `import mimistack` stays light and torch-free)::

    codec = mimistack.Codec.load("kyutai/mimi", engine="torch")
    grid = codec.encode(mimistack.load_audio("speech.wav"))
    pcm = codec.decode(grid, levels="0-7")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Codec": "mimistack.codec",
    "MimiConfig": "mimistack.config",
    "Levels": "mimistack.levels",
    "TokenGrid": "mimistack.tokens",
    "load_audio": "mimistack.audio",
    "save_audio": "mimistack.audio",
}

__all__ = ["Codec", "Levels", "MimiConfig", "TokenGrid", "__version__", "load_audio", "save_audio"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mimistack' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
