"""Progressive, bandwidth-adaptive streaming of Mimi tokens over WebSocket (spec: `docs/protocol.md`).

Transport layer. Sits on `codec` (`Codec.stream_encoder()` / `stream_decoder()`), `levels`, `mimifile`
(`pack_tokens`, `FrameStreamWriter` for the received `.mimi`) and `audio` (`iter_audio`); used by `cli.stream`
(`mimistack stream send|receive`), `bench/bench_stream.py`, and mirrored for the browser by
`web/src/client/protocol.ts`.

Modules, bottom to top:

* `protocol`: the vocabulary: version, limits, `MessageKind`, `ErrorCode`, `ProtocolError`, `StreamError`;
* `messages`: the wire format: one frozen dataclass per kind (`Hello`, `Frame`, `Feedback`, `Bandwidth`, `End`,
  `ErrorMessage`) with `encode()`, and `decode_message(bytes)`; anything malformed raises `ProtocolError`;
* `rate`: the rate rule: `plan_frames(bandwidth)` -> how many frames go in one FRAME message and how many levels
  each carries; `BandwidthSchedule` ("0:200,2:4400,5:500"), and the estimators `FixedRate`, `ScheduledRate`,
  `FeedbackRate`;
* `net`: what every WebSocket endpoint shares (the optional import, the loopback rule, ERROR replies);
* `session`: `ReceiverSession` (sans-IO: bytes and arrival times in, decoded audio and replies out; conceals lost
  and late frames), recording a `FrameRecord` per frame into its `ReceiverReport` (`report`);
* `receiver`: `StreamReceiver` (serves one session on a WebSocket) and `write_received_mimi`;
* `sources` and `sender`: `send_stream` with the sources `ArraySource`, `FileSource`, `MicSource`;
* `simulate`: the network simulator: `SimulatedLink` (a paced bottleneck following a schedule) inside
  `LossyRelay`, a WebSocket relay on 127.0.0.1 that drops FRAME messages at random (seeded), for tests and the
  benchmark.
"""

from __future__ import annotations

from .messages import (
    FRAME_HEADER_BYTES,
    Bandwidth,
    End,
    ErrorMessage,
    Feedback,
    Frame,
    Hello,
    Message,
    RemoteError,
    decode_message,
)
from .net import check_listen_host
from .protocol import (
    CACHE_MODES,
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    RATE_CONTROLS,
    UNKNOWN_SAMPLES,
    ErrorCode,
    MessageKind,
    ProtocolError,
    StreamError,
)
from .rate import (
    BandwidthSchedule,
    FeedbackRate,
    FixedRate,
    Plan,
    RateController,
    ScheduledRate,
    parse_bitrate,
    plan_frames,
)
from .receiver import StreamReceiver, write_received_mimi
from .report import FrameRecord, ReceiverReport
from .sender import SenderReport, SenderStatus, send_stream
from .session import ReceiverSession, check_compatible
from .simulate import LossyRelay, RelayStats, SimulatedLink
from .sources import ArraySource, AudioSource, FileSource, MicSource

__all__ = [
    "CACHE_MODES",
    "FRAME_HEADER_BYTES",
    "MAX_MESSAGE_BYTES",
    "PROTOCOL_VERSION",
    "RATE_CONTROLS",
    "UNKNOWN_SAMPLES",
    "ArraySource",
    "AudioSource",
    "Bandwidth",
    "BandwidthSchedule",
    "End",
    "ErrorCode",
    "ErrorMessage",
    "Feedback",
    "FeedbackRate",
    "FileSource",
    "FixedRate",
    "Frame",
    "FrameRecord",
    "Hello",
    "LossyRelay",
    "Message",
    "MessageKind",
    "MicSource",
    "Plan",
    "ProtocolError",
    "RateController",
    "ReceiverReport",
    "ReceiverSession",
    "RelayStats",
    "RemoteError",
    "ScheduledRate",
    "SenderReport",
    "SenderStatus",
    "SimulatedLink",
    "StreamError",
    "StreamReceiver",
    "check_compatible",
    "check_listen_host",
    "decode_message",
    "parse_bitrate",
    "plan_frames",
    "send_stream",
    "write_received_mimi",
]
