"""`mimistack serve`: the local web app (see and hear the 32-level token stack in the browser).

A feature module of `cli` (registered through `register(command)`); runs `server.app` with uvicorn. Binds
127.0.0.1 by default; any other address needs `--allow-remote` and prints a warning, because the server then
answers anyone who can reach this machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import RANDOM_WARNING, CliError
from .table import Command

SERVER_EXTRA_HINT = "the web app needs the server extra: pip install 'mimistack[server]'"
REMOTE_WARNING = (
    "WARNING: serving on {host}, not loopback: anyone who can reach this machine on port {port} can "
    "use the page and upload audio to the server-side API. Browsers only allow the microphone on "
    "https:// or localhost pages."
)


def register(command: Command) -> None:
    p = command("serve", cmd_serve, "serve the local web app: encode, see and hear every level in the browser")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; anything that is not loopback also needs --allow-remote)",
    )
    p.add_argument("--port", type=int, default=8765, help="TCP port (default 8765)")
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow binding an address other machines can reach (prints a warning)",
    )
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=200.0,
        help="largest upload the server-side API accepts, in MiB (default 200)",
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        default=3 * 3600.0,
        help="longest audio the server-side API encodes or decodes, in seconds (default 10800)",
    )
    p.add_argument(
        "--no-isolation",
        action="store_true",
        help="omit the COOP/COEP headers (the page then runs single-threaded WebAssembly)",
    )
    p.add_argument("--static", default=None, help=argparse.SUPPRESS)  # a built page elsewhere (development)


def check_bind(host: str, allow_remote: bool) -> bool:
    """Refuse a non-loopback address unless allowed; True when the bind is remote (a warning is due)."""
    from ..server.security import is_loopback_host

    if is_loopback_host(host):
        return False
    if not allow_remote:
        raise CliError(
            f"refusing to bind {host}: the server would be reachable from other machines; pass "
            "--allow-remote if that is what you want (default is 127.0.0.1)"
        )
    return True


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from ..server.app import ServerSettings, serve
    except ModuleNotFoundError as error:
        if error.name in ("fastapi", "uvicorn", "starlette", "multipart"):
            raise CliError(f"{SERVER_EXTRA_HINT} ({error.name} is missing)") from error
        raise
    if not 0 < args.port < 65536:
        raise CliError(f"--port must be 1-65535, got {args.port}")
    if args.max_upload_mb <= 0 or args.max_seconds <= 0:
        raise CliError("--max-upload-mb and --max-seconds must be positive")
    remote = check_bind(args.host, args.allow_remote)
    onnx_dir = Path(args.onnx_dir) if args.onnx_dir else None
    if onnx_dir is not None and not (onnx_dir / "manifest.json").is_file():
        raise CliError(f"--onnx {onnx_dir}: no manifest.json there (write one with the ONNX export)")
    static = Path(args.static) if args.static else None
    settings = ServerSettings(
        weights=args.weights,
        onnx_dir=onnx_dir,
        revision=args.revision,
        engine=args.engine,
        device=args.device,
        num_threads=args.threads,
        max_upload_bytes=int(args.max_upload_mb * 1024 * 1024),
        max_audio_seconds=args.max_seconds,
        cross_origin_isolation=not args.no_isolation,
        loopback_only=not remote,
        **({"static_dir": static} if static else {}),
    )
    if args.weights in ("random", "random-tiny"):
        print(RANDOM_WARNING, file=sys.stderr)
    if remote:
        print(REMOTE_WARNING.format(host=args.host, port=args.port), file=sys.stderr)
    if not (settings.static_dir / "index.html").is_file():
        print(
            f"note: the page is not built ({settings.static_dir} has no index.html): run "
            "`npm ci --prefix web && npm run build --prefix web`",
            file=sys.stderr,
        )
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"mimistack web app on http://{shown}:{args.port}/ (Ctrl-C to stop)", file=sys.stderr)
    serve(settings, host=args.host, port=args.port, log_level="info" if args.verbose else "warning")
    return 0
