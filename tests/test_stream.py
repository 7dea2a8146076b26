"""Tests for `mimistack.stream` (spec: docs/protocol.md) and `mimistack.cli_stream`.

Wire format (a round trip per message kind, exact layouts, hypothesis property tests, malformed input), the rate
rule, the bandwidth schedule and simulated link, the receiver's decoding and concealment without I/O, and whole
sessions over WebSocket on 127.0.0.1 through the lossy, bandwidth-scheduled relay, with the tiny random codec.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
import struct
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mimistack import stream
from mimistack.cli import main
from mimistack.codec import Codec
from mimistack.container import read_grid
from mimistack.levels import Levels
from mimistack.stream import (
    FRAME_HEADER_BYTES,
    PROTOCOL_VERSION,
    ArraySource,
    Bandwidth,
    BandwidthSchedule,
    End,
    ErrorCode,
    ErrorMessage,
    Feedback,
    FeedbackRate,
    Frame,
    Hello,
    LossyRelay,
    MessageKind,
    Plan,
    ProtocolError,
    ReceiverSession,
    RemoteError,
    ScheduledRate,
    SimulatedLink,
    StreamReceiver,
    decode_message,
    plan_frames,
    send_stream,
)
from mimistack.testing import synthetic_signal

HYPOTHESIS = settings(
    database=None,
    max_examples=int(os.environ.get("MIMISTACK_HYPOTHESIS_EXAMPLES", "60")),
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow],
)
SHA = "0123456789abcdef" * 4
FRAME = 1920


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec.load("random-tiny")


def test_public_names() -> None:
    assert stream.__all__ == sorted(stream.__all__, key=lambda name: (not name.isupper(), name))
    assert all(hasattr(stream, name) for name in stream.__all__)
    assert {
        "MessageKind",
        "Hello",
        "Frame",
        "Feedback",
        "Bandwidth",
        "End",
        "ErrorMessage",
        "decode_message",
        "ProtocolError",
        "plan_frames",
        "send_stream",
        "StreamReceiver",
        "LossyRelay",
    } <= set(stream.__all__)


# -- wire format: one example per kind ---------------------------------------------------------------------------
EXAMPLES = [
    pytest.param(
        Hello(
            num_levels=32,
            max_levels=24,
            sample_rate=24_000,
            frame_size=1920,
            codebook_size=2048,
            weights_sha256=SHA,
            stream_start_us=1_767_225_600_123_456,
            num_samples=None,
            cache_mode="moshi",
            rate_control="feedback",
            codec_config='{"a": "é ✓ 🎧"}',
        ),
        id="HELLO",
    ),
    pytest.param(Frame(4_294_967_290, np.array([[0, 1024, 77], [2047, 1, 2000]]), 11), id="FRAME"),
    pytest.param(
        Feedback(
            sequence=7,
            frames_played=125,
            frames_concealed=12,
            level_count=22,
            delivered_bps=4321,
            loss_permille=96,
            latency_us=180_000,
            queue_delay_us=2**32 - 1,
        ),
        id="FEEDBACK",
    ),
    pytest.param(Bandwidth(from_frame=18, estimate_bps=4400, level_count=22, frames_per_message=1), id="BANDWIDTH"),
    pytest.param(End(num_frames=63, num_samples=120_000), id="END"),
    pytest.param(ErrorMessage(code=ErrorCode.INCOMPATIBLE, text="weights differ ✗"), id="ERROR"),
]


@pytest.mark.parametrize("message", EXAMPLES)
def test_every_message_kind_round_trips(message: stream.Message) -> None:
    data = message.encode()
    assert data[:2] == bytes([message.kind, PROTOCOL_VERSION])
    decoded = decode_message(data)
    assert type(decoded) is type(message)
    assert decoded == message
    assert decoded.encode() == data


def test_message_lengths_follow_the_spec() -> None:
    sizes = {
        MessageKind.HELLO: 68,
        MessageKind.FEEDBACK: 29,
        MessageKind.BANDWIDTH: 12,
        MessageKind.END: 14,
        MessageKind.ERROR: 6,
    }
    for param in EXAMPLES:
        message = param.values[0]
        data = message.encode()
        if isinstance(message, Hello):
            assert len(data) == 68 + len(message.codec_config.encode())
        elif isinstance(message, ErrorMessage):
            assert len(data) == 6 + len(message.text.encode())
        elif isinstance(message, Frame):
            assert len(data) == 9 + math.ceil(message.frame_count * message.level_count * 11 / 8)
        else:
            assert len(data) == sizes[message.kind]


def test_frame_bytes_are_frame_major_lsb_first() -> None:
    # frame 5: levels 0, 1 = tokens 1, 2; frame 6: 3, 4. Frame-major: 1, 2, 3, 4 at 11 bits, LSB first.
    frame = Frame(5, np.array([[1, 3], [2, 4]]), 11)
    data = frame.encode()
    assert data[:9] == bytes([2, 1, 5, 0, 0, 0, 2, 2, 11])
    bits = sum(token << (11 * i) for i, token in enumerate([1, 2, 3, 4]))
    assert data[9:] == bits.to_bytes(6, "little")
    assert FRAME_HEADER_BYTES == 9


def test_hello_field_offsets() -> None:
    hello = EXAMPLES[0].values[0]
    data = hello.encode()
    assert data[2:4] == bytes([32, 24])
    assert struct.unpack_from("<III", data, 4) == (24_000, 1920, 2048)
    assert data[16:18] == bytes([1, 2])  # moshi, feedback
    assert struct.unpack_from("<QQ", data, 18) == (1_767_225_600_123_456, 2**64 - 1)
    assert data[34:66].hex() == SHA
    assert struct.unpack_from("<H", data, 66)[0] == len(hello.codec_config.encode())
    assert Hello.decode(data).frame_rate == 12.5


@pytest.mark.parametrize(
    ("data", "match"),
    [
        pytest.param(b"", "at least 2 bytes", id="empty"),
        pytest.param(bytes([9, 1]), "unknown message kind 9", id="unknown-kind"),
        pytest.param(bytes([0, 1]), "unknown message kind 0", id="kind-zero"),
        pytest.param(End(1, 5).encode()[:-1], "END message is 13 bytes, expected 14", id="short"),
        pytest.param(End(1, 5).encode() + b"\0", "END message is 15 bytes", id="long"),
        pytest.param(bytes([5, 1]) + struct.pack("<IQ", 1, 2**53), "num_samples", id="unsafe-u64"),
        pytest.param(bytes([2, 1]) + struct.pack("<IBBB", 0, 1, 1, 11) + b"\x01\xf8", "padding", id="padding"),
        pytest.param(bytes([2, 1]) + struct.pack("<IBBB", 0, 0, 1, 11), "at least 1", id="no-frames"),
        pytest.param(bytes([2, 1]) + struct.pack("<IBBB", 0, 1, 1, 17) + b"\0\0\0", "1-16", id="width"),
        pytest.param(bytes([2, 1]) + struct.pack("<IBBB", 2**32 - 1, 2, 1, 8) + b"\0\0", "past frame", id="index"),
        pytest.param(bytes([6, 1]) + struct.pack("<HH", 1, 2) + b"\xed\xa0", "UTF-8", id="bad-utf8"),
        pytest.param(bytes([3, 1]) + bytes(24) + b"\0" + struct.pack("<H", 1001), "loss_permille", id="loss"),
        pytest.param(bytes([4, 1]) + struct.pack("<IIBB", 0, 0, 0, 1), "level_count", id="bandwidth-levels"),
        pytest.param("text", "binary", id="text-message"),
    ],
)
def test_malformed_messages_are_protocol_errors(data: bytes | str, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode_message(data)


def test_unknown_version_is_a_version_error() -> None:
    data = bytearray(Feedback(0, 0, 0, 0, 0, 0, 0, 0).encode())
    data[1] = 2
    with pytest.raises(ProtocolError, match="unsupported protocol version 2 in a FEEDBACK") as caught:
        decode_message(bytes(data))
    assert caught.value.code == ErrorCode.VERSION


def test_hello_rules_are_checked_on_both_sides() -> None:
    base = EXAMPLES[0].values[0]
    for field, value, match in [
        ("max_levels", 33, "max_levels"),
        ("weights_sha256", "ABC", "hex digits"),
        ("cache_mode", "fast", "cache_mode"),
        ("num_samples", 2**53, "num_samples"),
        ("codebook_size", 0, "codebook_size"),
    ]:
        with pytest.raises(ProtocolError, match=match):
            Hello(**{**base.__dict__, field: value}).encode()
    data = bytearray(base.encode())
    data[3] = 40  # max_levels above num_levels
    with pytest.raises(ProtocolError, match="max_levels"):
        decode_message(bytes(data))
    data = bytearray(base.encode())
    data[16] = 7
    with pytest.raises(ProtocolError, match="cache mode 7"):
        decode_message(bytes(data))


def test_frame_rejects_tokens_wider_than_the_packing() -> None:
    with pytest.raises(ProtocolError, match="0-63"):
        Frame(0, np.array([[64]]), 6)
    with pytest.raises(ProtocolError, match="level_count"):
        Frame(0, np.zeros((256, 1), dtype=np.uint16), 11).encode()


# -- wire format: properties ---------------------------------------------------------------------------------------
U32 = st.integers(0, 2**32 - 1)
SAFE = st.integers(0, 2**53 - 1)


@st.composite
def hellos(draw: st.DrawFn) -> Hello:
    num_levels = draw(st.integers(1, 255))
    return Hello(
        num_levels=num_levels,
        max_levels=draw(st.integers(1, num_levels)),
        sample_rate=draw(st.integers(1, 2**32 - 1)),
        frame_size=draw(st.integers(1, 2**32 - 1)),
        codebook_size=draw(st.integers(1, 65536)),
        weights_sha256=draw(st.binary(min_size=32, max_size=32)).hex(),
        stream_start_us=draw(SAFE),
        num_samples=draw(st.none() | SAFE),
        cache_mode=draw(st.sampled_from(stream.CACHE_MODES)),
        rate_control=draw(st.sampled_from(stream.RATE_CONTROLS)),
        codec_config=draw(st.text(max_size=40)),
    )


@st.composite
def frames(draw: st.DrawFn) -> Frame:
    width = draw(st.integers(1, 16))
    levels, count = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    tokens = draw(st.lists(st.integers(0, (1 << width) - 1), min_size=levels * count, max_size=levels * count))
    first = draw(st.integers(0, 2**32 - count))
    return Frame(first, np.array(tokens).reshape(levels, count), width)


MESSAGES = st.one_of(
    hellos(),
    frames(),
    st.builds(
        Feedback,
        sequence=U32,
        frames_played=U32,
        frames_concealed=U32,
        level_count=st.integers(0, 255),
        delivered_bps=U32,
        loss_permille=st.integers(0, 1000),
        latency_us=U32,
        queue_delay_us=U32,
    ),
    st.builds(
        Bandwidth,
        from_frame=U32,
        estimate_bps=U32,
        level_count=st.integers(1, 255),
        frames_per_message=st.integers(1, 255),
    ),
    st.builds(End, num_frames=U32, num_samples=SAFE),
    st.builds(ErrorMessage, code=st.integers(0, 65535), text=st.text(max_size=60)),
)


@HYPOTHESIS
@given(MESSAGES)
def test_random_messages_round_trip(message: stream.Message) -> None:
    data = message.encode()
    decoded = decode_message(data)
    assert decoded == message
    assert decoded.encode() == data


def _decode_or_protocol_error(data: bytes) -> None:
    try:
        message = decode_message(data)
    except ProtocolError:
        return
    assert message.encode() == data  # whatever decodes is canonical: it re-encodes to the same bytes


@HYPOTHESIS
@given(
    st.binary(max_size=120)
    | st.tuples(st.integers(1, 6), st.binary(max_size=120)).map(
        lambda pair: bytes([pair[0], PROTOCOL_VERSION]) + pair[1]
    )
)
def test_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    _decode_or_protocol_error(data)


@HYPOTHESIS
@given(MESSAGES, st.data())
def test_mutated_messages_raise_only_protocol_errors(message: stream.Message, data: st.DataObject) -> None:
    raw = bytearray(message.encode())
    cut = data.draw(st.integers(0, len(raw)))
    raw = raw[:cut] if data.draw(st.booleans()) else raw
    for _ in range(data.draw(st.integers(1, 3))):
        if raw:
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    _decode_or_protocol_error(bytes(raw))


# -- the rate rule, schedules, the simulated link -------------------------------------------------------------------
@HYPOTHESIS
@given(st.floats(0, 20_000), st.integers(1, 16), st.integers(1, 32), st.integers(1, 16))
def test_plan_is_the_smallest_batch_and_the_most_levels_that_fit(
    bandwidth: float, width: int, max_levels: int, max_batch: int
) -> None:
    plan = plan_frames(bandwidth, bits_per_token=width, max_levels=max_levels, max_frames_per_message=max_batch)
    usable = bandwidth * 0.9 * 0.08

    def fits(frames: int, levels: int) -> bool:
        return 72 + frames * levels * width <= usable * frames + 1e-9

    assert 1 <= plan.level_count <= max_levels and 1 <= plan.frames_per_message <= max_batch
    if fits(plan.frames_per_message, plan.level_count):
        assert not any(fits(n, 1) for n in range(1, plan.frames_per_message))
        assert plan.level_count == max_levels or not fits(plan.frames_per_message, plan.level_count + 1)
    else:  # nothing fits: level 0 alone in the largest batch
        assert plan == Plan(max_batch, 1) and not fits(max_batch, 1)


def test_plan_for_mimi_bandwidths() -> None:
    assert plan_frames(6000) == Plan(1, 32)
    assert plan_frames(4400) == Plan(1, 22)  # (0.9 * 4400 * 0.08 - 72) / 11 = 22.25
    assert plan_frames(1000) == Plan(2, 3)
    assert plan_frames(500) == Plan(3, 1)
    assert plan_frames(200) == Plan(16, 1)  # oversubscribed: 193.75 bit/s on the wire


def test_schedule_parse_and_lookup() -> None:
    schedule = BandwidthSchedule.parse("0:200, 2:4.4k ,5:500")
    assert schedule.steps == ((0.0, 200.0), (2.0, 4400.0), (5.0, 500.0))
    assert [schedule.at(t) for t in (-1, 0, 1.99, 2, 4.9, 5, 100)] == [200, 200, 200, 4400, 4400, 500, 500]
    assert schedule.next_change(2) == 5 and schedule.next_change(5) is None
    assert str(schedule) == "0:200,2:4400,5:500"
    for bad, match in [
        ("1:200", "start at time 0"),
        ("0:200,3:100,2:50", "increase"),
        ("0-200", "SECONDS:BITRATE"),
        ("0:fast", "not a bitrate"),
        ("x:100", "not a number"),
        ("0:-5", "not a bitrate"),
    ]:
        with pytest.raises(ValueError, match=match):
            BandwidthSchedule.parse(bad)


def test_simulated_link_integrates_the_schedule() -> None:
    link = SimulatedLink(BandwidthSchedule.parse("0:100,1:1000"), start=10.0)
    assert link.transmit(200, 10.5) == pytest.approx(11.15)  # 50 bits before the change, 150 after
    assert link.transmit(100, 11.0) == pytest.approx(11.25)  # queued behind the first message
    assert link.transmit(100, 20.0) == pytest.approx(20.1)
    with pytest.raises(stream.StreamError, match="0 for good"):
        SimulatedLink(BandwidthSchedule.parse("0:0")).transmit(8, 0.0)


def test_simulated_link_crosses_changes_on_a_wall_clock() -> None:
    start = 1_767_225_600.123456  # a Unix time: start + 1.6 - start is not 1.6 in floating point
    link = SimulatedLink(BandwidthSchedule.parse("0:200,1.6:4400,3.2:500"), start=start)
    assert link.transmit(400, start + 1.5) - start == pytest.approx(1.6 + 380 / 4400)
    assert link.transmit(5000, start + 3.0) - start == pytest.approx(3.2 + (5000 - 0.2 * 4400) / 500)


def test_feedback_rate_backs_off_on_queueing_and_probes_when_clear() -> None:
    rate = FeedbackRate(1000, min_bps=100, max_bps=8000)

    def feedback(delay_ms: float, delivered: int) -> Feedback:
        return Feedback(0, 0, 0, 1, delivered, 0, 0, int(delay_ms * 1000))

    rate.on_feedback(feedback(10, 900), 0.0)
    assert rate.estimate(0.0) == pytest.approx(1250)
    rate.on_feedback(feedback(500, 600), 0.25)
    assert rate.estimate(0.25) == pytest.approx(510)  # 0.85 * delivered
    rate.on_feedback(feedback(10, 600), 0.5)  # holding while the queue drains
    assert rate.estimate(0.5) == pytest.approx(510)
    rate.on_feedback(feedback(10, 600), 1.5)
    assert rate.estimate(1.5) == pytest.approx(637.5)
    for step in range(40):
        rate.on_feedback(feedback(10, 600), 2 + step)
    assert rate.estimate(50) == 8000


# -- the receiver, without I/O -------------------------------------------------------------------------------------
START = 1000.0


def _hello(codec: Codec, num_samples: int | None = None, **fields: object) -> Hello:
    values = dict(
        num_levels=codec.num_levels,
        max_levels=codec.num_levels,
        sample_rate=codec.sample_rate,
        frame_size=codec.frame_size,
        codebook_size=codec.codebook_size,
        weights_sha256=codec.weights_sha256,
        stream_start_us=round(START * 1e6),
        num_samples=num_samples,
        codec_config=codec.config.to_json(),
    )
    values.update(fields)
    return Hello(**values)


def _capture(index: int) -> float:
    return START + (index + 1) * 0.08


class _Session:
    """A ReceiverSession with collected audio and a fake clock."""

    def __init__(self, codec: Codec, hello: Hello, **options: object) -> None:
        self.now = START
        self.audio: list[np.ndarray] = []
        self.replies: list[stream.Message] = []
        self.session = ReceiverSession(codec, on_audio=self.audio.append, clock=lambda: self.now, **options)
        self.width = hello.bits_per_token
        self.send(hello, START)

    def send(self, message: stream.Message, at: float) -> None:
        self.now = at
        self.replies += [decode_message(reply) for reply in self.session.handle(message.encode(), at)]

    def frame(self, codes: np.ndarray, first: int, levels: int, at: float | None = None) -> None:
        block = codes[:levels, first : first + 1] if codes.ndim == 2 else codes
        self.send(Frame(first, block, self.width), _capture(first) + 0.01 if at is None else at)

    def tick(self, at: float) -> None:
        self.now = at
        self.replies += [decode_message(reply) for reply in self.session.tick(at)]

    @property
    def pcm(self) -> np.ndarray:
        return np.concatenate(self.audio) if self.audio else np.zeros(0, dtype=np.float32)


@pytest.fixture(scope="module")
def speechlike(codec: Codec) -> tuple[np.ndarray, np.ndarray]:
    pcm = synthetic_signal(1.05, seed=3)  # 13.125 frames: the last one partial
    return pcm, codec.encode(pcm).codes


def _reference(codec: Codec, steps: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """Decode tokens `[num_levels]` with level counts, one frame at a time, as a receiver should."""
    decoder = codec.stream_decoder()
    return np.concatenate(
        [decoder.push(tokens[:, None], levels=Levels.prefix(levels, codec.num_levels)) for tokens, levels in steps]
    )


def test_receiver_decodes_each_frame_with_the_levels_it_got(codec: Codec, speechlike) -> None:
    pcm, codes = speechlike
    frames = codes.shape[1]
    levels = [1 + (7 * i) % codec.num_levels for i in range(frames)]
    receiver = _Session(codec, _hello(codec, num_samples=pcm.size))
    for index in range(frames):
        receiver.frame(codes, index, levels[index])
    receiver.send(End(frames, pcm.size), _capture(frames) + 0.01)
    report = receiver.session.report()
    assert report.complete and report.num_samples == pcm.size == receiver.pcm.size
    assert [r.levels_received for r in report.frames] == levels and not report.concealed
    expected = _reference(codec, [(codes[:, i], levels[i]) for i in range(frames)])[: pcm.size]
    np.testing.assert_array_equal(receiver.pcm, expected)
    assert all(0.009 < r.latency < 0.011 for r in report.frames[:-1])
    assert isinstance(receiver.replies[-1], Feedback) and receiver.replies[-1].frames_played == frames


def test_lost_frames_are_concealed_by_repeating_tokens_with_fewer_levels(codec: Codec, speechlike) -> None:
    pcm, codes = speechlike
    frames = codes.shape[1]
    lost = set(range(3, 11))  # a run of 8: repeat 16, 8, 4, 2, 1, 1, ... levels, fading out from the third
    receiver = _Session(codec, _hello(codec))
    for index in range(frames):
        if index not in lost:
            receiver.frame(codes, index, 32)
    receiver.send(End(frames, pcm.size), _capture(frames))
    report = receiver.session.report()
    assert receiver.pcm.size == pcm.size and np.isfinite(receiver.pcm).all()
    assert report.concealed == sorted(lost) and {r.concealed for r in report.frames if r.concealed} == {"lost"}
    assert [report.frames[i].levels_decoded for i in sorted(lost)] == [16, 8, 4, 2, 1, 1, 1, 1]
    for index in lost:
        np.testing.assert_array_equal(receiver.session.tokens[index], codes[:, 2])
    steps = [
        (codes[:, i], 32) if i not in lost else (codes[:, 2], report.frames[i].levels_decoded) for i in range(frames)
    ]
    reference = _reference(codec, steps)[: pcm.size]
    output = receiver.pcm
    np.testing.assert_array_equal(output[: 5 * FRAME], reference[: 5 * FRAME])  # two concealed frames at full gain
    assert np.abs(output[5 * FRAME : 8 * FRAME]).max() > 0  # fading out over frames 5-7
    assert not output[8 * FRAME : 11 * FRAME].any()  # silent from the sixth concealed frame
    np.testing.assert_allclose(
        output[12 * FRAME - 10 : 12 * FRAME], reference[12 * FRAME - 10 : 12 * FRAME], rtol=0.01, atol=1e-6
    )  # frame 11 fades back in
    np.testing.assert_array_equal(output[12 * FRAME :], reference[12 * FRAME :])


def test_first_frames_lost_give_silence_of_the_right_length(codec: Codec, speechlike) -> None:
    pcm, codes = speechlike
    frames = codes.shape[1]
    receiver = _Session(codec, _hello(codec, num_samples=pcm.size))
    for index in range(2, frames):
        receiver.frame(codes, index, 4)
    receiver.send(End(frames, pcm.size), _capture(frames))
    assert receiver.pcm.size == pcm.size
    assert not receiver.pcm[: 2 * FRAME].any() and receiver.pcm[3 * FRAME :].any()


def test_a_frame_missing_at_its_deadline_is_concealed_and_dropped_when_it_comes(codec: Codec, speechlike) -> None:
    _, codes = speechlike
    receiver = _Session(codec, _hello(codec), max_delay=0.5)
    receiver.frame(codes, 0, 8)
    receiver.frame(codes, 1, 8)
    receiver.tick(_capture(2) + 0.49)
    assert receiver.session.next_frame == 2
    assert receiver.session.next_wakeup() == pytest.approx(_capture(2) + 0.5)
    receiver.tick(_capture(2) + 0.51)
    assert receiver.session.next_frame == 3 and receiver.session.records[2].concealed == "deadline"
    receiver.frame(codes, 2, 8, at=_capture(2) + 0.55)  # too late: dropped
    receiver.frame(codes, 3, 8, at=_capture(2) + 0.56)
    records = receiver.session.records
    assert records[2].arrived_late and records[2].levels_received == 0 and records[3].levels_received == 8
    # the stream ends at 4 frames although a deadline already concealed frame 4 and 5: they are discarded
    receiver.tick(_capture(5) + 0.51)
    assert receiver.session.next_frame == 6
    receiver.send(End(4, 4 * FRAME - 100), _capture(5) + 0.52)
    assert len(receiver.session.records) == 4 and receiver.pcm.size == 4 * FRAME - 100


def test_without_end_the_output_stops_at_the_last_received_frame(codec: Codec, speechlike) -> None:
    _, codes = speechlike
    receiver = _Session(codec, _hello(codec), max_delay=0.2)
    for index in range(3):
        receiver.frame(codes, index, 2)
    receiver.tick(_capture(6) + 0.21)
    assert receiver.session.next_frame == 7
    receiver.session.finish()
    report = receiver.session.report()
    assert not report.complete and len(report.frames) == 3 and receiver.pcm.size == 3 * FRAME


def test_feedback_reports_levels_bitrate_loss_and_latency(codec: Codec, speechlike) -> None:
    _, codes = speechlike
    receiver = _Session(codec, _hello(codec), feedback_interval=0.25)
    sent = 0
    for index in (0, 1, 3):  # frame 2 lost
        message = Frame(index, codes[:5, index : index + 1], receiver.width)
        sent += len(message.encode())
        receiver.send(message, _capture(index) + 0.05)
    feedback = [reply for reply in receiver.replies if isinstance(reply, Feedback)]
    assert [f.sequence for f in feedback] == list(range(len(feedback))) and feedback
    last = feedback[-1]
    assert last.frames_played == 4 and last.frames_concealed == 1 and last.level_count == 5
    assert last.loss_permille == 250
    assert last.latency_us == pytest.approx(50_000, abs=1000)
    hello_bytes = len(_hello(codec).encode())
    assert last.delivered_bps == round((hello_bytes + sent) * 8 / (_capture(3) + 0.05 - START))


@pytest.mark.parametrize(
    ("setup", "message", "code", "match"),
    [
        pytest.param(False, End(0, 0), ErrorCode.STATE, "END before HELLO", id="before-hello"),
        pytest.param(True, "hello", ErrorCode.STATE, "second HELLO", id="second-hello"),
        pytest.param(True, Feedback(0, 0, 0, 0, 0, 0, 0, 0), ErrorCode.STATE, "FEEDBACK goes", id="feedback"),
        pytest.param(
            True, Frame(0, np.zeros((1, 1), dtype=int), 11), ErrorCode.PROTOCOL, "6 needs|needs 6", id="width"
        ),
        pytest.param(True, Frame(2000, np.zeros((1, 1), dtype=int), 6), ErrorCode.PROTOCOL, "jumps", id="gap"),
        pytest.param(True, End(2, 100), ErrorCode.PROTOCOL, "1 frames cover", id="end-mismatch"),
    ],
)
def test_session_rule_violations(codec: Codec, setup: bool, message: object, code: int, match: str) -> None:
    session = ReceiverSession(codec)
    if setup:
        session.handle(_hello(codec).encode(), START)
    data = _hello(codec).encode() if message == "hello" else message.encode()  # type: ignore[union-attr]
    with pytest.raises(ProtocolError, match=match) as caught:
        session.handle(data, START + 0.1)
    assert caught.value.code == code


def test_receiver_refuses_other_weights_and_configs(codec: Codec, tiny_codec: Codec) -> None:
    with pytest.raises(ProtocolError, match="weights sha256") as caught:
        ReceiverSession(codec).handle(_hello(tiny_codec).encode(), START)
    assert caught.value.code == ErrorCode.INCOMPATIBLE
    config = json.loads(codec.config.to_json()) | {"num_layers": 3}
    with pytest.raises(ProtocolError, match="codec config"):
        ReceiverSession(codec).handle(_hello(codec, codec_config=json.dumps(config)).encode(), START)
    with pytest.raises(ProtocolError, match="codebook_size 2048"):
        ReceiverSession(codec).handle(_hello(codec, codebook_size=2048).encode(), START)


def test_received_mimi_holds_the_guaranteed_levels_and_names_concealed_frames(
    codec: Codec, speechlike, tmp_path: Path
) -> None:
    pcm, codes = speechlike
    frames = codes.shape[1]
    receiver = _Session(codec, _hello(codec))
    for index in range(frames):
        if index != 4:
            receiver.frame(codes, index, 3 if index < 8 else 6)
    receiver.send(End(frames, pcm.size), _capture(frames))
    path = stream.write_received_mimi(receiver.session, tmp_path / "received.mimi")
    grid = read_grid(path)
    assert grid.levels_present == (0, 1, 2) and grid.num_frames == frames and grid.num_samples == pcm.size
    received = [i for i in range(frames) if i != 4]
    np.testing.assert_array_equal(grid.codes[:3, received], codes[:3, received])
    np.testing.assert_array_equal(grid.codes[:3, 4], codes[:3, 3])
    meta = grid.metadata["stream"]
    assert meta["concealed_frames"] == [[4, 1]]
    assert meta["levels_received"] == [[0, 4, 3], [4, 1, 0], [5, 3, 3], [8, frames - 8, 6]]
    with pytest.raises(FileExistsError):
        stream.write_received_mimi(receiver.session, path)


# -- whole sessions on 127.0.0.1 ------------------------------------------------------------------------------------
SCHEDULE = "0:200,1.6:4400,3.2:500"


def _run(coroutine: object, timeout: float = 60) -> object:
    return asyncio.run(asyncio.wait_for(coroutine, timeout))  # type: ignore[arg-type]


async def _session_through_relay(
    codec: Codec, pcm: np.ndarray, schedule: BandwidthSchedule, rate: object, seed: int, **receiver_options: object
) -> tuple:
    audio: list[np.ndarray] = []
    async with StreamReceiver(codec, on_audio=audio.append, **receiver_options) as receiver:
        async with LossyRelay(receiver.uri, schedule, loss=0.1, seed=seed) as relay:
            sent = await send_stream(relay.uri, codec, ArraySource(pcm), rate)  # type: ignore[arg-type]
        report = await receiver.wait(10)
    return sent, report, relay.stats, np.concatenate(audio), receiver.session


def test_stream_follows_the_schedule_conceals_loss_and_keeps_latency_bounded(codec: Codec) -> None:
    pcm = synthetic_signal(4.5, seed=11)  # 56.25 frames
    schedule = BandwidthSchedule.parse(SCHEDULE)
    started = time.perf_counter()
    sent, report, relay, audio, session = _run(
        _session_through_relay(codec, pcm, schedule, ScheduledRate(schedule), seed=15, max_delay=4.0)
    )
    elapsed = time.perf_counter() - started
    hello = report.hello
    frames = -(-pcm.size // FRAME)

    # continuous, frame-aligned, exactly as long as the input
    assert report.complete and sent.num_frames == frames == len(report.frames)
    assert audio.size == report.num_samples == pcm.size and np.isfinite(audio).all()
    assert [r.index for r in report.frames] == list(range(frames))

    # every frame the relay dropped was concealed, and nothing else
    assert set(range(9, 18)) <= set(relay.dropped_frames), "seed 15 drops the second 200 bit/s batch"
    assert report.concealed == sorted(relay.dropped_frames) and not relay.queue_dropped_frames
    assert all(r.concealed == "lost" for r in report.frames if r.concealed)

    # the level count follows the budget within a few frames of each change
    changes = [t for t, _ in schedule.steps]
    few = 3 * 0.08
    for start, stop in zip(changes, [*changes[1:], math.inf]):
        plan = plan_frames(schedule.at(start), bits_per_token=hello.bits_per_token, max_levels=hello.max_levels)
        settled = [
            r
            for r in report.frames
            if not r.concealed and start + few <= r.capture_time - _stream_start(report) < stop - few
        ]
        assert settled, f"no received frame between {start} s and {stop} s"
        assert {r.levels_received for r in settled} == {plan.level_count}, (start, plan)
    assert {plan.level_count for _, _, plan in sent.plans} == {1, 32, 2}

    # latency: bounded by batching at 200 bit/s, short at 4400 bit/s
    latencies = report.latencies()
    assert latencies.max() < 3.5  # max_delay is 4 s: nothing waited for the deadline
    fast = [r.latency for r in report.frames if not r.concealed and 1.9 <= r.capture_time - _stream_start(report) < 3.1]
    assert np.median(fast) < 0.5

    # the receiver got exactly the sender's tokens (how it decodes them: test_receiver_decodes_each_frame_...)
    for record in report.frames:
        if not record.concealed:
            levels = record.levels_received
            np.testing.assert_array_equal(session.tokens[record.index][:levels], sent.codes[:levels, record.index])
    silent = _silent_frames(report)
    blocks = np.pad(audio, (0, frames * FRAME - audio.size)).reshape(frames, FRAME)
    assert not blocks[silent].any() and all(blocks[i].any() for i in range(frames) if i not in silent)
    assert sent.feedback and sent.feedback[-1].frames_played == frames
    assert elapsed < 30


def _stream_start(report: stream.ReceiverReport) -> float:
    return report.hello.stream_start_us / 1e6


def _silent_frames(report: stream.ReceiverReport) -> list[int]:
    """Frames the concealment has faded out completely: from the sixth of a run of concealed frames on, and any
    before the first received frame."""
    silent, run, received = [], 0, False
    for record in report.frames:
        run = run + 1 if record.concealed else 0
        received = received or not record.concealed
        if run >= 6 or (record.concealed and not received):
            silent.append(record.index)
    return silent


def test_feedback_rate_control_adapts_to_the_link(codec: Codec) -> None:
    pcm = synthetic_signal(5.0, seed=5)
    schedule = BandwidthSchedule.parse("0:4400,2.5:400")
    rate = FeedbackRate(1000)
    sent, report, _, audio, _ = _run(_session_through_relay(codec, pcm, schedule, rate, seed=1, max_delay=4.0))
    start = _stream_start(report)
    assert audio.size == pcm.size and report.complete
    high = [r.levels_received for r in report.frames if not r.concealed and 1.0 <= r.capture_time - start < 2.5]
    low = [r.levels_received for r in report.frames if not r.concealed and r.capture_time - start >= 4.0]
    assert high and low and max(high) > max(low), (high, low)
    first_plan = sent.plans[0][2].level_count
    assert max(plan.level_count for _, _, plan in sent.plans) > first_plan  # it probed up from 1000 bit/s
    assert sent.plans[-1][1] < 1000  # and backed off below 1000 bit/s when the link fell to 400
    assert report.latencies().max() < 4.0 + 0.5


def test_sender_gets_an_incompatible_error_for_other_weights(codec: Codec, tiny_codec: Codec) -> None:
    async def scenario() -> ErrorCode:
        async with StreamReceiver(codec) as receiver:
            with pytest.raises(RemoteError, match="INCOMPATIBLE: the sender's codec does not match") as caught:
                await send_stream(receiver.uri, tiny_codec, ArraySource(synthetic_signal(2.0)), stream.FixedRate(2000))
            report = await receiver.wait(5)
        assert "weights sha256" in report.error and not report.frames
        return caught.value.message.code

    assert _run(scenario(), 30) == ErrorCode.INCOMPATIBLE


def test_a_second_sender_is_refused_while_a_stream_runs(codec: Codec) -> None:
    import websockets

    async def scenario() -> stream.Message:
        async with StreamReceiver(codec, warmup=False) as receiver:
            async with websockets.connect(receiver.uri) as first:
                await first.send(_hello(codec, stream_start_us=round(time.time() * 1e6)).encode())
                async with websockets.connect(receiver.uri) as second:
                    return decode_message(await asyncio.wait_for(second.recv(), 5))

    refused = _run(scenario(), 30)
    assert isinstance(refused, ErrorMessage) and refused.code == ErrorCode.STATE and "already" in refused.text


def test_listening_beyond_loopback_needs_an_explicit_flag(codec: Codec) -> None:
    for host in ("127.0.0.1", "127.1.2.3", "::1", "localhost"):
        stream.check_listen_host(host, allow_remote=False)
    for host in ("0.0.0.0", "192.168.1.5", "example.org", "::"):
        with pytest.raises(ValueError, match="refusing to listen"):
            stream.check_listen_host(host, allow_remote=False)
    stream.check_listen_host("0.0.0.0", allow_remote=True)
    with pytest.raises(ValueError, match="--allow-remote"):
        StreamReceiver(codec, host="0.0.0.0")


# -- command line --------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port}")


def test_cli_send_and_receive(
    tmp_path: Path, tiny_checkpoint: Path, tiny_onnx_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both commands on their default engine, ONNX Runtime on a CPU (the session's export of these weights is in
    the cache, as a user's first run would leave it)."""
    from mimistack.audio import load_audio, save_audio

    source = tmp_path / "in.wav"
    save_audio(source, synthetic_signal(2.1, seed=2))
    out, mimi = tmp_path / "out.wav", tmp_path / "out.mimi"
    port = _free_port()
    status: dict[str, int] = {}
    receiving = threading.Thread(
        target=lambda: status.setdefault(
            "receive",
            main(
                [
                    "stream",
                    "receive",
                    "--listen",
                    f"127.0.0.1:{port}",
                    "-o",
                    str(out),
                    "--mimi",
                    str(mimi),
                    "--weights",
                    str(tiny_checkpoint),
                    "--idle-timeout",
                    "20",
                ]
            ),
        )
    )
    receiving.start()
    _wait_for_port(port)
    status["send"] = main(
        ["stream", "send", str(source), f"ws://127.0.0.1:{port}", "--bitrate", "2k", "--weights", str(tiny_checkpoint)]
    )
    receiving.join(30)
    captured = capsys.readouterr()
    assert status == {"send": 0, "receive": 0}, captured.err
    assert f"listening on ws://127.0.0.1:{port}" in captured.err
    expected = plan_frames(2000, bits_per_token=6).level_count  # the tiny codec's tokens are 6 bits
    assert "sent 27 frames (2.10 s)" in captured.out and f"{expected:.1f} levels per frame" in captured.out
    assert f"received with {expected:.1f} levels" in captured.out
    assert load_audio(out).size == load_audio(source).size
    grid = read_grid(mimi)
    assert grid.num_frames == 27 and len(grid.levels_present) == expected


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            ["stream", "receive", "--listen", "0.0.0.0:9", "-o", "{tmp}/o.wav"], "refusing to listen", id="remote"
        ),
        pytest.param(["stream", "receive", "--listen", "9", "-o", "{tmp}/o.wav"], "HOST:PORT", id="listen-format"),
        pytest.param(["stream", "receive", "-o", "{tmp}/exists.wav"], "exists; pass --force", id="overwrite"),
        pytest.param(["stream", "receive", "-o", "{tmp}/o.mp3"], ".wav or .flac", id="format"),
        pytest.param(["stream", "send", "ws://127.0.0.1:9"], "input file or --mic", id="no-source"),
        pytest.param(["stream", "send", "{tmp}/exists.wav", "http://x"], "ws:// or wss://", id="uri"),
        pytest.param(
            ["stream", "send", "{tmp}/exists.wav", "ws://127.0.0.1:9", "--schedule", "3:100"],
            "start at time 0",
            id="schedule",
        ),
        pytest.param(
            ["stream", "send", "{tmp}/exists.wav", "ws://127.0.0.1:9", "--schedule", "0:100", "--bitrate", "5"],
            "cannot be combined",
            id="both-rates",
        ),
    ],
)
def test_cli_rejects_bad_requests(
    tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "exists.wav").write_bytes(b"")
    code = main([arg.replace("{tmp}", str(tmp_path)) for arg in argv] + ["--weights", "random-tiny"])
    assert code == 2
    assert message in capsys.readouterr().err


def test_cli_mic_without_sounddevice_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails as if the package were missing
    assert main(["stream", "send", "--mic", "ws://127.0.0.1:9", "--weights", "random-tiny"]) == 1
    assert "pip install sounddevice" in capsys.readouterr().err


def test_cli_send_reports_an_unreachable_receiver(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mimistack.audio import save_audio

    save_audio(tmp_path / "in.wav", synthetic_signal(0.5))
    port = _free_port()
    assert (
        main(
            [
                "stream",
                "send",
                str(tmp_path / "in.wav"),
                f"ws://127.0.0.1:{port}",
                "--bitrate",
                "1000",
                "--weights",
                "random-tiny",
            ]
        )
        == 1
    )
    assert f"cannot connect to the receiver at ws://127.0.0.1:{port}" in capsys.readouterr().err
