"""mimistack: the complete, local toolkit for the full token stack of Kyutai's Mimi speech codec.

Public API (imports are lazy so that `import mimistack` stays light and torch-free)::

    codec = mimistack.Codec.load("kyutai/mimi")        # engine="auto": torch when installed, else ONNX Runtime
    grid = codec.encode(mimistack.load_audio("speech.wav"))
    pcm = codec.decode(grid, levels="0-7")

Every error mimistack raises on purpose derives from `mimistack.MimistackError`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time the same names load lazily
    from .audio import load_audio, save_audio
    from .codec import Codec
    from .config import MimiConfig
    from .engine.options import OnnxOptions, TorchOptions
    from .errors import MimistackError
    from .levels import Levels
    from .tokens import TokenGrid

from ._version import __version__

_EXPORTS = {
    "Codec": "mimistack.codec",
    "MimistackError": "mimistack.errors",
    "OnnxOptions": "mimistack.engine.options",
    "TorchOptions": "mimistack.engine.options",
    "MimiConfig": "mimistack.config",
    "Levels": "mimistack.levels",
    "TokenGrid": "mimistack.tokens",
    "load_audio": "mimistack.audio",
    "save_audio": "mimistack.audio",
}

__all__ = [
    "Codec",
    "Levels",
    "MimiConfig",
    "MimistackError",
    "OnnxOptions",
    "TokenGrid",
    "TorchOptions",
    "__version__",
    "load_audio",
    "save_audio",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mimistack' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(__all__)
