"""The stream server (`mimistack.serve`): encode, decode and rooms over WebSocket on loopback, batched through one
stream pool; admission control, limits, faults, and the `mimistack stream serve` command.

The real-model tests use the tiny random checkpoint on the torch engine (its streams are compared with the same
codec's offline results: codes up to near-ties, audio within 1e-5 of a single stream decoder); the fault tests
use the numpy fake engine, whose outputs are exact.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mimistack.codec import Codec
from mimistack.engine.fake import FakeEngine
from mimistack.levels import Levels
from mimistack.serve import ServerLimits
from mimistack.serve import client as streams
from mimistack.serve.client import ServerClosed
from mimistack.serve.websocket import RunningServer, start_server
from mimistack.serve.wire import Close, codes_message, control, parse_server_message, pcm_message
from mimistack.testing import synthetic_signal
from near_ties import assert_near_ties_only

websockets = pytest.importorskip("websockets")  # a core test dependency ([server] extra); never missing in CI

AUDIO_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def fake() -> Codec:
    return Codec(FakeEngine.create("tiny"))


def run(coroutine: Awaitable[Any], timeout: float = 120.0) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coroutine, timeout)

    return asyncio.run(bounded())


def clip(index: int, seconds: float = 0.8) -> np.ndarray:
    return synthetic_signal(seconds + 0.05 * (index % 5), seed=100 + index)


def stream_decode(codec: Codec, codes: np.ndarray, levels: Levels) -> np.ndarray:
    decoder = codec.stream_decoder(levels)
    return np.concatenate([decoder.push(codes[:, t]) for t in range(codes.shape[1])])


async def until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def settled(server: RunningServer) -> None:
    """Every connection gone, every slot closed, and the pool's state rows dropped."""
    hub = server.hub
    await until(lambda: hub.stats()["connections"] == 0 and len(hub.pool) == 0)
    hub._poke()
    await until(lambda: hub.pool.rows() == (0, 0))


# -- the three kinds of stream, on the real (tiny) model ---------------------------------------------------------
def test_fifty_concurrent_clients_each_get_their_own_offline_result(tiny_codec: Codec) -> None:
    """20 encoders, 15 decoders at mixed level sets, and a room with 10 audio and 5 token listeners, at once."""
    encoders = [clip(i) for i in range(20)]
    grids = [tiny_codec.encode(clip(50 + i)) for i in range(16)]
    level_specs = ["all", "0-7", "0", "0,3,9", "0-15"]

    async def scenario() -> None:
        limits = ServerLimits(max_streams=50, idle_timeout_s=30)
        async with start_server(tiny_codec, limits=limits) as server:
            start = asyncio.Event()
            room_codes = grids[15].codes
            producer = asyncio.create_task(streams.produce(server.uri, "hall", room_codes, start=start))
            await until(lambda: "hall" in server.hub.rooms)
            joined = [asyncio.Event() for _ in range(15)]
            listeners = [
                asyncio.create_task(
                    streams.listen(server.uri, "hall", levels=level_specs[i % 5], joined=joined[i])
                    if i < 10
                    else streams.listen(server.uri, "hall", format="tokens", levels=str(4 + i), joined=joined[i])
                )
                for i in range(15)
            ]
            await asyncio.gather(*(event.wait() for event in joined))
            start.set()
            encoded = [asyncio.create_task(streams.encode(server.uri, pcm)) for pcm in encoders]
            decoded = [
                asyncio.create_task(streams.decode(server.uri, grids[i].codes, levels=level_specs[i % 5]))
                for i in range(15)
            ]
            results = await asyncio.gather(producer, *listeners, *encoded, *decoded)
            await settled(server)
            assert server.hub.stats()["steps"] > 0
        heard, encoded_results, decoded_results = results[1:16], results[16:36], results[36:]
        for pcm, result in zip(encoders, encoded_results, strict=True):
            assert_near_ties_only(tiny_codec, pcm, result.codes, tiny_codec.encode(pcm).codes.astype(np.int64))
            assert result.end == {"type": "end", "frames": result.codes.shape[1]}
        for i, result in enumerate(decoded_results):
            levels = Levels.parse(level_specs[i % 5], tiny_codec.num_levels)
            reference = stream_decode(tiny_codec, grids[i].codes.astype(np.int64), levels)
            np.testing.assert_allclose(result.pcm, reference, atol=AUDIO_TOLERANCE, rtol=0)
        for i, result in enumerate(heard):
            if i < 10:
                levels = Levels.parse(level_specs[i % 5], tiny_codec.num_levels)
                reference = stream_decode(tiny_codec, room_codes.astype(np.int64), levels)
                np.testing.assert_allclose(result.pcm, reference, atol=AUDIO_TOLERANCE, rtol=0)
            else:
                np.testing.assert_array_equal(result.codes, room_codes[: 4 + i].astype(np.int64))

    run(scenario(), timeout=240)


def test_an_opus_listener_and_a_level_change_mid_stream(tiny_codec: Codec) -> None:
    pytest.importorskip("sphn")
    import sphn

    grid = tiny_codec.encode(clip(7, seconds=1.2))

    async def scenario() -> tuple[Any, Any]:
        async with start_server(tiny_codec) as server:
            start = asyncio.Event()
            producer = asyncio.create_task(streams.produce(server.uri, "r", grid.codes, start=start))
            await until(lambda: "r" in server.hub.rooms)
            joined = asyncio.Event()
            opus = asyncio.create_task(streams.listen(server.uri, "r", format="opus", levels="0-7", joined=joined))
            await joined.wait()
            start.set()
            # a decoder that switches from 8 levels to 2 after 5 frames
            connection = await streams.connect(server.uri, "/decode", levels="0-7")
            await streams.ready(connection)
            for t in range(grid.num_frames):
                if t == 5:
                    await connection.send(control("levels", levels="0-1"))
                await connection.send(codes_message(grid.codes[:, t]))
                await asyncio.sleep(0.08)
            await connection.send(control("end"))
            chunks = []
            async for message in connection:
                if isinstance(message, str):
                    assert json.loads(message)["type"] == "end"
                    break
                chunks.append(np.frombuffer(message[5:], "<f4"))
            await connection.close()
            return await asyncio.gather(producer, opus), np.concatenate(chunks)

    (_, heard), switched = run(scenario())
    pcm, rate = sphn.read_opus_bytes(heard.opus)
    assert rate in (24000, 48000)  # Opus decodes at 48 kHz
    assert pcm.shape[-1] > 0.5 * grid.num_frames * 1920 * rate / 24000
    decoder = tiny_codec.stream_decoder(Levels.parse("0-7", 32))
    reference = [decoder.push(grid.codes[:, t], levels="0-1" if t >= 5 else None) for t in range(grid.num_frames)]
    np.testing.assert_allclose(switched, np.concatenate(reference), atol=AUDIO_TOLERANCE, rtol=0)


# -- limits, each with its message and close code ------------------------------------------------------------
def test_admission_control_refuses_the_stream_over_capacity(fake: Codec) -> None:
    async def scenario() -> None:
        async with start_server(fake, limits=ServerLimits(max_streams=2)) as server:
            held = [await streams.connect(server.uri, "/encode") for _ in range(2)]
            for connection in held:
                await streams.ready(connection)
            with pytest.raises(ServerClosed) as refused:
                await streams.encode(server.uri, clip(0), realtime=False)
            assert refused.value.error == "capacity" and refused.value.code == Close.TRY_LATER
            assert "full (2 of 2" in str(refused.value)
            # the streams already running are untouched and still work
            await held[0].send(pcm_message(clip(1)))
            await held[0].send(control("end"))
            frames = [m async for m in held[0] if not isinstance(m, str)]
            assert len(frames) == fake.config.num_frames(len(clip(1)))
            await held[1].close()
            result = await streams.encode(server.uri, clip(2), realtime=False)  # a freed slot admits again
            np.testing.assert_array_equal(result.codes, fake.encode(clip(2)).codes)
            assert server.hub.stats()["refused"] == 1

    run(scenario())


def test_real_time_streams_at_different_phases_share_each_step(fake: Codec) -> None:
    """Clients send at their own phases; a step waits (up to half a frame, so a stream that stops sending delays
    the others by no more) for the streams that have not sent their frame yet, so one step takes all of them."""
    frames, frame_s, phase_s = 20, 0.08, 0.01

    async def scenario(gather_s: float) -> list[int]:
        async with start_server(fake, gather_s=gather_s) as server:
            connections = [await streams.connect(server.uri, "/encode") for _ in range(3)]
            for connection in connections:
                await streams.ready(connection)
            pcms = [clip(index, frames * frame_s) for index in range(3)]
            start = time.monotonic() + 0.05

            async def send(index: int) -> list[bytes]:
                connection, pcm = connections[index], pcms[index]
                for frame in range(frames):  # frame k of client i at start + k frames + i phases: one clock
                    await asyncio.sleep(max(0.0, start + frame * frame_s + index * phase_s - time.monotonic()))
                    await connection.send(pcm_message(pcm[frame * 1920 : (frame + 1) * 1920]))
                await connection.send(control("end"))
                return [m async for m in connection if not isinstance(m, str)]

            received = await asyncio.gather(*(send(index) for index in range(3)))
            for pcm, messages in zip(pcms, received, strict=True):
                assert len(messages) == frames
                codes = np.stack([np.frombuffer(parse_server_message(m)[2], "<u2") for m in messages], axis=1)
                np.testing.assert_array_equal(codes, fake.encode(pcm[: frames * 1920]).codes)
            return [rows for _, rows, _ in server.hub.step_times]

    together = run(scenario(0.04))
    steady = together[2:-2]  # past the first frames, before the ends
    assert sum(rows == 3 for rows in steady) >= 0.8 * len(steady), together
    alone = run(scenario(0.0))  # without the wait, frames are stepped as they come
    assert sum(rows < 3 for rows in alone[2:-2]) > len(alone) // 4, alone


@pytest.mark.parametrize(
    ("path", "messages", "error", "code"),
    [
        ("/encode", [b"\x09abc"], "malformed", Close.UNSUPPORTED),
        ("/encode", [b"\x01abc"], "malformed", Close.UNSUPPORTED),
        ("/encode", [pcm_message(np.array([np.inf], np.float32))], "invalid", Close.INVALID),
        ("/encode", ["not json"], "malformed", Close.UNSUPPORTED),
        ("/encode", [codes_message(np.zeros((32, 1), np.int64))], "malformed", Close.UNSUPPORTED),
        ("/encode", [control("levels", levels="0")], "state", Close.POLICY),
        ("/decode", [b"\x02" + b"\x00" * 63], "malformed", Close.UNSUPPORTED),
        ("/decode", [b"\x02" + np.full(32, 9999, "<u2").tobytes()], "invalid", Close.INVALID),
        ("/decode?levels=0-99", [], "invalid", Close.INVALID),
        ("/rooms/nobody/listen", [], "not_found", Close.NOT_FOUND),
        ("/nowhere", [], "not_found", Close.NOT_FOUND),
        ("/encode", [pcm_message(np.zeros(30 * 1920, np.float32))], "too_fast", Close.POLICY),
    ],
)
def test_bad_messages_close_that_stream_with_a_reason(
    fake: Codec, path: str, messages: list[bytes | str], error: str, code: int
) -> None:
    async def scenario() -> None:
        async with start_server(fake) as server:
            neighbour = asyncio.create_task(streams.encode(server.uri, clip(3)))  # real time, meanwhile
            connection = await streams.connect(server.uri, path)
            with pytest.raises(ServerClosed) as closed:
                await streams.ready(connection)
                for message in messages:
                    await connection.send(message)
                await streams._messages(connection, streams.Result({})).__anext__()
            assert closed.value.error == error
            assert closed.value.code == code
            result = await neighbour
            np.testing.assert_array_equal(result.codes, fake.encode(clip(3)).codes)
            await settled(server)

    run(scenario())


def test_a_second_producer_for_a_room_is_refused(fake: Codec) -> None:
    async def scenario() -> None:
        async with start_server(fake) as server:
            first = await streams.connect(server.uri, "/rooms/hall/produce")
            await streams.ready(first)
            with pytest.raises(ServerClosed) as refused:
                await streams.ready(await streams.connect(server.uri, "/rooms/hall/produce"))
            assert refused.value.error == "state" and refused.value.code == Close.POLICY
            assert "already has a producer" in str(refused.value)
            await first.close()
            await settled(server)
            assert not server.hub.rooms

    run(scenario())


def test_oversized_messages_and_idle_senders_are_closed(fake: Codec) -> None:
    async def scenario() -> None:
        limits = ServerLimits(max_message_bytes=4096, idle_timeout_s=0.5)
        async with start_server(fake, limits=limits) as server:
            connection = await streams.connect(server.uri, "/encode")
            await streams.ready(connection)
            await connection.send(pcm_message(np.zeros(2000, np.float32)))  # 8001 bytes
            await connection.wait_closed()
            assert connection.close_code == Close.TOO_BIG
            idle = await streams.connect(server.uri, "/decode")
            await streams.ready(idle)
            with pytest.raises(ServerClosed) as closed:
                await streams._messages(idle, streams.Result({})).__anext__()
            assert closed.value.error == "idle" and closed.value.code == Close.POLICY
            assert "nothing received for 0.5 s" in str(closed.value)
            await settled(server)

    run(scenario())


def test_killed_clients_lose_nothing_for_the_others_and_memory_returns(fake: Codec) -> None:
    async def kill_mid_stream(uri: str, role: str, seed: int) -> None:
        connection = await streams.connect(uri, f"/{role}")
        await streams.ready(connection)
        for _ in range(3):
            if role == "encode":
                await connection.send(pcm_message(clip(seed)[:1920]))
            else:
                await connection.send(codes_message(np.zeros((32, 1), np.int64)))
            await asyncio.sleep(0.05)
        connection.transport.abort()  # no close handshake: the process died

    async def scenario() -> None:
        async with start_server(fake, limits=ServerLimits(max_streams=16)) as server:
            await kill_mid_stream(server.uri, "encode", 0)  # warm every code path once before measuring
            await settled(server)
            tracemalloc.start()
            baseline = tracemalloc.get_traced_memory()[0]
            survivors = [asyncio.create_task(streams.encode(server.uri, clip(i))) for i in range(4)]
            for round_ in range(5):
                await asyncio.gather(*(kill_mid_stream(server.uri, role, round_) for role in ("encode", "decode") * 4))
            results = await asyncio.gather(*survivors)
            await settled(server)
            grown = tracemalloc.get_traced_memory()[0] - baseline
            tracemalloc.stop()
            for i, result in enumerate(results):
                np.testing.assert_array_equal(result.codes, fake.encode(clip(i)).codes)
            assert server.hub.pool.rows() == (0, 0) and not server.hub._streams
            assert grown < 2_000_000, f"{grown} bytes still held after 40 killed streams"

    run(scenario())


# -- the command -----------------------------------------------------------------------------------------------
def test_stream_serve_command_serves_and_stops_on_sigterm(tiny_checkpoint: Path) -> None:
    with subprocess.Popen(
        [sys.executable, "-m", "mimistack", "stream", "serve", "--listen", "127.0.0.1:0", "--weights",
         str(tiny_checkpoint), "--engine", "torch", "--threads", "1", "--max-streams", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    ) as process:  # fmt: skip
        try:
            assert process.stdout is not None and process.stderr is not None
            line = process.stdout.readline()
            assert "serving up to 3 streams on ws://127.0.0.1:" in line, line + process.stderr.read()
            uri = line.split(" on ")[1].split()[0]
            result = run(streams.encode(uri, clip(4), realtime=False), timeout=60)
            codec = Codec.load(tiny_checkpoint)
            assert_near_ties_only(codec, clip(4), result.codes, codec.encode(clip(4)).codes.astype(np.int64))
            assert result.ready["weights_sha256"] == codec.weights_sha256
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0


def test_stream_serve_refuses_bad_limits_and_remote_hosts() -> None:
    for extra, message in (
        (["--max-streams", "0"], "max_streams must be a positive integer"),
        (["--listen", "0.0.0.0:0"], "refusing to listen on 0.0.0.0"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "mimistack", "stream", "serve", "--weights", "random-tiny", *extra],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2, done.stderr
        assert message in done.stderr


# -- Ray Serve: two replicas on a local Ray, each batching its own streams -----------------------------------------
def test_ray_serve_deployment_with_two_replicas(tiny_checkpoint: Path) -> None:
    pytest.importorskip("ray.serve")
    import ray
    from ray import serve

    from mimistack.engine.options import TorchOptions
    from mimistack.serve.rayserve import DEPLOYMENT, deployment

    limits = ServerLimits(max_streams=3, max_listeners=1)
    port = _free_port()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False, _node_ip_address="127.0.0.1"
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        app = deployment(str(tiny_checkpoint), TorchOptions(num_threads=1), limits, replicas=2)
        serve.run(app, name=DEPLOYMENT, route_prefix="/")
        uri = f"ws://127.0.0.1:{port}"
        inputs = [clip(60 + i) for i in range(6)]

        async def scenario() -> list[Any]:
            return await asyncio.gather(*(streams.encode(uri, pcm) for pcm in inputs))

        results = run(scenario(), timeout=180)
        codec = Codec.load(tiny_checkpoint)
        for pcm, result in zip(inputs, results, strict=True):
            assert_near_ties_only(codec, pcm, result.codes, codec.encode(pcm).codes.astype(np.int64))
        replicas = {result.ready["server"] for result in results}
        # 6 concurrent streams, at most 3 on a replica (max_ongoing_requests): both replicas serve
        assert len(replicas) == 2, replicas
    finally:
        serve.shutdown()
        ray.shutdown()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_streaming_commands_pick_the_engine_that_streams_fastest() -> None:
    import argparse

    from mimistack.cli.common import engine_options
    from mimistack.engine.options import OnnxOptions, TorchOptions

    args = argparse.Namespace(engine="auto", onnx_dir=None, onnx_variant="fp32", device="cpu", threads=None)
    assert isinstance(engine_options(args, streaming=True), OnnxOptions)  # ONNX Runtime on a CPU
    assert isinstance(engine_options(args), TorchOptions)  # batch commands keep torch when it is installed
    args.device = "cuda"
    assert isinstance(engine_options(args, streaming=True), TorchOptions)
    args.engine, args.device = "torch", "cpu"
    assert isinstance(engine_options(args, streaming=True), TorchOptions)  # a named engine is kept
