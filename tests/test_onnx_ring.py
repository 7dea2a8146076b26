"""The ONNX window stream graphs' ring KV caches: sized by the caller, written in place for pools, split calls.

Format 2 exports keep each KV cache in a ring of R slots (a "ring" dim of the state). A stream pool's rings hold one
frame's steps beyond the context and are updated in place (the scatter's input and output bound to one buffer); a
single stream's are sized for `Codec`'s 10 s chunks and never changed under the caller. A call longer than its
ring holds goes through in pieces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mimistack.codec import Codec
from mimistack.engine.base import EngineError
from mimistack.engine.onnx import POOL_RING_FRAMES, STREAM_RING_FRAMES, OnnxEngine, OnnxStreamState
from mimistack.engine.onnx_format import ring_frames, ring_slots
from mimistack.levels import Levels, latent_from_codes
from mimistack.testing import synthetic_signal
from near_ties import assert_codes_match, assert_near_ties_only

FRAME = 1920
AUDIO_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def engine(tiny_onnx_dir: Path) -> OnnxEngine:
    return OnnxEngine(tiny_onnx_dir)


def pcm_rows(rows: int, frames: int) -> np.ndarray:
    signals = [synthetic_signal(frames * FRAME / 24000 + 0.1, seed=row)[: frames * FRAME] for row in range(rows)]
    return np.stack(signals)[:, None, :].astype(np.float32)


def ring_arrays(engine: OnnxEngine, state: OnnxStreamState) -> list[np.ndarray]:
    specs = engine._states[state.graph]
    return [array for spec, array in zip(specs, state.arrays, strict=True) if spec.ringed]


def test_ring_sizes_hold_the_context_and_one_call() -> None:
    ring = {"context": 250, "steps_per_frame": 2}
    assert ring_slots(ring, 1) == 251 and ring_slots(ring, 125) == 499
    for frames in (1, 2, 7, 125):
        assert ring_frames(ring, ring_slots(ring, frames)) == frames
    assert ring_frames(ring, ring_slots(ring, 3) - 1) == 2


def test_pool_states_are_written_in_place_and_spent(engine: OnnxEngine, tiny_codec: Codec) -> None:
    state = engine.pool_state("encoder", 3, "window")
    assert state.owned and state.ring == ring_slots(engine.manifest["streams"]["encoder_stream"]["ring"], 1)
    caches = ring_arrays(engine, state)
    assert len(caches) == 2 * engine.config.num_layers
    pcm = pcm_rows(3, 12)
    codes, after = engine.encode(pcm[..., :FRAME], state, "window")
    assert state.spent and after.owned and not after.spent
    assert [a.ctypes.data for a in ring_arrays(engine, after)] == [a.ctypes.data for a in caches], (
        "a pool's KV caches must be updated in their own buffers"
    )
    assert all(np.any(cache != 0) for cache in caches), "the step wrote into the caches it was given"
    with pytest.raises(EngineError, match="already advanced"):
        engine.encode(pcm[..., :FRAME], state, "window")
    # Frame by frame past the tiny context (8 steps): the codes of one pass through the torch engine.
    outputs = [codes]
    for frame in range(1, 12):
        part, after = engine.encode(pcm[..., frame * FRAME : (frame + 1) * FRAME], after, "window")
        outputs.append(part)
    pooled = np.concatenate(outputs, axis=-1)
    reference, _ = tiny_codec.engine.encode(pcm, None, "window")
    for row in range(3):
        assert_near_ties_only(tiny_codec, pcm[row, 0], pooled[row], reference[row])


def test_pooled_decoding_in_place_equals_a_single_stream(engine: OnnxEngine, tiny_codec: Codec) -> None:
    codes = tiny_codec.encode(synthetic_signal(1.2, seed=4)).codes[None]  # [1, K, N]
    latent = latent_from_codes(engine.tables, codes, Levels.prefix(8, engine.config.num_levels))
    frames = latent.shape[-1]
    pool = engine.pool_state("decoder", 1, "window")
    pooled = []
    for frame in range(frames):
        pcm, pool = engine.decode_latent(latent[..., frame : frame + 1], pool, "window")
        pooled.append(pcm)
    single, _ = engine.decode_latent(latent, None, "window")
    reference = tiny_codec.engine.decode_latent(latent, None, "window")[0]
    for estimate in (np.concatenate(pooled, axis=-1), single):
        assert np.max(np.abs(estimate - reference)) < AUDIO_TOLERANCE


def test_single_stream_states_are_never_changed(engine: OnnxEngine) -> None:
    state = engine.init_encoder_state(2, "window")
    assert not state.owned and state.ring == ring_slots(engine.manifest["streams"]["encoder_stream"]["ring"], 125)
    pcm = pcm_rows(2, 3)
    _, after = engine.encode(pcm, state, "window")
    before = [array.copy() for array in after.arrays]
    again_a, _ = engine.encode(pcm, after, "window")
    again_b, _ = engine.encode(pcm, after, "window")
    assert np.array_equal(again_a, again_b), "a state may be used twice: a retry gives the same output"
    assert all(np.array_equal(a, b) for a, b in zip(before, after.arrays, strict=True))
    assert not after.spent


def test_calls_longer_than_the_ring_go_through_in_pieces(engine: OnnxEngine, tiny_codec: Codec) -> None:
    # A pool's ring holds one frame: six frames in one call are six one-frame calls, bit for bit.
    pcm = pcm_rows(2, 6)
    whole, _ = engine.encode(pcm, engine.pool_state("encoder", 2, "window"), "window")
    state = engine.pool_state("encoder", 2, "window")
    parts = []
    for frame in range(6):
        part, state = engine.encode(pcm[..., frame * FRAME : (frame + 1) * FRAME], state, "window")
        parts.append(part)
    assert POOL_RING_FRAMES == 1 and np.array_equal(whole, np.concatenate(parts, axis=-1))
    # A single stream past its ring's 125 frames: the same codes and audio as the torch engine in one pass.
    frames = STREAM_RING_FRAMES + 9
    signal = synthetic_signal(frames * FRAME / 24000, seed=11)[: frames * FRAME]
    codes, _ = engine.encode(signal[None, None].astype(np.float32), None, "window")
    reference, _ = tiny_codec.engine.encode(signal[None, None].astype(np.float32), None, "window")
    assert codes.shape == (1, engine.config.num_levels, frames)
    assert_codes_match(tiny_codec, signal, codes[0], reference[0])
    latent = latent_from_codes(engine.tables, reference, Levels.all(engine.config.num_levels))
    audio, _ = engine.decode_latent(latent, None, "window")
    expected, _ = tiny_codec.engine.decode_latent(latent, None, "window")
    assert audio.shape == expected.shape and np.max(np.abs(audio - expected)) < AUDIO_TOLERANCE


def test_rings_of_different_sizes_are_not_joined(engine: OnnxEngine) -> None:
    pool = engine.pool_state("encoder", 1, "window")
    single = engine.init_encoder_state(1, "window")
    single.owned = True
    with pytest.raises(EngineError, match="rings differ in size"):
        engine.join_rows([pool, single])
