"""The TypeScript mirror of the streaming protocol (`web/src/client/protocol.ts`) against the Python one
(`mimistack.stream`).

`web/src/client/protocol.ts` is compiled with tsc (strict, the flags a Vite app uses) and driven in Node by
`tests/js_protocol/run.mjs`: every message kind round-trips in JS; bytes Python writes decode in JS to the same
fields and re-encode to the same bytes, and the other way round; both reject the same malformed bytes with the same
error code; both plan the same levels for a bandwidth. Needs node and `npm ci --prefix tests/js_protocol`.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mimistack import stream
from mimistack.stream import (
    Bandwidth,
    End,
    ErrorMessage,
    Feedback,
    Frame,
    Hello,
    ProtocolError,
    decode_message,
    plan_frames,
)
from ts_harness import HARNESS, TSC, TSC_FLAGS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def protocol_js(tmp_path_factory: pytest.TempPathFactory) -> Path:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed; the TypeScript protocol mirror cannot be tested")
    if not TSC.exists():
        pytest.fail(f"TypeScript is not installed for the protocol tests: run npm ci --prefix {HARNESS}")
    out = tmp_path_factory.mktemp("protocol-js")
    result = subprocess.run(
        [
            node,
            str(TSC),
            str(REPO / "web" / "src" / "client" / "protocol.ts"),
            "--outDir",
            str(out),
            *TSC_FLAGS,
            "--noUncheckedIndexedAccess",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"tsc failed on web/src/client/protocol.ts:\n{result.stdout}{result.stderr}"
    (out / "package.json").write_text('{"type": "module"}\n')
    return out / "client" / "protocol.js"  # tsc keeps the layout below web/src (it also compiles ../packing.ts)


def _node(protocol_js: Path, command: str, payload: Any, tmp_path: Path) -> Any:
    source, target = tmp_path / f"{command}-in.json", tmp_path / f"{command}-out.json"
    source.write_text(json.dumps(payload))
    result = subprocess.run(
        ["node", str(HARNESS / "run.mjs"), str(protocol_js), command, str(source), str(target)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert target.exists(), f"run.mjs {command} wrote nothing:\n{result.stdout}{result.stderr}"
    output = json.loads(target.read_text())
    assert result.returncode == 0, f"run.mjs {command} failed: {json.dumps(output)[:2000]}\n{result.stderr}"
    return output


# -- messages as the JSON both sides exchange (TypeScript field names) ---------------------------------------------
def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def to_json(message: stream.Message) -> dict[str, Any]:
    if isinstance(message, Frame):
        return {
            "kind": int(message.kind),
            "firstFrame": message.first_frame,
            "frameCount": message.frame_count,
            "levelCount": message.level_count,
            "bitsPerToken": message.bits_per_token,
            "tokens": message.codes.T.ravel().tolist(),
        }
    fields = {_camel(field.name): getattr(message, field.name) for field in dataclasses.fields(message)}
    return {"kind": int(message.kind), **{key: int(v) if isinstance(v, int) else v for key, v in fields.items()}}


def from_json(data: dict[str, Any]) -> stream.Message:
    kinds = {int(cls.kind): cls for cls in (Hello, Frame, Feedback, Bandwidth, End, ErrorMessage)}
    cls = kinds[data["kind"]]
    if cls is Frame:
        tokens = np.array(data["tokens"], dtype=np.int64).reshape(data["frameCount"], data["levelCount"]).T
        return Frame(data["firstFrame"], tokens, data["bitsPerToken"])
    names = {_camel(field.name): field.name for field in dataclasses.fields(cls)}
    return cls(**{names[key]: value for key, value in data.items() if key != "kind"})


def test_json_field_names_match_the_typescript_interfaces() -> None:
    source = (REPO / "web" / "src" / "client" / "protocol.ts").read_text()
    for cls in (Hello, Feedback, Bandwidth, End, ErrorMessage):
        interface = re.search(rf"export interface {cls.__name__} \{{(.*?)\n\}}", source, re.S)
        assert interface, f"no interface {cls.__name__} in protocol.ts"
        declared = set(re.findall(r"^\s+(\w+):", interface.group(1), re.M)) - {"kind"}
        assert declared == {_camel(field.name) for field in dataclasses.fields(cls)}, cls.__name__
    kinds = dict(re.findall(r"^\s+(\w+): (\d+),$", source.split("export const MessageKind")[1].split("}")[0], re.M))
    assert {name: int(value) for name, value in kinds.items()} == {kind.name: kind.value for kind in stream.MessageKind}


# -- sample messages -----------------------------------------------------------------------------------------------
def _text(rng: random.Random, size: int) -> str:
    alphabet = 'abc XYZ 019 {}":,é✓🎧\u00a0\ufeff\u2028'
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(size + 1)))


def random_message(rng: random.Random) -> stream.Message:
    u32 = lambda: rng.choice([0, 1, 255, 65536, 2**31, 2**32 - 1, rng.randrange(2**32)])  # noqa: E731
    kind = rng.randrange(6)
    if kind == 0:
        levels = rng.randrange(1, 256)
        return Hello(
            num_levels=levels,
            max_levels=rng.randrange(1, levels + 1),
            sample_rate=rng.randrange(1, 2**32),
            frame_size=rng.randrange(1, 2**32),
            codebook_size=rng.randrange(1, 65537),
            weights_sha256=rng.randbytes(32).hex(),
            stream_start_us=rng.randrange(2**53),
            num_samples=rng.choice([None, 0, 2**53 - 1, rng.randrange(2**53)]),
            cache_mode=rng.choice(stream.CACHE_MODES),
            rate_control=rng.choice(stream.RATE_CONTROLS),
            codec_config=_text(rng, 30),
        )
    if kind == 1:
        width, levels, count = rng.randrange(1, 17), rng.randrange(1, 9), rng.randrange(1, 9)
        codes = np.array([[rng.randrange(1 << width) for _ in range(count)] for _ in range(levels)])
        return Frame(rng.randrange(2**32 - count + 1), codes, width)
    if kind == 2:
        return Feedback(
            sequence=u32(),
            frames_played=u32(),
            frames_concealed=u32(),
            level_count=rng.randrange(256),
            delivered_bps=u32(),
            loss_permille=rng.randrange(1001),
            latency_us=u32(),
            queue_delay_us=u32(),
        )
    if kind == 3:
        return Bandwidth(
            from_frame=u32(),
            estimate_bps=u32(),
            level_count=rng.randrange(1, 256),
            frames_per_message=rng.randrange(1, 256),
        )
    if kind == 4:
        return End(num_frames=u32(), num_samples=rng.randrange(2**53))
    return ErrorMessage(code=rng.randrange(65536), text=_text(rng, 40))


@pytest.fixture(scope="module")
def messages() -> list[stream.Message]:
    rng = random.Random(2024)
    samples = [random_message(rng) for _ in range(400)]
    kinds = {message.kind for message in samples}
    assert kinds == set(stream.MessageKind)
    return samples


# -- tests ---------------------------------------------------------------------------------------------------------
def test_js_round_trips_every_kind_and_survives_fuzzing(protocol_js: Path, tmp_path: Path) -> None:
    result = _node(protocol_js, "selftest", {"fuzz": 20_000, "seed": 7}, tmp_path)
    assert result["kinds"] == {kind.name: "ok" for kind in stream.MessageKind}
    assert result["fuzz"]["tried"] == 20_000 and result["fuzz"]["crashCount"] == 0
    assert result["fuzz"]["accepted"] > 0  # the fuzzer reaches valid messages too, which must be canonical


def test_python_bytes_decode_to_the_same_fields_in_js(protocol_js: Path, messages: list, tmp_path: Path) -> None:
    encoded = [message.encode().hex() for message in messages]
    results = _node(protocol_js, "decode", encoded, tmp_path)
    for message, data, result in zip(messages, encoded, results):
        assert result["ok"], (message, result)
        assert result["message"] == to_json(message)
        assert result["reencoded"] == data


def test_js_bytes_decode_to_the_same_message_in_python(protocol_js: Path, messages: list, tmp_path: Path) -> None:
    results = _node(protocol_js, "encode", [to_json(message) for message in messages], tmp_path)
    for message, result in zip(messages, results):
        assert result["ok"], (message, result)
        data = bytes.fromhex(result["hex"])
        assert data == message.encode()
        assert decode_message(data) == message
        assert from_json(to_json(message)) == message


def _mutations(messages: list[stream.Message], rng: random.Random) -> list[bytes]:
    cases = []
    for message in messages:
        data = message.encode()
        for _ in range(4):
            raw = bytearray(data)
            choice = rng.randrange(4)
            if choice == 0:
                raw = raw[: rng.randrange(len(raw) + 1)]
            elif choice == 1:
                raw += rng.randbytes(rng.randrange(1, 4))
            elif choice == 2:
                raw[1] = rng.choice([0, 2, 255])
            for _ in range(rng.randrange(1, 3)):
                if raw:
                    raw[rng.randrange(len(raw))] = rng.randrange(256)
            cases.append(bytes(raw))
    cases += [rng.randbytes(rng.randrange(40)) for _ in range(300)]
    cases += [bytes([rng.randrange(1, 7), 1]) + rng.randbytes(rng.randrange(80)) for _ in range(300)]
    return cases


def test_both_sides_reject_the_same_malformed_bytes(protocol_js: Path, messages: list, tmp_path: Path) -> None:
    cases = _mutations(messages, random.Random(99))
    results = _node(protocol_js, "decode", [case.hex() for case in cases], tmp_path)
    accepted = 0
    for case, result in zip(cases, results):
        try:
            message = decode_message(case)
        except ProtocolError as error:
            assert not result["ok"] and result["error"] == "ProtocolError", (case.hex(), result)
            assert result["code"] == error.code, (case.hex(), str(error), result)
        else:
            accepted += 1
            assert result["ok"], (case.hex(), message, result)
            assert result["message"] == to_json(message) and result["reencoded"] == case.hex()
    assert 0 < accepted < len(cases)


def test_both_sides_refuse_to_encode_the_same_bad_fields(protocol_js: Path, tmp_path: Path) -> None:
    hello = to_json(
        Hello(
            num_levels=8,
            max_levels=8,
            sample_rate=24_000,
            frame_size=1920,
            codebook_size=2048,
            weights_sha256="ab" * 32,
            stream_start_us=1,
            num_samples=None,
        )
    )
    frame = to_json(Frame(0, np.array([[5]]), 11))
    bad = [
        hello | {"maxLevels": 9},
        hello | {"numSamples": 2**53},
        hello | {"weightsSha256": "AB" * 32},
        hello | {"cacheMode": "fast"},
        hello | {"codecConfig": "\ud800"},
        frame | {"tokens": [2048]},
        frame | {"levelCount": 0, "tokens": []},
        frame | {"firstFrame": 2**32 - 1, "frameCount": 2, "tokens": [1, 2]},
        to_json(End(0, 0)) | {"numSamples": -1},
        to_json(ErrorMessage(1, "x")) | {"code": 65536},
        to_json(Feedback(0, 0, 0, 0, 0, 0, 0, 0)) | {"lossPermille": 1001},
    ]
    results = _node(protocol_js, "encode", bad, tmp_path)
    for case, result in zip(bad, results):
        assert not result["ok"] and result["error"] == "ProtocolError", (case, result)
        with pytest.raises((ProtocolError, ValueError)):
            from_json(case).encode()


def test_both_sides_plan_the_same_levels(protocol_js: Path, tmp_path: Path) -> None:
    rng = random.Random(5)
    cases = []
    for bandwidth in [0, 1, 99.5, 137.5, 200, 250, 500, 1000, 1375.25, 4400, 6000, 1e6] + [
        rng.uniform(0, 8000) for _ in range(300)
    ]:
        options = {
            "bitsPerToken": rng.choice([6, 11, 16]),
            "maxLevels": rng.choice([1, 8, 32]),
            "utilization": rng.choice([0.9, 1.0, 0.75]),
            "maxFramesPerMessage": rng.choice([1, 4, 16]),
        }
        cases.append([bandwidth, options])
    plans = _node(protocol_js, "plan", cases, tmp_path)
    for (bandwidth, options), plan in zip(cases, plans):
        expected = plan_frames(
            bandwidth,
            bits_per_token=options["bitsPerToken"],
            max_levels=options["maxLevels"],
            utilization=options["utilization"],
            max_frames_per_message=options["maxFramesPerMessage"],
        )
        assert plan == {"framesPerMessage": expected.frames_per_message, "levelCount": expected.level_count}
