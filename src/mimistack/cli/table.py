"""The shape of a command registrar: `register(command)` adds a module's subcommands through `command(...)`.

Standard library only; imported by every command module and by `cli.main`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Protocol

Handler = Callable[[argparse.Namespace], int]


class Command(Protocol):
    def __call__(self, name: str, handler: Handler, help_text: str, model: bool = True) -> argparse.ArgumentParser:
        """Add subcommand `name` (with the model options unless `model=False`) and return its parser."""
        ...
