"""The relay both ends connect to (`mimistack.stream.relay.StreamRelay`, `mimistack stream relay`): a sender at
/send/NAME, a receiver at /receive/NAME, with the loopback simulator's loss and bottleneck rules downstream and FEEDBACK
upstream; who waits for whom, the refusals, and the command line. Tiny random codec, everything on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mimistack.cli import main
from mimistack.codec import Codec
from mimistack.stream import (
    ArraySource,
    BandwidthSchedule,
    ErrorCode,
    ErrorMessage,
    FixedRate,
    Frame,
    Hello,
    LossyRelay,
    ReceiverSession,
    RemoteError,
    ScheduledRate,
    StreamError,
    StreamReceiver,
    decode_message,
    plan_frames,
    send_stream,
)
from mimistack.stream.net import connect
from mimistack.stream.relay import StreamRelay
from mimistack.testing import synthetic_signal
from test_stream import _hello as hello_for

FRAME = 1920


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec.load("random-tiny")


def _hello(codec: Codec) -> Hello:
    return hello_for(
        codec,
        stream_start_us=round(time.time() * 1e6),
    )


def _run(coroutine: Any, timeout: float = 60) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


async def receive_from(uri: str, codec: Codec, **options: Any) -> tuple[ReceiverSession, list[np.ndarray]]:
    """A receiver that is a WebSocket client (as the page is): read the relay, answer FEEDBACK, close after END."""
    audio: list[np.ndarray] = []
    session = ReceiverSession(codec, on_audio=audio.append, **options)
    async with await connect(uri) as connection:
        async for data in connection:
            for reply in session.handle(data, time.time()):
                await connection.send(reply)
            if session.ended:
                break
    session.finish()
    return session, audio


async def _error_from(uri: str) -> ErrorMessage:
    """Connect, and return the ERROR the relay answers with."""
    async with await connect(uri) as connection:
        message = decode_message(await asyncio.wait_for(connection.recv(), 10))
    assert isinstance(message, ErrorMessage)
    return message


def test_a_stream_through_the_relay_is_dropped_and_paced_as_by_the_lossy_relay(codec: Codec) -> None:
    """The sender connects first and is held; the frames the relay drops are the ones the receiver conceals, the
    seed decides them as it does for `LossyRelay`, the output is exactly as long as the input, FEEDBACK reaches the
    sender."""
    pcm = synthetic_signal(3.0, seed=4)
    frames = -(-pcm.size // FRAME)
    schedule = BandwidthSchedule.parse("0:1000,1.2:4400")

    async def scenario() -> tuple[Any, ...]:
        async with StreamRelay(schedule=schedule, loss=0.25, seed=3) as relay:
            sending = asyncio.create_task(
                send_stream(f"{relay.uri}/send/demo", codec, ArraySource(pcm), ScheduledRate(schedule), warmup=False)
            )
            await asyncio.sleep(0.5)  # the sender is held until the receiver joins
            assert relay.channels["demo"].session.held_messages > 0
            session, audio = await receive_from(f"{relay.uri}/receive/demo", codec)
            sent = await sending
            finished = await relay.wait_session("demo", 10)
        return sent, session, audio, finished, relay

    sent, session, audio, finished, relay = _run(scenario())
    stats = finished.stats
    report = session.report()
    assert report.complete and len(report.frames) == frames == sent.num_frames
    assert np.concatenate(audio).size == pcm.size
    assert stats.dropped_frames and report.concealed == sorted(stats.dropped_frames + stats.queue_dropped_frames)
    assert finished.error is None and finished.upstream_messages == session.feedback_sent > 0
    assert sent.feedback and sent.feedback[-1].frames_played == frames
    for record in report.frames:
        if not record.concealed:
            levels = record.levels_received
            np.testing.assert_array_equal(session.tokens[record.index][:levels], sent.codes[:levels, record.index])
            start = record.capture_time - report.hello.stream_start_us / 1e6
            assert levels in {plan_frames(schedule.at(t), bits_per_token=6).level_count for t in (start, start + 0.5)}
    assert "demo" not in relay.channels and relay.sessions == [finished]

    # The same seed drops the same FRAME messages as the loopback simulator does.
    async def through_lossy_relay() -> list[int]:
        async with StreamReceiver(codec, warmup=False) as receiver:
            async with LossyRelay(receiver.uri, schedule, loss=0.25, seed=3) as lossy:
                await send_stream(lossy.uri, codec, ArraySource(pcm), ScheduledRate(schedule), warmup=False)
            await receiver.wait(10)
        return lossy.stats.dropped_frames

    assert _run(through_lossy_relay()) == stats.dropped_frames


def test_the_receiver_may_come_first_and_the_name_is_free_afterwards(codec: Codec) -> None:
    pcm = synthetic_signal(1.0, seed=1)

    async def scenario() -> tuple[Any, ...]:
        async with StreamRelay() as relay:
            uri = f"{relay.uri}/receive/x"
            receiving = asyncio.create_task(receive_from(uri, codec))
            await relay.wait_receiver("x", 10)
            await send_stream(f"{relay.uri}/send/x", codec, ArraySource(pcm), FixedRate(4400), warmup=False)
            first, _ = await receiving
            again = asyncio.create_task(receive_from(uri, codec))
            await relay.wait_receiver("x", 10)
            await send_stream(f"{relay.uri}/send/x", codec, ArraySource(pcm), FixedRate(1000), warmup=False)
            second, _ = await again
        return first, second, relay.sessions

    first, second, sessions = _run(scenario())
    assert first.report().complete and second.report().complete
    assert {r.levels_received for r in first.records} == {32}  # 4400 bit/s carries every level of the tiny codec
    assert {r.levels_received for r in second.records} == {plan_frames(1000, bits_per_token=6).level_count}
    assert [s.name for s in sessions] == ["x", "x"] and all(s.held_messages == 0 for s in sessions)


def test_one_sender_and_one_receiver_per_stream(codec: Codec) -> None:
    pcm = synthetic_signal(2.0, seed=2)

    async def scenario() -> tuple[Any, ...]:
        async with StreamRelay() as relay:
            receiving = asyncio.create_task(receive_from(f"{relay.uri}/receive/s", codec))
            await relay.wait_receiver("s", 10)
            second_receiver = await _error_from(f"{relay.uri}/receive/s")
            sending = asyncio.create_task(
                send_stream(f"{relay.uri}/send/s", codec, ArraySource(pcm), FixedRate(4400), warmup=False)
            )
            await asyncio.sleep(0.3)
            second_sender = await _error_from(f"{relay.uri}/send/s")
            await sending
            session, _ = await receiving
        return second_receiver, second_sender, session

    second_receiver, second_sender, session = _run(scenario())
    assert second_receiver.code == ErrorCode.STATE and "already has a receiver" in second_receiver.text
    assert second_sender.code == ErrorCode.STATE and "already has a sender" in second_sender.text
    assert session.report().complete  # the stream itself went on


def test_either_end_going_away_ends_the_other(codec: Codec) -> None:
    """A sender that goes away without END: the receiver gets what it sent, then the relay closes it. A receiver
    that goes away: the relay closes the sender, whose send fails."""
    pcm = synthetic_signal(4.0, seed=3)

    async def scenario() -> tuple[Any, ...]:
        async with StreamRelay() as relay:
            receiving = asyncio.create_task(receive_from(f"{relay.uri}/receive/a", codec))
            await relay.wait_receiver("a", 10)
            async with await connect(f"{relay.uri}/send/a") as sender:  # HELLO and 5 frames, then gone
                await sender.send(_hello(codec).encode())
                for index in range(5):
                    await sender.send(Frame(index, np.full((3, 1), index), 6).encode())
            cut, _ = await asyncio.wait_for(receiving, 10)

            async with await connect(f"{relay.uri}/receive/b") as receiver:
                sending = asyncio.create_task(
                    send_stream(f"{relay.uri}/send/b", codec, ArraySource(pcm), FixedRate(4400), warmup=False)
                )
                await asyncio.wait_for(receiver.recv(), 10)  # HELLO: the stream runs
            with pytest.raises(StreamError, match="closed the connection"):
                await asyncio.wait_for(sending, 20)
            await relay.wait_session("b", 10)
        return cut, relay.sessions

    cut, sessions = _run(scenario())
    assert not cut.ended and [r.levels_received for r in cut.records] == [3] * 5
    assert [s.name for s in sessions] == ["a", "b"]


def test_an_end_without_the_other_is_told_after_the_hold(codec: Codec) -> None:
    async def scenario() -> tuple[Any, ...]:
        async with StreamRelay(hold=0.4) as relay:
            lonely_receiver = await _error_from(f"{relay.uri}/receive/nobody")
            with pytest.raises(RemoteError) as raised:
                await send_stream(
                    f"{relay.uri}/send/alone", codec, ArraySource(synthetic_signal(2.0)), FixedRate(4400), warmup=False
                )
            await asyncio.sleep(0.1)
        return lonely_receiver, raised.value, relay

    lonely_receiver, error, relay = _run(scenario())
    assert lonely_receiver.code == ErrorCode.STATE and "no sender connected to /send/nobody" in lonely_receiver.text
    assert error.message.code == ErrorCode.STATE
    assert "no receiver connected to /receive/alone within 0.4 s" in str(error)
    assert {s.name: s.error is not None for s in relay.sessions} == {"nobody": True, "alone": True}
    assert not relay.channels


def test_a_held_sender_is_bounded(codec: Codec) -> None:
    async def scenario() -> RemoteError:
        async with StreamRelay(max_held_bytes=1000) as relay:
            with pytest.raises(RemoteError) as raised:
                await send_stream(
                    f"{relay.uri}/send/big", codec, ArraySource(synthetic_signal(3.0)), FixedRate(4400), warmup=False
                )
        return raised.value

    error = _run(scenario())
    assert error.message.code == ErrorCode.STATE and "no receiver joined" in str(error) and "/receive/big" in str(error)


def test_unknown_paths_names_and_foreign_pages_are_refused() -> None:
    async def scenario() -> list[ErrorMessage]:
        async with StreamRelay() as relay:
            bad = ("/", "/send/", "/listen/x", "/send/a%20b", "/receive/" + "n" * 65)
            errors = [await _error_from(f"{relay.uri}{path}") for path in bad]
            from websockets.asyncio.client import connect as websockets_connect

            async with websockets_connect(f"{relay.uri}/receive/x", origin="https://example.com") as connection:
                errors.append(decode_message(await asyncio.wait_for(connection.recv(), 10)))
            async with websockets_connect(f"{relay.uri}/receive/ok", origin="http://127.0.0.1:8765") as connection:
                with pytest.raises(TimeoutError):  # a page on this machine is welcome: it waits for a sender
                    await asyncio.wait_for(connection.recv(), 0.3)
        return errors

    *paths, foreign = _run(scenario())
    assert all(e.code == ErrorCode.PROTOCOL and "/send/NAME" in e.text for e in paths)
    assert foreign.code == ErrorCode.STATE and "https://example.com" in foreign.text


def test_listening_beyond_loopback_needs_an_explicit_flag() -> None:
    with pytest.raises(ValueError, match=r"refusing to listen on 0\.0\.0\.0"):
        StreamRelay(host="0.0.0.0")
    StreamRelay(host="0.0.0.0", allow_remote=True)
    with pytest.raises(ValueError, match="loss"):
        StreamRelay(loss=1.0)
    with pytest.raises(ValueError, match="hold"):
        StreamRelay(hold=0)


# -- command line --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["--listen", "0.0.0.0:9"], "refusing to listen", id="remote"),
        pytest.param(["--loss", "1.5"], "loss must lie in", id="loss"),
        pytest.param(["--schedule", "2:100"], "must start at time 0", id="schedule"),
        pytest.param(["--listen", "nowhere"], "HOST:PORT", id="listen"),
    ],
)
def test_cli_relay_rejects_bad_options(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["stream", "relay", *argv]) != 0
    assert message in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_cli_relay_between_stream_send_and_a_receiver(
    codec: Codec, tiny_checkpoint: Path, tiny_onnx_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`mimistack stream relay` in a subprocess, `mimistack stream send FILE ws://.../send/NAME` unchanged (on its
    default engine, ONNX Runtime: the session's export of these weights is in the cache, as for test_stream.py)."""
    from mimistack.audio import save_audio

    tiny = Codec.load(tiny_checkpoint)
    source = tmp_path / "in.wav"
    pcm = synthetic_signal(1.5, seed=6)
    save_audio(source, pcm)
    port = _free_port()
    command = [sys.executable, "-m", "mimistack.cli", "stream", "relay", "--listen", f"127.0.0.1:{port}"]
    relay = subprocess.Popen(
        [*command, "--loss", "0.2", "--seed", "1", "--schedule", "0:2000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert relay.stdout is not None
        banner = relay.stdout.readline()
        assert f"relaying on ws://127.0.0.1:{port}" in banner and "loss 20% (seed 1)" in banner, banner

        async def scenario() -> ReceiverSession:
            receiving = asyncio.create_task(receive_from(f"ws://127.0.0.1:{port}/receive/cli", tiny))
            await asyncio.sleep(0.3)
            argv = ["stream", "send", str(source), f"ws://127.0.0.1:{port}/send/cli", "--bitrate", "2k", "-q"]
            assert await asyncio.to_thread(main, [*argv, "--weights", str(tiny_checkpoint)]) == 0
            session, _ = await receiving
            return session

        session = _run(scenario())
        assert "sent 19 frames (1.50 s)" in capsys.readouterr().out
        report = session.report()
        assert report.complete and report.num_samples == pcm.size and report.concealed
        relay.send_signal(signal.SIGINT)
        output, _ = relay.communicate(timeout=20)
        assert relay.returncode == 0, output
        dropped = len(report.concealed)
        assert "stream 'cli': delivered" in output and f"dropped {dropped} frames" in output, output
    finally:
        with contextlib.suppress(ProcessLookupError):
            relay.kill()
        relay.wait()


def test_cli_relay_reports_a_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["stream", "relay", "--listen", f"127.0.0.1:{port}"]) != 0
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err
