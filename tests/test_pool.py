"""Stream pools (`mimistack.pool`): many streams advanced together in one batched engine call per step.

Every engine with pools (the numpy fake, torch, ONNX Runtime) is held to the same promises: a slot's output equals
a single stream of the same input fed frame by frame (codes: exact on the fake, up to near-ties on real engines;
audio within 1e-5), slots join and leave at any time, a slot reused after a close starts from nothing, slots
without a frame cost nothing, and each decode slot keeps its own level set.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mimistack.codec import Codec
from mimistack.config import MimiConfig
from mimistack.engine.base import EngineError
from mimistack.engine.fake import FakeEngine
from mimistack.engine.onnx_format import MANIFEST_NAME
from mimistack.engine.options import OnnxOptions
from mimistack.levels import Levels
from mimistack.pool import PoolError, PoolFullError, StreamPool
from mimistack.testing import synthetic_signal
from near_ties import assert_near_ties_only

AUDIO_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def fake_codec() -> Codec:
    return Codec(FakeEngine.create("tiny"))


@pytest.fixture(scope="module")
def onnx_codec(tiny_onnx_dir: Path) -> Codec:
    return Codec.load(engine=OnnxOptions(onnx_dir=tiny_onnx_dir))


@pytest.fixture(scope="module", params=["fake", "torch", "onnx"])
def codec(request: pytest.FixtureRequest) -> Codec:
    name = {"fake": "fake_codec", "torch": "tiny_codec", "onnx": "onnx_codec"}[request.param]
    return request.getfixturevalue(name)


def clips(count: int, seed: int = 0) -> list[np.ndarray]:
    """Clips of different lengths, none a whole number of frames."""
    return [synthetic_signal(0.9 + 0.37 * i, seed=seed + i) for i in range(count)]


def single_encode(codec: Codec, pcm: np.ndarray, mode: str = "window") -> np.ndarray:
    """The reference: one stream encoder fed one frame at a time."""
    encoder = codec.stream_encoder(mode=mode)  # type: ignore[arg-type]
    size = codec.frame_size
    parts = [encoder.push(pcm[i : i + size]) for i in range(0, len(pcm), size)]
    parts.append(encoder.flush())
    return np.concatenate(parts, axis=1).astype(np.int64)


def single_decode(codec: Codec, codes: np.ndarray, levels: Levels, mode: str = "window") -> np.ndarray:
    decoder = codec.stream_decoder(levels, mode=mode)  # type: ignore[arg-type]
    return np.concatenate([decoder.push(codes[:, t]) for t in range(codes.shape[1])])


def check_codes(codec: Codec, tiny_codec: Codec, pcm: np.ndarray, codes: np.ndarray, reference: np.ndarray) -> None:
    """Exact on the fake; on real engines every differing frame starts at a near-tie and at most 2 frames differ
    (these clips are 12-20 frames: one near-tied frame is 3-8 % of their tokens, so no token-share floor here)."""
    if codec.engine.name == "fake":
        np.testing.assert_array_equal(codes, reference)
    else:
        assert_near_ties_only(tiny_codec, pcm, codes, reference)


def run_staggered(pool: StreamPool, inputs: list[np.ndarray], starts: list[int], frame_size: int) -> list[Any]:
    """Open slot i at step starts[i], push one frame of pcm a step; returns (slot ids, codes per slot)."""
    slots: dict[int, int] = {}
    offsets = [0] * len(inputs)
    step = 0
    while len(slots) < len(inputs) or any(not pool.done(slot) for slot in slots.values()):
        for i, start in enumerate(starts):
            if start == step:
                slots[i] = pool.open()
        for i, slot in slots.items():
            if offsets[i] < len(inputs[i]):
                pool.push_pcm(slot, inputs[i][offsets[i] : offsets[i] + frame_size])
                offsets[i] += frame_size
                if offsets[i] >= len(inputs[i]):
                    pool.finish(slot)
        pool.step()
        step += 1
        assert step < 500
    return [(slots[i], pool.pull_codes(slots[i])) for i in range(len(inputs))]


# -- the promises, on every engine ------------------------------------------------------------------------
def test_staggered_encode_slots_equal_single_streams(codec: Codec, tiny_codec: Codec) -> None:
    inputs = clips(4)
    pool = codec.stream_pool(4, "encode")
    results = run_staggered(pool, inputs, starts=[0, 3, 3, 7], frame_size=codec.frame_size)
    for pcm, (_, codes) in zip(inputs, results, strict=True):
        reference = single_encode(codec, pcm)
        assert codes.shape == reference.shape == (codec.num_levels, codec.config.num_frames(len(pcm)))
        check_codes(codec, tiny_codec, pcm, codes, reference)


def test_decode_slots_keep_their_own_level_sets(codec: Codec) -> None:
    grids = [codec.encode(pcm) for pcm in clips(3, seed=10)]
    level_sets = [Levels.parse(spec, codec.num_levels) for spec in ("all", "0-7", "0,2,9")]
    pool = codec.stream_pool(3, "decode")
    slots = [pool.open(levels=levels) for levels in level_sets]
    for slot, grid in zip(slots, grids, strict=True):
        pool.push_codes(slot, grid.codes)
    steps = pool.drain()
    assert steps == max(grid.num_frames for grid in grids)
    for slot, grid, levels in zip(slots, grids, level_sets, strict=True):
        pcm = pool.pull_pcm(slot)
        reference = single_decode(codec, grid.codes.astype(np.int64), levels)
        assert pcm.shape == reference.shape
        np.testing.assert_allclose(pcm, reference, atol=AUDIO_TOLERANCE, rtol=0)


def test_a_slot_reused_after_a_close_is_a_fresh_stream(codec: Codec, tiny_codec: Codec) -> None:
    first, second, other = clips(3, seed=20)
    pool = codec.stream_pool(2, "both")
    neighbour = pool.open()
    used = pool.open()
    size = codec.frame_size
    for t in range(0, min(len(first), len(other)), size):  # both sides of `used` get a history
        pool.push_pcm(used, first[t : t + size])
        pool.push_pcm(neighbour, other[t : t + size])
        pool.step()
    grid = codec.encode(other)
    pool.push_codes(used, grid.codes[:, :5])
    pool.drain()
    pool.close(used)
    with pytest.raises(PoolError, match="no open stream slot"):
        pool.push_pcm(used, first[:size])
    again = pool.open()
    assert again != used
    pool.push_pcm(again, second)
    pool.finish(again)
    pool.push_codes(again, grid.codes)
    pool.drain()
    check_codes(codec, tiny_codec, second, pool.pull_codes(again), single_encode(codec, second))
    reference = single_decode(codec, grid.codes.astype(np.int64), Levels.all(codec.num_levels))
    np.testing.assert_allclose(pool.pull_pcm(again), reference, atol=AUDIO_TOLERANCE, rtol=0)


class Counting:
    """Wraps an engine's encode/decode_latent and records the batch size of every call."""

    def __init__(self, codec: Codec) -> None:
        self.engine = codec.engine
        self.encode_rows: list[int] = []
        self.decode_rows: list[int] = []
        self._encode, self._decode = self.engine.encode, self.engine.decode_latent

    def __enter__(self) -> Counting:
        def encode(pcm: np.ndarray, *args: Any) -> Any:
            self.encode_rows.append(pcm.shape[0])
            return self._encode(pcm, *args)

        def decode(latent: np.ndarray, *args: Any) -> Any:
            self.decode_rows.append(latent.shape[0])
            return self._decode(latent, *args)

        self.engine.encode, self.engine.decode_latent = encode, decode  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        del self.engine.encode, self.engine.decode_latent


def test_one_call_per_direction_and_idle_slots_cost_nothing(codec: Codec, tiny_codec: Codec) -> None:
    inputs = clips(3, seed=30)
    pool = codec.stream_pool(8, "both")
    slots = [pool.open() for _ in range(5)]  # two of them never get input
    size = codec.frame_size
    with Counting(codec) as counting:
        assert pool.step().idle and counting.encode_rows == []  # nothing waiting: no engine call
        for t in range(3):
            for i, pcm in enumerate(inputs):
                if i == 1 and t == 1:
                    continue  # slot 1 sends nothing this step, then two frames at once
                start = (t - 1 if i == 1 and t == 2 else t) * size
                pool.push_pcm(slots[i], pcm[start : (t + 1) * size])
            result = pool.step()
            assert result.encode_rows == (2 if t == 1 else 3)
        assert pool.step().encode_rows == 1  # slot 1's second frame of the last push
        assert counting.encode_rows == [3, 2, 3, 1]
        assert counting.decode_rows == []
        pool.push_codes(slots[4], np.zeros((codec.num_levels, 2), np.int64))
        pool.push_codes(slots[3], np.zeros((codec.num_levels, 1), np.int64))
        pool.drain()
        assert counting.decode_rows == [2, 1]
    # The slot that skipped a step got its frame one step later, and its state waited untouched meanwhile.
    skipped = inputs[1][: 3 * size]
    codes = pool.pull_codes(slots[1])
    assert codes.shape[1] == 3
    check_codes(codec, tiny_codec, skipped, codes, single_encode(codec, skipped)[:, :3])


@pytest.mark.parametrize("codec_name", ["tiny_codec", "onnx_codec"])
def test_moshi_mode_pools_equal_moshi_streams(codec_name: str, request: pytest.FixtureRequest) -> None:
    codec: Codec = request.getfixturevalue(codec_name)
    tiny_codec: Codec = request.getfixturevalue("tiny_codec")
    inputs = clips(3, seed=40)
    pool = codec.stream_pool(3, "encode", mode="moshi")
    results = run_staggered(pool, inputs, starts=[0, 2, 9], frame_size=codec.frame_size)
    for pcm, (_, codes) in zip(inputs, results, strict=True):
        check_codes(codec, tiny_codec, pcm, codes, single_encode(codec, pcm, mode="moshi"))


# -- limits and errors ------------------------------------------------------------------------------------
def test_admission_control_and_bad_input(fake_codec: Codec) -> None:
    pool = fake_codec.stream_pool(2, "both", max_pending_frames=3)
    a, b = pool.open(), pool.open()
    with pytest.raises(PoolFullError, match=r"full \(2 of 2"):
        pool.open()
    pool.close(b)
    pool.open()  # a freed slot admits the next stream
    with pytest.raises(PoolError, match="more than 3 frames of pcm waiting"):
        pool.push_pcm(a, np.zeros(4 * fake_codec.frame_size, np.float32))
    with pytest.raises(PoolError, match="NaN"):
        pool.push_pcm(a, np.array([0.0, np.nan], np.float32))
    with pytest.raises(PoolError, match="floating point"):
        pool.push_pcm(a, np.zeros(10, np.int16))
    with pytest.raises(PoolError, match=r"codes must be \[32, n\]"):
        pool.push_codes(a, np.zeros((8, 2), np.int64))
    with pytest.raises(PoolError, match=r"0\.\.63"):
        pool.push_codes(a, np.full((32, 1), 64, np.int64))
    with pytest.raises(PoolError, match="no open stream slot 99"):
        pool.close(99)
    with pytest.raises(PoolError, match="unknown direction"):
        fake_codec.stream_pool(2, "sideways")  # type: ignore[arg-type]
    with pytest.raises(PoolError, match="positive integer"):
        fake_codec.stream_pool(0)
    encode_only = fake_codec.stream_pool(1, "encode")
    with pytest.raises(PoolError, match="only encodes"):
        encode_only.push_codes(encode_only.open(), np.zeros((32, 1), np.int64))


def test_an_export_without_per_row_state_says_to_re_export(tiny_onnx_dir: Path, tmp_path: Path) -> None:
    old = tmp_path / "old-export"
    shutil.copytree(tiny_onnx_dir, old)
    manifest = json.loads((old / MANIFEST_NAME).read_text())
    for stream in manifest["streams"].values():
        for spec in stream["states"]:
            if spec["dtype"] == "int64":
                spec["shape"] = [1]  # what exports before pools wrote: one position for all rows
    (old / MANIFEST_NAME).write_text(json.dumps(manifest))
    codec = Codec.load(engine=OnnxOptions(onnx_dir=old))
    assert not codec.engine.supports_pools
    with pytest.raises(EngineError, match="re-export it with `mimistack export-onnx --force`"):
        codec.stream_pool(2)


def test_threads_may_push_while_another_steps(fake_codec: Codec) -> None:
    import threading

    inputs = clips(4, seed=50)
    pool = fake_codec.stream_pool(4, "encode", max_pending_frames=1000)
    slots = [pool.open() for _ in inputs]
    stop = threading.Event()

    def stepper() -> None:
        while not stop.is_set():
            pool.step()

    thread = threading.Thread(target=stepper)
    thread.start()
    size = fake_codec.frame_size
    for t in range(0, max(map(len, inputs)), size):
        for slot, pcm in zip(slots, inputs, strict=True):
            if t < len(pcm):
                pool.push_pcm(slot, pcm[t : t + size])
    for slot in slots:
        pool.finish(slot)
    while not all(pool.done(slot) for slot in slots):
        pass
    stop.set()
    thread.join()
    for slot, pcm in zip(slots, inputs, strict=True):
        np.testing.assert_array_equal(pool.pull_codes(slot), single_encode(fake_codec, pcm))


class _ForgetfulFake(FakeEngine):
    """A deliberately broken pool half: rows advanced in a partial step are never put back."""

    def put_rows(self, state: Any, rows: Any, part: Any) -> Any:
        return state


class _SharedRowFake(FakeEngine):
    """A deliberately broken pool half: a new slot inherits the last row's state instead of a fresh one."""

    def pool_state(self, direction: Any, batch_size: int, mode: Any) -> Any:
        fresh = super().pool_state(direction, batch_size, mode)
        last = getattr(self, "_last", None)
        return fresh if last is None else self.take_rows(last, [0] * batch_size)

    def encode(self, pcm: Any, state: Any, mode: Any) -> Any:
        codes, state = super().encode(pcm, state, mode)
        self._last = state
        return codes, state


@pytest.mark.parametrize("broken", [_ForgetfulFake, _SharedRowFake])
def test_the_pool_checks_fail_on_a_broken_engine(broken: type[FakeEngine], fake_codec: Codec) -> None:
    codec = Codec(broken(MimiConfig.tiny()))
    inputs = clips(3)
    pool = codec.stream_pool(3, "encode")
    results = run_staggered(pool, inputs, starts=[0, 3, 5], frame_size=codec.frame_size)
    mismatched = [not np.array_equal(codes, single_encode(fake_codec, pcm)) for pcm, (_, codes) in zip(inputs, results)]
    assert any(mismatched)
