"""The `mimistack` command line: `main(argv)` runs one command in-process and returns its exit status;
`entry()` is the installed program. One module per group of commands (`core`, `ops`, `stream`, `corpus`,
`server`, `onnx`), shared helpers in `common`, the parser and error policy in `main`.
"""

from __future__ import annotations

from .common import CliError
from .main import build_parser, entry, main

__all__ = ["CliError", "build_parser", "entry", "main"]
