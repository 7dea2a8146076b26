"""The engine contract (`mimistack.engine.base.Engine`), clause by clause, over every engine: torch, torch-fast,
onnx and the numpy fake.

Each clause is a function that raises `AssertionError` when an engine breaks it; `test_each_clause_catches_a_broken
engine` runs every clause against a deliberately broken fake, so a clause that cannot fail is itself a failure.
Real engines round floats differently with the chunking, so their token comparisons allow near-ties (`EXACT` for
the fake, which computes each frame the same way whatever the chunking).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from mimistack.codec import Codec
from mimistack.config import MimiConfig
from mimistack.engine.base import CACHE_MODES, Engine, EngineError
from mimistack.engine.fake import FakeEngine, FakeState
from mimistack.levels import Levels, latent_from_codes
from mimistack.testing import synthetic_signal

FRAMES = 11  # past the tiny config's 8-step (4-frame) attention context
TOKEN_AGREEMENT = 0.97  # real engines: chunking changes float rounding, which can flip a near-tied token
AUDIO_TOLERANCE = 1e-4


@dataclasses.dataclass
class Subject:
    engine: Engine
    exact: bool  # streaming equals batch bit for bit


def _engine(kind: str, tiny_checkpoint: Path, tiny_onnx_dir: Path) -> Subject:
    if kind.startswith("fake"):
        return Subject(FakeEngine.create("tiny", seed=3, whole_max_frames=64 if kind == "fake-whole" else 0), True)
    if kind == "onnx":
        from mimistack.engine.onnx import OnnxEngine

        return Subject(OnnxEngine(tiny_onnx_dir, num_threads=1), exact=False)
    pytest.importorskip("torch")
    from mimistack.engine.torch import TorchEngine
    from mimistack.weights import load_weights

    return Subject(TorchEngine(load_weights(tiny_checkpoint), num_threads=1, fast=kind == "torch-fast"), exact=False)


@pytest.fixture(scope="module", params=["torch", "torch-fast", "onnx", "fake", "fake-whole"])
def subject(request: pytest.FixtureRequest, tiny_checkpoint: Path, tiny_onnx_dir: Path) -> Subject:
    return _engine(request.param, tiny_checkpoint, tiny_onnx_dir)


def pcm_frames(config: MimiConfig, frames: int, batch: int = 2, seed: int = 0) -> NDArray[np.float32]:
    rows = [synthetic_signal(frames * config.frame_size / config.sample_rate, seed=seed + row) for row in range(batch)]
    return np.stack([r[: frames * config.frame_size] for r in rows])[:, None, :].astype(np.float32)


def agree(a: NDArray[np.int64], b: NDArray[np.int64], exact: bool) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    agreement = float((a == b).mean())
    assert agreement == 1.0 if exact else agreement >= TOKEN_AGREEMENT, f"{agreement:.2%} of tokens agree"


def close(a: NDArray[np.float32], b: NDArray[np.float32], exact: bool) -> None:
    assert a.shape == b.shape, (a.shape, b.shape)
    error = float(np.linalg.norm(a - b) / max(float(np.linalg.norm(b)), 1e-12))
    assert error <= (0.0 if exact else AUDIO_TOLERANCE), f"relative L2 {error:.2e}"


# -- the clauses -------------------------------------------------------------------------------------------------
def clause_shapes(engine: Engine, exact: bool) -> None:
    config = engine.config
    codes, _ = engine.encode(pcm_frames(config, 3), engine.init_encoder_state(2, "window"), "window")
    assert codes.shape == (2, config.num_levels, 3) and np.issubdtype(codes.dtype, np.integer)
    assert codes.min() >= 0 and codes.max() < config.codebook_size
    pcm, _ = engine.decode(
        codes.astype(np.int64), Levels.all(config.num_levels), engine.init_decoder_state(2, "window"), "window"
    )
    assert pcm.shape == (2, 1, 3 * config.frame_size) and pcm.dtype == np.float32 and np.isfinite(pcm).all()
    buffer = engine.host_buffer((2, 1, config.frame_size))
    assert buffer.shape == (2, 1, config.frame_size) and buffer.dtype == np.float32


def clause_streaming_equals_batch(engine: Engine, exact: bool) -> None:
    config = engine.config
    pcm = pcm_frames(config, FRAMES)
    whole, _ = engine.encode(pcm, engine.init_encoder_state(2, "window"), "window")
    state, parts = engine.init_encoder_state(2, "window"), []
    for start, stop in ((0, 1), (1, 4), (4, 5), (5, FRAMES)):
        part, state = engine.encode(pcm[..., start * config.frame_size : stop * config.frame_size], state, "window")
        parts.append(part)
    agree(np.concatenate(parts, -1), whole, exact)
    levels = Levels.prefix(8, config.num_levels)
    batch, _ = engine.decode(whole, levels, engine.init_decoder_state(2, "window"), "window")
    state, pieces = engine.init_decoder_state(2, "window"), []
    for start, stop in ((0, 2), (2, 3), (3, FRAMES)):
        piece, state = engine.decode(whole[..., start:stop], levels, state, "window")
        pieces.append(piece)
    close(np.concatenate(pieces, -1), batch, exact)


def clause_levels_left_out_are_ignored(engine: Engine, exact: bool) -> None:
    config = engine.config
    codes, _ = engine.encode(pcm_frames(config, 4), engine.init_encoder_state(2, "window"), "window")
    levels = Levels.parse("0,1,5", config.num_levels)
    scrambled = codes.copy()
    others = [i for i in range(config.num_levels) if i not in levels]
    scrambled[:, others] = np.random.default_rng(1).integers(0, config.codebook_size, scrambled[:, others].shape)
    a, _ = engine.decode(codes, levels, engine.init_decoder_state(2, "window"), "window")
    b, _ = engine.decode(scrambled, levels, engine.init_decoder_state(2, "window"), "window")
    np.testing.assert_array_equal(a, b)
    subset = latent_from_codes(engine.tables, codes, levels)
    terms = sum(latent_from_codes(engine.tables, codes, Levels.parse(str(i), config.num_levels)) for i in levels)
    np.testing.assert_allclose(subset, terms, atol=1e-5)


def clause_states_are_not_shared(engine: Engine, exact: bool) -> None:
    """A call never changes the state it was given, and two sessions interleaved equal each run alone."""
    config = engine.config
    pcm = pcm_frames(config, 6, seed=4)
    first, state = engine.encode(pcm[..., : 2 * config.frame_size], engine.init_encoder_state(2, "window"), "window")
    again_a, _ = engine.encode(pcm[..., 2 * config.frame_size :], state, "window")
    again_b, _ = engine.encode(pcm[..., 2 * config.frame_size :], state, "window")
    np.testing.assert_array_equal(again_a, again_b)
    other = pcm_frames(config, 6, seed=9)
    alone, _ = engine.encode(other, engine.init_encoder_state(2, "window"), "window")
    s1, s2, mixed = engine.init_encoder_state(2, "window"), engine.init_encoder_state(2, "window"), []
    for start in range(0, 6, 2):
        window = slice(start * config.frame_size, (start + 2) * config.frame_size)
        _, s1 = engine.encode(pcm[..., window], s1, "window")
        part, s2 = engine.encode(other[..., window], s2, "window")
        mixed.append(part)
    agree(np.concatenate(mixed, -1), alone, exact)
    decoded_state = engine.init_decoder_state(2, "window")
    once, _ = engine.decode(first, Levels.all(config.num_levels), decoded_state, "window")
    twice, _ = engine.decode(first, Levels.all(config.num_levels), decoded_state, "window")
    np.testing.assert_array_equal(once, twice)


def clause_whole_path_is_the_same_function(engine: Engine, exact: bool) -> None:
    if engine.whole_max_frames == 0:
        with pytest.raises(EngineError):
            engine.encode_whole(pcm_frames(engine.config, 1))
        return
    pcm = pcm_frames(engine.config, 5)
    streamed, _ = engine.encode(pcm, engine.init_encoder_state(2, "window"), "window")
    agree(engine.encode_whole(pcm), streamed, exact)


def clause_codec_chunk_boundaries(engine: Engine, exact: bool) -> None:
    """`Codec` cuts long inputs into chunks with the state carried: lengths around a chunk boundary give what one
    pass gives, and the output is as long as the input."""
    size = engine.config.frame_size
    one_pass, chunked = Codec(engine, chunk_frames=100), Codec(engine, chunk_frames=3)
    signal = synthetic_signal(8 * size / engine.config.sample_rate, seed=2)
    for length in (3 * size - 1, 3 * size, 3 * size + 1, 7 * size + 5):
        a, b = one_pass.encode(signal[:length]), chunked.encode(signal[:length])
        assert a.num_frames == b.num_frames == engine.config.num_frames(length)
        agree(b.codes.astype(np.int64), a.codes.astype(np.int64), exact)
        out = chunked.decode(a)
        assert out.shape == (length,)
        close(out, one_pass.decode(a), exact)


def clause_cache_modes_are_one_vocabulary(engine: Engine, exact: bool) -> None:
    assert CACHE_MODES == ("window", "moshi")
    with pytest.raises(EngineError, match="cache mode"):
        engine.init_encoder_state(1, "ring")  # type: ignore[arg-type]


CLAUSES: list[Callable[[Engine, bool], None]] = [
    clause_shapes,
    clause_streaming_equals_batch,
    clause_levels_left_out_are_ignored,
    clause_states_are_not_shared,
    clause_whole_path_is_the_same_function,
    clause_codec_chunk_boundaries,
    clause_cache_modes_are_one_vocabulary,
]


@pytest.mark.parametrize("clause", CLAUSES, ids=[c.__name__.removeprefix("clause_") for c in CLAUSES])
def test_engine_honours_the_contract(subject: Subject, clause: Callable[[Engine, bool], None]) -> None:
    clause(subject.engine, subject.exact)


def test_moshi_mode_means_the_same_on_torch_and_onnx(tiny_checkpoint: Path, tiny_onnx_dir: Path) -> None:
    """ "moshi" is Kyutai's ring cache on every engine: past the context, torch and onnx streams agree with each
    other (and differ from "window")."""
    torch_engine = _engine("torch", tiny_checkpoint, tiny_onnx_dir).engine
    onnx_engine = _engine("onnx", tiny_checkpoint, tiny_onnx_dir).engine
    pcm = pcm_frames(torch_engine.config, FRAMES, batch=1)
    streams = {}
    for name, engine in (("torch", torch_engine), ("onnx", onnx_engine)):
        for mode in CACHE_MODES:
            state, parts = engine.init_encoder_state(1, mode), []
            for frame in range(FRAMES):
                part, state = engine.encode(pcm[..., frame * 1920 : (frame + 1) * 1920], state, mode)
                parts.append(part)
            streams[name, mode] = np.concatenate(parts, -1)
    agree(streams["onnx", "moshi"], streams["torch", "moshi"], exact=False)
    agree(streams["onnx", "window"], streams["torch", "window"], exact=False)
    assert (streams["torch", "moshi"] != streams["torch", "window"]).any()


# -- the clauses can fail ----------------------------------------------------------------------------------------
class _MutatesState(FakeEngine):
    def encode(self, pcm, state, mode):  # type: ignore[no-untyped-def,override]
        codes, new = super().encode(pcm, state, mode)
        if state is not None:
            state.previous[...] = new.previous  # writes into the caller's state
        return codes, new

    def decode(self, codes, levels, state, mode):  # type: ignore[no-untyped-def,override]
        pcm, new = super().decode(codes, levels, state, mode)
        if state is not None:
            state.previous[...] = new.previous
        return pcm, new


class _ReadsAllLevels(FakeEngine):
    def decode(self, codes, levels, state, mode):  # type: ignore[no-untyped-def,override]
        return super().decode(codes, Levels.all(self.config.num_levels), state, mode)


class _ForgetsState(FakeEngine):
    def encode(self, pcm, state, mode):  # type: ignore[no-untyped-def,override]
        return super().encode(pcm, None, mode)

    def decode(self, codes, levels, state, mode):  # type: ignore[no-untyped-def,override]
        return super().decode(codes, levels, None, mode)


class _WrongShapes(FakeEngine):
    def decode(self, codes, levels, state, mode):  # type: ignore[no-untyped-def,override]
        pcm, new = super().decode(codes, levels, state, mode)
        return pcm[..., :-1], new


class _WholePathDiffers(FakeEngine):
    def encode_whole(self, pcm):  # type: ignore[no-untyped-def,override]
        return (super().encode_whole(pcm) + 1) % self.config.codebook_size


class _AcceptsAnyMode(FakeEngine):
    def init_encoder_state(self, batch_size, mode):  # type: ignore[no-untyped-def,override]
        return FakeState(np.zeros((batch_size, self.config.frame_size), dtype=np.float32), 0)


BROKEN = [
    pytest.param(_WrongShapes, clause_shapes, id="wrong-shapes"),
    pytest.param(_ForgetsState, clause_streaming_equals_batch, id="forgets-state"),
    pytest.param(_ReadsAllLevels, clause_levels_left_out_are_ignored, id="reads-all-levels"),
    pytest.param(_MutatesState, clause_states_are_not_shared, id="mutates-state"),
    pytest.param(_WholePathDiffers, clause_whole_path_is_the_same_function, id="whole-path-differs"),
    pytest.param(_ForgetsState, clause_codec_chunk_boundaries, id="chunks-lose-state"),
    pytest.param(_AcceptsAnyMode, clause_cache_modes_are_one_vocabulary, id="accepts-any-mode"),
]


@pytest.mark.parametrize(("broken", "clause"), BROKEN)
def test_each_clause_catches_a_broken_engine(broken: type[FakeEngine], clause: Callable[[Engine, bool], None]) -> None:
    whole = 0 if clause is clause_codec_chunk_boundaries else 64  # chunking is only exercised without a whole path
    engine = broken(MimiConfig.tiny(), 3, whole_max_frames=whole)
    clause(FakeEngine.create("tiny", seed=3, whole_max_frames=whole), True)  # the honest fake passes
    with pytest.raises((AssertionError, pytest.fail.Exception)):
        clause(engine, True)


def test_every_clause_has_a_broken_engine_that_fails_it() -> None:
    assert {p.values[1] for p in BROKEN} == set(CLAUSES)
