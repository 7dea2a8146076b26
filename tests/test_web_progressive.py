"""Progressive streams in the page, end to end: Debian's Chromium, headless, driven by playwright-core
(tests/e2e/progressive.mjs), `mimistack serve` with the tiny checkpoint, and a `StreamRelay` (the relay of `mimistack
stream relay`) in this process with 10 % seeded FRAME loss and a bandwidth schedule.

* Python sends a speech file (`send_stream`, the sender of `mimistack stream send`) to the relay's /send/NAME; the
  page receives /receive/NAME: the levels of every frame follow the schedule's rate plan, exactly the frames the relay
  dropped are concealed, the tokens are the sender's, the output is exactly as long as the file, and the page's audio
  is what Python's `ReceiverSession` decodes from the same frames (levels, concealment and fades);
* the page sends the opened file to /send/NAME and receives /receive/NAME itself: the same checks against what the
  page's sender sent, and its codes are Python's encoding of the file.

Needs what tests/test_web_e2e.py needs (Chromium, node, the built page); without them the tests skip, except under CI.
Without a browser, the page's receiving and sending ends (`web/src/progressive/receiver.ts`, `sender.ts`, compiled by
tsc and run in Node by tests/e2e/progressive_session.mjs) are held to Python's: the same messages at the same times
give the same frames, concealment, fades and FEEDBACK bytes as `ReceiverSession`, and the same errors; the page's
sender plans as `plan_frames` and Python's receiver accepts its HELLO.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mimistack.audio import load_audio
from mimistack.codec import Codec
from mimistack.stream import (
    Bandwidth,
    BandwidthSchedule,
    End,
    ErrorMessage,
    FileSource,
    Frame,
    Hello,
    ProtocolError,
    ReceiverSession,
    RemoteError,
    ScheduledRate,
    check_compatible,
    decode_message,
    plan_frames,
    send_stream,
)
from mimistack.stream.relay import RelaySession, StreamRelay
from test_stream import _hello as hello_for
from test_web_e2e import CHROMIUM, _missing, _serve, require_present
from ts_harness import TSC, TSC_FLAGS

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "e2e" / "progressive.mjs"
SPEECH_FILE = "flite_awb.wav"  # 6.8 s
SCHEDULE = "0:1000,2.4:4400,4.8:600"
"""With the tiny codec's 6-bit tokens: 6 levels in messages of 2 frames, then all 32 levels, then level 0 alone in
messages of 2 frames."""
LOSS, SEED = 0.1, 2
FRAME = 1920
DECODE_TOLERANCE = 5e-6
"""Largest |page - Python| sample difference for the same frames decoded frame by frame (WebAssembly float32 against
PyTorch, each frame through the streaming decoder; observed about 2e-7)."""


@pytest.fixture(scope="module")
def browser() -> None:
    """Skips (fails under CI) without Chromium, node or the built page."""
    require_present(_missing(), "browser tests")


@pytest.fixture(scope="module")
def server(tiny_onnx_dir: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mimistack serve` with the tiny checkpoint on 127.0.0.1 (its bundles come from the session's export)."""
    yield from _serve(tiny_checkpoint, tmp_path_factory)


class LoopThread:
    """An event loop in a thread of its own, serving while the browser runs (a relay, a stream server)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.stack = contextlib.AsyncExitStack()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def enter(self, manager: contextlib.AbstractAsyncContextManager[Any]) -> Any:
        return self.call(self.stack.enter_async_context(manager))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.call(self.stack.aclose(), 30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class RelayThread(LoopThread):
    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.relay: StreamRelay = self.enter(StreamRelay(**options))


@pytest.fixture
def relay() -> Iterator[RelayThread]:
    running = RelayThread(schedule=BandwidthSchedule.parse(SCHEDULE), loss=LOSS, seed=SEED)
    try:
        yield running
    finally:
        running.close()


def _artifacts(tmp_path: Path, scenario: str) -> Path:
    root = os.environ.get("MIMISTACK_ARTIFACTS")
    folder = Path(root) / "web-progressive" / scenario if root else tmp_path / scenario
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def _driver(server: str, relay_uri: str, out: Path, scenario: str, name: str, *extra: str) -> subprocess.Popen[str]:
    command = ["node", str(DRIVER), "--url", server, "--out", str(out), "--relay", relay_uri, "--name", name]
    command += ["--scenario", scenario, "--chromium", str(CHROMIUM), *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _result(driver: subprocess.Popen[str], out: Path) -> dict[str, Any]:
    output, _ = driver.communicate(timeout=300)
    path = out / "result.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    assert driver.returncode == 0 and not result.get("failure"), (
        f"driver failed: {result.get('failure')}\n{output}\nconsole: {result.get('console')}"
    )
    assert result["pageErrors"] == [] and result["cspViolations"] == []
    assert not [m for m in result["console"] if m["type"] == "error"], result["console"]
    return result


def _speech(speech: list[Path]) -> Path:
    return next(p for p in speech if p.name == SPEECH_FILE)


def check_reception(
    received: dict[str, Any],
    out: Path,
    session: RelaySession,
    sent_codes: np.ndarray,
    num_samples: int,
    codec: Codec,
) -> None:
    """What the page received against what was sent and what the relay dropped."""
    frames = -(-num_samples // FRAME)
    records = received["frames"]
    assert received["state"] == "ended" and received["complete"] and received["error"] is None
    assert [r["index"] for r in records] == list(range(frames)) and received["numSamples"] == num_samples
    pcm = np.fromfile(out / "received.f32", dtype="<f4")
    assert pcm.size == num_samples and np.isfinite(pcm).all()

    # exactly the frames the relay dropped were concealed, as lost
    dropped = sorted(session.stats.dropped_frames + session.stats.queue_dropped_frames)
    assert session.stats.dropped_frames, "the seed drops some FRAME messages"
    assert [r["index"] for r in records if r["concealed"]] == dropped
    assert {r["concealed"] for r in records if r["concealed"]} == {"lost"}
    assert session.upstream_messages >= received["feedbackSent"] > 4  # FEEDBACK a few times a second, upstream

    # the levels of every frame follow the schedule's plan within a few frames of each change
    schedule = BandwidthSchedule.parse(SCHEDULE)
    changes = [t for t, _ in schedule.steps]
    start = records[0]["captureTime"] - FRAME / 24000
    for begin, stop in zip(changes, [*changes[1:], math.inf]):
        plan = plan_frames(schedule.at(begin), bits_per_token=6)
        settled = [r for r in records if not r["concealed"] and begin + 0.24 <= r["captureTime"] - start < stop - 0.24]
        assert settled and {r["levels"] for r in settled} == {plan.level_count}, (begin, plan)

    # the page got exactly the sender's tokens
    tokens = np.fromfile(out / "received_tokens.u16", dtype="<u2").reshape(frames, codec.num_levels)
    for record in records:
        if not record["concealed"]:
            levels, index = record["levels"], record["index"]
            np.testing.assert_array_equal(tokens[index, :levels], sent_codes[:levels, index])

    # and decoded them as Python's receiver does: each frame with its levels, concealment and fades included
    reference = _python_reception(codec, tokens, records, num_samples)
    error = float(np.abs(pcm - reference).max())
    assert error <= DECODE_TOLERANCE, f"max |page - python| = {error:.3g}"
    assert np.abs(reference).max() > 100 * DECODE_TOLERANCE  # the comparison can tell audio from silence


def _python_reception(
    codec: Codec, tokens: np.ndarray, records: list[dict[str, Any]], num_samples: int, first: int = 0
) -> np.ndarray:
    """Python's `ReceiverSession` fed one FRAME message per frame the page received (the others missing), on a clock
    where nothing is ever late; frame `first` (where a room listener joined) counts as frame 0."""
    audio: list[np.ndarray] = []
    session = ReceiverSession(codec, on_audio=audio.append, max_delay=1e6)
    hello = hello_for(
        codec,
        stream_start_us=0,
        num_samples=num_samples,
    )
    session.handle(hello.encode(), 0.0)
    for record in records:
        if not record["concealed"]:
            column = tokens[record["index"] - first, : record["levels"], None].astype(np.uint16)
            session.handle(Frame(record["index"] - first, column, 6).encode(), 1.0)
    session.handle(End(len(records), num_samples).encode(), 2.0)
    return np.concatenate(audio)


@pytest.mark.usefixtures("browser")
def test_the_page_receives_a_lossy_scheduled_stream_from_python(
    server: str, relay: RelayThread, speech: list[Path], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    audio = _speech(speech)
    out = _artifacts(tmp_path, "receive")
    codec = Codec.load(tiny_checkpoint)
    driver = _driver(server, relay.relay.uri, out, "receive", "python")
    try:
        relay.call(relay.relay.wait_receiver("python"), 120)
        source = FileSource(audio, sample_rate=codec.sample_rate, frame_size=codec.frame_size)
        schedule = BandwidthSchedule.parse(SCHEDULE)
        sent = relay.call(send_stream(f"{relay.relay.uri}/send/python", codec, source, ScheduledRate(schedule)))
        session = relay.call(relay.relay.wait_session("python", 30))
    finally:
        result = _result(driver, out)
    num_samples = load_audio(audio).size
    assert sent.num_samples == num_samples
    check_reception(result["progressive"]["receive"], out, session, sent.codes, num_samples, codec)
    assert sent.feedback and sent.feedback[-1].frames_played == sent.num_frames  # the page's FEEDBACK reached Python
    assert result["strip"]["width"] > 0 and "Received" in result["strip"]["status"]


@pytest.mark.usefixtures("browser")
def test_the_page_sends_to_itself_through_the_relay(
    server: str, relay: RelayThread, speech: list[Path], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    audio = _speech(speech)
    out = _artifacts(tmp_path, "loop")
    codec = Codec.load(tiny_checkpoint)
    driver = _driver(server, relay.relay.uri, out, "loop", "loop", "--file", str(audio), "--rate", SCHEDULE)
    result = _result(driver, out)
    session = relay.call(relay.relay.wait_session("loop", 30))
    reference = load_audio(audio)
    sent = result["progressive"]["send"]
    frames = -(-reference.size // FRAME)
    assert sent["state"] == "sent" and sent["error"] is None and sent["frames"] == frames
    assert sent["numSamples"] == reference.size
    assert sent["feedback"]["framesPlayed"] == frames  # the page's own FEEDBACK came back to its sender
    codes = np.fromfile(out / "sent_codes.u16", dtype="<u2").reshape(codec.num_levels, frames)
    # Frame by frame in the browser, the encoder computes what batch encoding computes in Python.
    assert (codes == codec.encode(reference).codes).mean() >= 0.99
    check_reception(result["progressive"]["receive"], out, session, codes, reference.size, codec)


async def _produce_until_heard(server: Any, room: str, codes: np.ndarray, after: int) -> int:
    """Open `room` on the stream server and send `codes` into it in real time, until `after` frames past the moment a
    listener joined; returns the frames sent."""
    from mimistack.serve import client
    from mimistack.serve.wire import codes_message, control

    connection = await client.connect(server.uri, f"/rooms/{room}/produce")
    began, sent, heard = time.monotonic(), 0, None
    async with connection:
        info = await client.ready(connection)
        while sent < codes.shape[1] and (heard is None or sent < heard + after):
            await asyncio.sleep(
                max(0.0, began + (sent + 1) * info["frame_size"] / info["sample_rate"] - time.monotonic())
            )
            await connection.send(codes_message(codes[:, sent]))
            sent += 1
            if heard is None and server.hub.rooms[room].listeners:
                heard = sent
        await connection.send(control("end"))
        with contextlib.suppress(Exception):
            async for _ in connection:
                pass
    return sent


@pytest.mark.usefixtures("browser")
def test_the_page_joins_a_stream_servers_token_room(server: str, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """`mimistack stream serve`'s /rooms/NAME/listen?format=tokens&levels=4: the page joins a running room, starts at
    the first frame it gets and decodes the rest with 4 levels, as Python does."""
    from mimistack.serve.websocket import start_server

    codec = Codec.load(tiny_checkpoint)
    codes = np.random.default_rng(3).integers(0, codec.codebook_size, size=(codec.num_levels, 750))
    loop = LoopThread()
    try:
        running = loop.enter(start_server(codec, "127.0.0.1", 0))
        out = _artifacts(tmp_path, "room")
        producing = asyncio.run_coroutine_threadsafe(_produce_until_heard(running, "hall", codes, 30), loop.loop)
        url = f"{running.uri}/rooms/hall/listen?format=tokens&levels=4"
        driver = _driver(server, running.uri, out, "receive", "hall", "--receive-url", url)
        result = _result(driver, out)
        sent = producing.result(60)
    finally:
        loop.close()
    received = result["progressive"]["receive"]
    first = received["startFrame"]
    records = received["frames"]
    assert received["state"] == "ended" and received["complete"] and 0 < first < sent - 25, received["error"]
    assert [r["index"] for r in records] == list(range(first, sent)) and not any(r["concealed"] for r in records)
    assert {r["levels"] for r in records} == {4} and received["hello"]["maxLevels"] == 4
    assert received["numSamples"] == (sent - first) * FRAME
    tokens = np.fromfile(out / "received_tokens.u16", dtype="<u2").reshape(-1, codec.num_levels)
    np.testing.assert_array_equal(tokens[:, :4], codes[:4, first:sent].T)
    pcm = np.fromfile(out / "received.f32", dtype="<f4")
    reference = _python_reception(codec, tokens, records, (sent - first) * FRAME, first)
    assert pcm.shape == reference.shape and float(np.abs(pcm - reference).max()) <= DECODE_TOLERANCE


# -- the page's two ends in Node, against Python's -------------------------------------------------------------------
@pytest.fixture(scope="module")
def session_js(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("node") is None or not TSC.exists():
        message = "the Node tests need node and npm ci --prefix tests/js_protocol"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path_factory.mktemp("progressive-js")
    sources = [REPO / "web" / "src" / "progressive" / name for name in ("receiver.ts", "sender.ts")]
    result = subprocess.run(
        ["node", str(TSC), *map(str, sources), "--outDir", str(out), *TSC_FLAGS],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"tsc failed:\n{result.stdout}{result.stderr}"
    (out / "package.json").write_text('{"type": "module"}\n')
    return out / "progressive" / "receiver.js", out / "progressive" / "sender.js"


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec.load("random-tiny")


START = 1_700_000_000.0
OPTIONS = {"max_delay": 0.5, "feedback_interval": 0.25, "rate_window": 1.0}


def _model(codec: Codec) -> dict[str, Any]:
    return {
        "numLevels": codec.num_levels,
        "sampleRate": codec.sample_rate,
        "frameSize": codec.frame_size,
        "codebookSize": codec.codebook_size,
        "weightsSha256": codec.weights_sha256,
    }


def _run_js(scripts: tuple[Path, Path], payload: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    source, target = tmp_path / "in.json", tmp_path / "out.json"
    source.write_text(json.dumps(payload))
    result = subprocess.run(
        ["node", str(DRIVER.with_name("progressive_session.mjs")), *map(str, scripts), str(source), str(target)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and target.exists(), f"{result.stdout}{result.stderr}"
    return dict(json.loads(target.read_text()))


def _capture(index: int) -> float:
    return START + (index + 1) * FRAME / 24000


def _events(codec: Codec, seed: int, *, end: bool = True, frames: int = 60) -> list[dict[str, Any]]:
    """A stream as it reaches a receiver: messages of 1-3 frames with 1-32 levels (a plan change now and then), some
    lost, the link stalling now and then (everything after waits: WebSocket keeps order), ticks every 50 ms."""
    rng = np.random.default_rng(seed)
    hello = hello_for(
        codec,
        stream_start_us=round(START * 1e6),
        num_samples=frames * FRAME - 700,
    )
    events: list[dict[str, Any]] = [{"at": START + 0.01, "hex": hello.encode().hex()}]
    at, index, levels, batch = START + 0.01, 0, 8, 1
    while index < frames:
        if rng.random() < 0.15:
            levels, batch = int(rng.integers(1, 33)), int(rng.integers(1, 4))
            events.append({"at": at, "hex": Bandwidth(index, 1000, levels, batch).encode().hex()})
        count = min(batch, frames - index)
        delay = 0.05 + (1.2 if rng.random() < 0.08 else 0.0)
        at = max(at, _capture(index + count - 1) + delay)
        if rng.random() >= 0.15:  # else lost
            codes = rng.integers(0, codec.codebook_size, size=(levels, count))
            events.append({"at": at, "hex": Frame(index, codes, 6).encode().hex()})
        index += count
    if end:
        events.append({"at": at + 0.01, "hex": End(frames, frames * FRAME - 700).encode().hex()})
    else:
        events.append({"finish": True})
    timed = [e for e in events if "at" in e]
    ticks = np.arange(START, timed[-1]["at"], 0.05)
    merged = sorted([*timed, *({"at": float(t), "tick": True} for t in ticks)], key=lambda e: (e["at"], "tick" in e))
    return merged + [e for e in events if "finish" in e]


def _run_python(codec: Codec, events: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The same events through Python's `ReceiverSession`, recording every frame's fade."""
    from mimistack.stream import session as session_module

    gains: list[tuple[float, float]] = []
    ramp = session_module._ramp

    def recording(pcm: np.ndarray, start: float, stop: float) -> np.ndarray:
        gains.append((start, stop))
        return ramp(pcm, start, stop)

    monkeypatch.setattr(session_module, "_ramp", recording)
    now = [0.0]
    session = ReceiverSession(codec, clock=lambda: now[0], **OPTIONS)  # type: ignore[arg-type]
    steps: list[dict[str, Any]] = []
    for event in events:
        try:
            if "finish" in event:
                session.finish()
                steps.append({"replies": []})
                continue
            now[0] = event["at"]
            if "tick" in event:
                replies = session.tick(event["at"])
            else:
                replies = session.handle(bytes.fromhex(event["hex"]), event["at"])
            steps.append({"replies": [reply.hex() for reply in replies]})
        except (ProtocolError, RemoteError) as error:
            code = error.code if isinstance(error, ProtocolError) else error.message.code
            steps.append({"error": {"code": int(code), "message": str(error)}})
            break
    return {"steps": steps, "gains": gains, "session": session}


def _compare(js: dict[str, Any], python: dict[str, Any]) -> None:
    session: ReceiverSession = python["session"]
    assert [
        (r["index"], r["levelsReceived"], r["levelsDecoded"], r["concealed"], r["arrivedLate"]) for r in js["records"]
    ] == [(r.index, r.levels_received, r.levels_decoded, r.concealed, r.arrived_late) for r in session.records]
    assert len(js["steps"]) == len(python["steps"])
    for mine, theirs in zip(js["steps"], python["steps"]):
        if "error" in theirs:
            assert mine.get("error", {}).get("code") == theirs["error"]["code"], (mine, theirs)
        else:
            assert mine == theirs  # the same FEEDBACK, byte for byte, at the same moments
    assert [(job["gainStart"], job["gainStop"]) for job in js["jobs"]] == python["gains"]  # every decode's fade
    jobs = {job["index"]: job for job in js["jobs"]}
    for record, tokens in zip(session.records, session.tokens):
        job = jobs[record.index]
        assert job["levels"] == record.levels_decoded
        assert job["tokens"][: job["levels"]] == tokens[: job["levels"]].tolist()
    assert js["numSamples"] == session.samples_written


@pytest.mark.parametrize("seed", [0, 2, 4])
@pytest.mark.parametrize("end", [True, False], ids=["end", "no-end"])
def test_the_page_receiver_decides_as_python_does(
    session_js: tuple[Path, Path], codec: Codec, seed: int, end: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lost frames, frames missing at their deadline (some of which come afterwards), fades to silence and back."""
    events = _events(codec, seed, end=end)
    js = _run_js(session_js, {"model": _model(codec), "options": _js_options(), "events": events}, tmp_path)
    python = _run_python(codec, events, monkeypatch)
    assert all("error" not in step for step in python["steps"])
    records = python["session"].records
    assert {r.concealed for r in records} == {None, "lost", "deadline"} and any(r.arrived_late for r in records)
    assert (0.0, 0.0) in python["gains"] and any(stop == 1.0 and start < 1.0 for start, stop in python["gains"])
    _compare(js, python)


def _js_options() -> dict[str, float]:
    return {"maxDelay": OPTIONS["max_delay"], "feedbackInterval": OPTIONS["feedback_interval"], "rateWindow": 1.0}


def _bad_events(codec: Codec, case: str) -> list[dict[str, Any]]:
    hello = Hello(
        num_levels=codec.num_levels,
        max_levels=4,
        sample_rate=codec.sample_rate,
        frame_size=codec.frame_size,
        codebook_size=codec.codebook_size,
        weights_sha256=codec.weights_sha256 if case != "weights" else "0" * 64,
        stream_start_us=round(START * 1e6),
        num_samples=10 * FRAME,
    )
    frame = Frame(0, np.zeros((2, 1), dtype=np.int64), 6)
    messages = {
        "weights": [hello],
        "frame-first": [frame],
        "too-many-levels": [hello, Frame(0, np.zeros((5, 1), dtype=np.int64), 6)],
        "second-hello": [hello, hello],
        "past-the-end": [hello, Frame(12, np.zeros((1, 1), dtype=np.int64), 6)],
        "wrong-width": [hello, Frame(0, np.zeros((1, 1), dtype=np.int64), 7)],
        "end-mismatch": [hello, End(3, 3 * FRAME)],
        "after-end": [hello, End(10, 10 * FRAME), frame],
        "error": [hello, ErrorMessage(5, "sender broke")],
    }[case]
    return [{"at": START + 0.1 * (i + 1), "hex": m.encode().hex()} for i, m in enumerate(messages)]


@pytest.mark.parametrize(
    "case",
    [
        "weights",
        "frame-first",
        "too-many-levels",
        "second-hello",
        "past-the-end",
        "wrong-width",
        "end-mismatch",
        "after-end",
        "error",
    ],
)
def test_the_page_receiver_refuses_what_python_refuses(
    session_js: tuple[Path, Path], codec: Codec, case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = _bad_events(codec, case)
    js = _run_js(session_js, {"model": _model(codec), "options": _js_options(), "events": events}, tmp_path)
    python = _run_python(codec, events, monkeypatch)
    assert "error" in python["steps"][-1] and "error" in js["steps"][-1], (python["steps"], js["steps"])
    assert js["steps"][-1]["error"]["code"] == python["steps"][-1]["error"]["code"]
    expected = "RemoteError" if case == "error" else "ProtocolError"
    assert js["steps"][-1]["error"]["name"] == expected


def test_a_room_listener_starts_at_the_first_frame_it_gets(
    session_js: tuple[Path, Path], codec: Codec, tmp_path: Path
) -> None:
    """A stream server's token room sends a late listener its frames from the room's current one, and END counts
    the room's frames from 0: the page's output starts there and is as long as the rest."""
    hello = Hello(
        num_levels=codec.num_levels,
        max_levels=4,
        sample_rate=codec.sample_rate,
        frame_size=codec.frame_size,
        codebook_size=codec.codebook_size,
        weights_sha256=codec.weights_sha256,
        stream_start_us=round(START * 1e6),
    )
    messages = [(START + 3.3, hello)]
    messages += [(_capture(i) + 0.02, Frame(i, np.full((4, 1), i % 64), 6)) for i in range(40, 50) if i != 44]
    messages.append((_capture(49) + 0.05, End(50, 50 * FRAME)))
    events = [{"at": at, "hex": m.encode().hex()} for at, m in messages]
    js = _run_js(
        session_js, {"model": _model(codec), "options": _js_options(), "events": events, "join": True}, tmp_path
    )
    assert js["startFrame"] == 40 and js["ended"] and js["numSamples"] == 10 * FRAME
    assert [(r["index"], r["concealed"]) for r in js["records"]] == [
        (i, "lost" if i == 44 else None) for i in range(40, 50)
    ]


def test_the_page_sender_plans_as_python_does_and_python_accepts_its_hello(
    session_js: tuple[Path, Path], codec: Codec, tmp_path: Path
) -> None:
    schedule = BandwidthSchedule.parse(SCHEDULE)
    frames = 80
    rng = np.random.default_rng(0)
    columns = rng.integers(0, codec.codebook_size, size=(frames, codec.num_levels)).tolist()
    times = [_capture(i) + 0.01 for i in range(frames)]
    sender = {"rate": SCHEDULE, "frames": columns, "times": times, "start": START, "numSamples": frames * FRAME - 5}
    js = _run_js(session_js, {"model": _model(codec), "options": {}, "events": [], "sender": sender}, tmp_path)
    messages = [decode_message(bytes.fromhex(h)) for h in js["sent"]["messages"]]
    hello, *rest, end = messages
    assert isinstance(hello, Hello) and hello.rate_control == "schedule" and hello.num_samples == frames * FRAME - 5
    check_compatible(hello, codec)  # a Python receiver takes the page's stream
    assert isinstance(end, End) and (end.num_frames, end.num_samples) == (frames, frames * FRAME - 5)
    levels: dict[int, int] = {}
    plan = None
    for message in rest:
        if isinstance(message, Bandwidth):
            plan = plan_frames(schedule.at(times[message.from_frame] - START), bits_per_token=6)
            assert (message.level_count, message.frames_per_message) == (plan.level_count, plan.frames_per_message)
        else:
            assert isinstance(message, Frame) and plan is not None
            assert message.level_count == plan.level_count and message.frame_count <= plan.frames_per_message
            for j in range(message.frame_count):
                index = message.first_frame + j
                levels[index] = message.level_count
                assert message.codes[:, j].tolist() == columns[index][: message.level_count]
    assert sorted(levels) == list(range(frames)) and js["sent"]["frameLevels"] == [levels[i] for i in range(frames)]
    assert {m.level_count for m in rest if isinstance(m, Bandwidth)} == {6, 32, 1}


@pytest.mark.parametrize(
    ("rate", "error"),
    [("fast", "not a bitrate"), ("1:200", "starts at time 0"), ("0:200,0:300", "must increase"), ("0:", "bitrate")],
)
def test_the_page_sender_says_what_is_wrong_with_a_rate(
    session_js: tuple[Path, Path], codec: Codec, rate: str, error: str, tmp_path: Path
) -> None:
    sender = {"rate": rate, "frames": [], "times": [], "start": START, "numSamples": 0}
    js = _run_js(session_js, {"model": _model(codec), "options": {}, "events": [], "sender": sender}, tmp_path)
    assert error in js["sent"]["rateError"]
