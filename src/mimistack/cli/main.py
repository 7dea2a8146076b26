"""The `mimistack` program: one parser built from a static table of command modules, and the error policy.

Top layer of the package: imports every `cli/` command module (each imports its library modules lazily, inside
its handlers, so that `mimistack --help` stays fast and needs none of the optional extras). Errors go to stderr:
exit status 2 for bad input (`CliError`, missing or existing files, and the library's input errors, which are all
`ValueError`s), 1 for a failure (an engine or export that cannot run, anything unexpected), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from .._version import __version__
from . import core, corpus, evaluate, onnx, ops, server, stream
from .common import CliError, add_model_options
from .table import Handler

REGISTRARS: tuple[Callable[..., None], ...] = (
    core.register,
    ops.register,
    stream.register,
    corpus.register,
    server.register,
    onnx.register,
    evaluate.register,
)
"""Every command module, in the order `--help` lists their commands."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mimistack", description="Kyutai's Mimi codec: the full 32-level token stack, locally."
    )
    parser.add_argument("--version", action="version", version=f"mimistack {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details (weights, timings)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def command(name: str, handler: Handler, help_text: str, model: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(handler=handler)
        if model:
            add_model_options(p)
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
        return p

    for register in REGISTRARS:
        register(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s", stream=sys.stderr
    )
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (CliError, FileExistsError, FileNotFoundError, ValueError) as error:
        print(f"mimistack {args.command}: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        if args.verbose:
            raise
        print(f"mimistack {args.command}: failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


def entry() -> None:
    """The `mimistack` program: like `main`, plus one ONNX Runtime thread pool for the whole process (a process we
    own, so no foreign ONNX Runtime session can be refused for it; see
    `engine.ort_session.prefer_shared_thread_pool`)."""
    from ..engine.ort_session import prefer_shared_thread_pool

    prefer_shared_thread_pool()
    sys.exit(main())
