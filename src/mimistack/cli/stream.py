"""`mimistack stream send`, `stream receive`, `stream relay` and `stream serve`: progressive token streaming over
WebSocket, a relay both ends connect to (for browsers), and the stream server that batches many streams.

A feature module of the CLI (`mimistack.cli` calls `register(command)`); the work is done by
`mimistack.stream` (protocol spec: docs/protocol.md). Uses `cli.load_codec`, `cli.check_input`, `cli.check_output`
and `audio.AudioWriter`.

    mimistack stream receive --listen 127.0.0.1:8765 -o out.wav [--mimi out.mimi] --weights W
    mimistack stream send in.wav ws://127.0.0.1:8765 [--bitrate 4400 | --schedule "0:200,2:4400,5:500"] --weights W
    mimistack stream relay --listen 127.0.0.1:8766 [--loss 0.1 --seed 0] [--schedule "0:200,2:4400"]
    mimistack stream serve [--listen 127.0.0.1:8765] [--max-streams 8] --weights W

The relay needs no model; the others run on the engine that streams fastest here (ONNX Runtime on a CPU) unless
--engine names one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import CliError, add_model_options, check_input, check_output, engine_options, load_codec
from .table import Command

if TYPE_CHECKING:
    from ..codec import Codec

DEFAULT_LISTEN = "127.0.0.1:8765"
DEFAULT_RELAY_LISTEN = "127.0.0.1:8766"


def register(command: Command) -> None:
    stream = command(
        "stream",
        _missing_subcommand,
        "stream tokens over WebSocket, level 0 first plus as many levels as the bandwidth allows (docs/protocol.md)",
        model=False,
    )
    actions = stream.add_subparsers(dest="stream_command", metavar="{send,receive,relay,serve}")
    actions.required = True

    p = actions.add_parser(
        "send",
        help="encode audio in real time and stream it to a receiver",
        description="Encode a file (paced to real time) or the microphone frame by frame and "
        "send each 80 ms frame with level 0 plus as many levels as the bandwidth "
        "estimate allows.",
    )
    p.set_defaults(handler=cmd_send)
    p.add_argument("input", nargs="?", help="audio file (any format; resampled to 24 kHz); omit with --mic")
    p.add_argument("uri", help="the receiver, e.g. ws://127.0.0.1:8765")
    p.add_argument("--mic", action="store_true", help="capture the default input device (needs sounddevice)")
    p.add_argument("--seconds", type=float, default=None, help="with --mic: stop after this long (default: Ctrl-C)")
    rate = p.add_argument_group("bandwidth (default: estimate from the receiver's feedback, from 1000 bit/s)")
    rate.add_argument(
        "--bitrate",
        default=None,
        help="a fixed bandwidth in bit/s (e.g. 4400 or 4.4k); with --feedback, the starting estimate",
    )
    rate.add_argument(
        "--schedule", default=None, help='a scripted bandwidth: "SECONDS:BITRATE,...", e.g. "0:200,2:4400,5:500"'
    )
    rate.add_argument("--feedback", action="store_true", help="adapt to the receiver's feedback (the default)")
    rate.add_argument("--max-levels", type=int, default=None, help="never send more levels than this")
    rate.add_argument(
        "--utilization", type=float, default=0.9, help="fraction of the bandwidth to plan for (default 0.9)"
    )
    rate.add_argument(
        "--max-frames-per-message",
        type=int,
        default=16,
        help="largest batch of frames in one message at low bandwidth (default 16)",
    )
    add_model_options(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")

    p = actions.add_parser(
        "receive",
        help="receive a stream, decode it as it arrives, write a wav",
        description="Serve one stream: decode every frame with the levels it got, conceal lost "
        "or late frames, report level count and bitrate, write the audio.",
    )
    p.set_defaults(handler=cmd_receive)
    p.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        help=f"HOST:PORT to listen on (default {DEFAULT_LISTEN}; port 0 picks a free port)",
    )
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow listening on a non-loopback address (the stream is unencrypted)",
    )
    p.add_argument("-o", "--output", required=True, help="output audio (.wav or .flac)")
    p.add_argument("--mimi", default=None, help="also write the received tokens as a frame-major .mimi file")
    p.add_argument(
        "--max-delay",
        type=float,
        default=3.0,
        help="seconds after capture before a missing frame is concealed (default 3)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=30.0,
        help="give up after this many seconds without a message (default 30)",
    )
    p.add_argument("-f", "--force", action="store_true", help="overwrite existing outputs")
    add_model_options(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")

    p = actions.add_parser(
        "relay",
        help="relay streams between senders and receivers that both connect to it (browsers can), lossy if asked",
        description="A WebSocket server that pairs a sender at /send/NAME with a receiver at /receive/NAME "
        "(both connect to it, so a browser page can be either end): FRAME messages downstream are dropped with "
        "--loss and paced through a bottleneck following --schedule, as the loopback network simulator does; "
        "FEEDBACK goes back to the sender. The first end to arrive waits --hold seconds for the other.",
    )
    p.set_defaults(handler=cmd_relay)
    p.add_argument(
        "--listen", default=DEFAULT_RELAY_LISTEN, help=f"HOST:PORT (default {DEFAULT_RELAY_LISTEN}; port 0: any)"
    )
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback address and pages (unencrypted)")
    p.add_argument("--loss", type=float, default=0.0, help="probability of dropping each FRAME message (default 0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the drops (each stream starts from it; default 0)")
    p.add_argument(
        "--schedule",
        default=None,
        help='the bottleneck\'s bandwidth over stream time, "SECONDS:BITRATE,..." (default: no bottleneck)',
    )
    p.add_argument("--delay", type=float, default=0.0, help="extra one-way delay in seconds (default 0)")
    p.add_argument(
        "--max-queue-delay",
        type=float,
        default=2.0,
        help="drop a FRAME that would wait longer than this for the bottleneck (default 2 s)",
    )
    p.add_argument(
        "--hold", type=float, default=60.0, help="seconds the first end waits for the other one (default 60)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no line per finished stream")

    p = actions.add_parser(
        "serve",
        help="serve many encode, decode and room streams at once, batched (docs/protocol.md)",
        description="A WebSocket server: /encode (pcm in, tokens out), /decode?levels=L (tokens in, pcm "
        "out), /rooms/NAME/produce and /rooms/NAME/listen?levels=L&format=pcm|opus|tokens. All active "
        "streams advance together, one batched engine call per step; a stream over --max-streams is "
        "refused (close code 1013) so that the others keep real time.",
    )
    p.set_defaults(handler=cmd_serve)
    p.add_argument("--listen", default=DEFAULT_LISTEN, help=f"HOST:PORT (default {DEFAULT_LISTEN}; port 0: any)")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback address (unencrypted)")
    p.add_argument("--max-streams", type=int, default=8, help="engine slots: encode, decode, audio listeners (8)")
    p.add_argument("--mode", choices=("window", "moshi"), default="window", help="transformer cache mode")
    p.add_argument("--idle-timeout", type=float, default=30.0, help="close a silent sender after this many s (30)")
    p.add_argument("--burst-frames", type=int, default=25, help="frames a client may send ahead of real time (25)")
    p.add_argument("--max-message-bytes", type=int, default=1 << 18, help="largest message (262144)")
    p.add_argument("--max-rooms", type=int, default=64, help="rooms at once (64)")
    p.add_argument(
        "--ray-replicas",
        type=int,
        default=0,
        help="run as a Ray Serve deployment of this many replicas instead (each batches its own streams)",
    )
    p.add_argument("--ray-address", default=None, help="with --ray-replicas: the Ray cluster (default: local)")
    add_model_options(p)


def _missing_subcommand(args: argparse.Namespace) -> int:
    raise CliError("choose 'stream send', 'stream receive', 'stream relay' or 'stream serve'")


# -- serve --------------------------------------------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from ..serve import ServerLimits
    from ..stream.net import check_listen_host

    host, port = _parse_listen(args.listen)
    try:
        check_listen_host(host, args.allow_remote)
        limits = ServerLimits(
            max_streams=args.max_streams,
            max_message_bytes=args.max_message_bytes,
            burst_frames=args.burst_frames,
            idle_timeout_s=args.idle_timeout,
            max_rooms=args.max_rooms,
        )
    except ValueError as error:
        raise CliError(str(error)) from None
    if args.ray_replicas < 0:
        raise CliError(f"--ray-replicas must be 0 or more, got {args.ray_replicas}")
    if args.ray_replicas:
        from ..serve.rayserve import run_ray_server

        run_ray_server(
            args.weights,
            engine_options(args, streaming=True),
            replicas=args.ray_replicas,
            host=host,
            port=port,
            limits=limits,
            mode=args.mode,
            address=args.ray_address,
            num_gpus=1.0 if str(args.device).startswith("cuda") else 0.0,
            on_ready=lambda uri: print(f"serving {args.ray_replicas} Ray Serve replicas at {uri}", flush=True),
        )
        return 0
    from ..serve.websocket import run_server

    codec = load_codec(args, streaming=True)

    def ready(running: Any) -> None:
        print(
            f"serving up to {limits.max_streams} streams on {running.uri} ({codec.engine.name} engine, "
            f"mode {args.mode}); Ctrl-C stops",
            flush=True,
        )

    run_server(codec, host, port, limits, args.mode, allow_remote=args.allow_remote, on_ready=ready)
    return 0


# -- relay --------------------------------------------------------------------------------------------------------
def cmd_relay(args: argparse.Namespace) -> int:
    from ..stream import BandwidthSchedule
    from ..stream.relay import StreamRelay

    host, port = _parse_listen(args.listen)
    try:
        schedule = None if args.schedule is None else BandwidthSchedule.parse(args.schedule)
        relay = StreamRelay(
            schedule=schedule,
            loss=args.loss,
            seed=args.seed,
            delay=args.delay,
            max_queue_delay=args.max_queue_delay,
            hold=args.hold,
            host=host,
            port=port,
            allow_remote=args.allow_remote,
            on_session_end=None if args.quiet else _print_relay_session,
        )
    except ValueError as error:
        raise CliError(str(error)) from None
    shaping = f"loss {args.loss:.0%} (seed {args.seed}), " + (f"bottleneck {schedule}" if schedule else "no bottleneck")
    asyncio.run(_relay(relay, shaping))
    return 0


async def _relay(relay: Any, shaping: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    try:
        async with relay:
            print(
                f"relaying on {relay.uri}: senders connect to {relay.uri}/send/NAME, receivers to "
                f"{relay.uri}/receive/NAME; {shaping}; Ctrl-C stops",
                flush=True,
            )
            await stop.wait()
    except OSError as error:
        raise CliError(f"cannot listen on {relay.host}:{relay.port}: {error.strerror or error}") from None


def _print_relay_session(session: Any) -> None:
    stats = session.stats
    dropped = len(stats.dropped_frames) + len(stats.queue_dropped_frames)
    line = (
        f"stream {session.name!r}: delivered {stats.delivered_messages} messages ({stats.delivered_bytes} bytes), "
        f"dropped {dropped} frames ({len(stats.queue_dropped_frames)} at the full queue), "
        f"{session.upstream_messages} messages back to the sender"
    )
    print(line + (f"; ended early: {session.error}" if session.error else ""), flush=True)


# -- send ---------------------------------------------------------------------------------------------------------
def cmd_send(args: argparse.Namespace) -> int:
    from .. import stream

    if not args.uri.startswith(("ws://", "wss://")):
        raise CliError(f"the receiver must be a ws:// or wss:// address, got {args.uri!r}")
    if args.mic == (args.input is not None):
        raise CliError("give either an input file or --mic (not both)")
    rate = _rate_controller(args)
    codec = load_codec(args, streaming=True)
    if args.mic:
        source: Any = stream.MicSource(seconds=args.seconds, sample_rate=codec.sample_rate, frame_size=codec.frame_size)
    else:
        source = stream.FileSource(check_input(args.input), sample_rate=codec.sample_rate, frame_size=codec.frame_size)
    report = asyncio.run(_send(args, codec, source, rate))
    seconds = report.num_samples / codec.sample_rate
    levels = sum(report.frame_levels) / max(1, len(report.frame_levels))
    print(
        f"sent {report.num_frames} frames ({seconds:.2f} s) in {report.messages} messages, {report.bytes_sent} "
        f"bytes ({report.bytes_sent * 8 / max(seconds, 1e-9):.0f} bit/s), {levels:.1f} levels per frame on "
        f"average; {len(report.plans)} plan(s)"
    )
    if report.feedback:
        print(f"receiver: {_describe_feedback(report.feedback[-1])}")
    return 0


def _rate_controller(args: argparse.Namespace) -> Any:
    from .. import stream

    try:
        bitrate = None if args.bitrate is None else stream.parse_bitrate(args.bitrate)
        if args.schedule is not None:
            if args.bitrate is not None or args.feedback:
                raise CliError("--schedule cannot be combined with --bitrate or --feedback")
            return stream.ScheduledRate(stream.BandwidthSchedule.parse(args.schedule))
        if bitrate is not None and not args.feedback:
            return stream.FixedRate(bitrate)
        initial = 1000.0 if bitrate is None else bitrate
        return stream.FeedbackRate(initial, min_bps=min(100.0, initial), max_bps=max(20_000.0, initial))
    except ValueError as error:
        raise CliError(str(error)) from None


async def _send(args: argparse.Namespace, codec: Codec, source: Any, rate: Any) -> Any:
    from .. import stream

    if args.mic:
        with contextlib.suppress(NotImplementedError):  # Ctrl-C ends a microphone stream cleanly with END
            asyncio.get_running_loop().add_signal_handler(signal.SIGINT, source.stop)
    printer = _Progress(args.quiet)
    try:
        return await stream.send_stream(
            args.uri,
            codec,
            source,
            rate,
            max_levels=args.max_levels,
            utilization=args.utilization,
            max_frames_per_message=args.max_frames_per_message,
            on_progress=printer.sender,
        )
    finally:
        printer.close()


# -- receive ------------------------------------------------------------------------------------------------------
def cmd_receive(args: argparse.Namespace) -> int:
    from .. import stream

    host, port = _parse_listen(args.listen)
    try:
        stream.check_listen_host(host, args.allow_remote)
    except ValueError as error:
        raise CliError(str(error)) from None
    target = check_output(args.output, args.force)
    if target.suffix.lower() not in (".wav", ".flac"):
        raise CliError(f"output must end in .wav or .flac, got {target.name}")
    mimi = None
    if args.mimi is not None:
        mimi = check_output(args.mimi, args.force)
        if mimi.suffix != ".mimi":
            raise CliError(f"--mimi must end in .mimi, got {mimi.name}")
    codec = load_codec(args, streaming=True)
    report, session = asyncio.run(_receive(args, codec, host, port, target))
    if report.hello is None or not any(not r.concealed for r in report.frames):
        raise CliError(f"no audio received{': ' + report.error if report.error else ''}; nothing written")
    if mimi is not None:
        stream.write_received_mimi(session, mimi, force=args.force)
    print(f"{target}: {report.summary()}" + (f" -> also {mimi}" if mimi else ""))
    if not report.complete:
        print(
            f"mimistack stream receive: the stream did not finish ({report.error or 'no END'}); kept the "
            f"{report.num_samples / codec.sample_rate:.2f} s received",
            file=sys.stderr,
        )
        return 1
    return 0


def _parse_listen(text: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise CliError(f"--listen must be HOST:PORT, got {text!r}")
    try:
        port = int(port_text)
    except ValueError:
        raise CliError(f"--listen port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise CliError(f"--listen port must lie in 0-65535, got {port}")
    return host.strip("[]"), port


async def _receive(args: argparse.Namespace, codec: Codec, host: str, port: int, target: Path) -> tuple[Any, Any]:
    from .. import stream
    from ..audio import AudioWriter

    printer = _Progress(args.quiet)
    writer = AudioWriter(target, codec.sample_rate, force=args.force)
    receiver = stream.StreamReceiver(
        codec,
        host=host,
        port=port,
        allow_remote=args.allow_remote,
        idle_timeout=args.idle_timeout,
        max_delay=args.max_delay,
        on_audio=writer.write,
        on_progress=printer.receiver,
    )
    try:
        async with receiver:
            print(f"listening on {receiver.uri} (one stream; Ctrl-C to stop)", file=sys.stderr, flush=True)
            report = await receiver.wait()
    except BaseException:
        writer.abort()
        raise
    finally:
        printer.close()
    if report.hello is None or not any(not r.concealed for r in report.frames):
        writer.abort()
    else:
        writer.close()
    return report, receiver.session


# -- progress -----------------------------------------------------------------------------------------------------
def _describe_feedback(feedback: Any) -> str:
    return (
        f"frame {feedback.frames_played}, {feedback.level_count} levels, "
        f"{feedback.delivered_bps / 1000:.2f} kbit/s delivered, loss {feedback.loss_permille / 10:.1f} %, "
        f"latency {feedback.latency_us / 1000:.0f} ms"
    )


class _Progress:
    """One status line a second on stderr (rewritten in place on a terminal)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.last = 0.0
        self.terminal = sys.stderr.isatty()
        self.open_line = False

    def _emit(self, text: str) -> None:
        now = time.monotonic()
        if self.quiet or now - self.last < 1.0:
            return
        self.last = now
        if self.terminal:
            print(f"\r\x1b[K{text}", end="", file=sys.stderr, flush=True)
            self.open_line = True
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.open_line:
            print(file=sys.stderr)
            self.open_line = False

    def receiver(self, feedback: Any) -> None:
        self._emit(f"receiving: {_describe_feedback(feedback)}")

    def sender(self, status: Any) -> None:
        plan = status.plan
        text = (
            f"sending: frame {status.frames}, estimate {status.estimate_bps / 1000:.2f} kbit/s -> "
            f"{plan.level_count} levels, {plan.frames_per_message} frame(s) per message"
        )
        if status.feedback is not None:
            text += f" | receiver: {_describe_feedback(status.feedback)}"
        self._emit(text)
