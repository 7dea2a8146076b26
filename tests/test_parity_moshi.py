"""Parity with Kyutai's reference implementation (`moshi` on PyPI), loaded with the SAME random checkpoint in the
official layout and shapes: identical codes on all 32 levels, decoded audio within 1e-5, streaming included.

The random checkpoint has data-fitted codebooks (see `mimistack.testing`); each test first asserts that every
level uses many distinct codes, so equality means something.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("moshi")

from mimistack.audio import load_audio  # noqa: E402
from mimistack.codec import Codec  # noqa: E402
from mimistack.testing import synthetic_signal  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.moshi]
FRAME = 1920


@pytest.fixture(scope="module")
def moshi_model(official_checkpoint: Path):
    from moshi.models.loaders import get_mimi

    return get_mimi(str(official_checkpoint), device="cpu", num_codebooks=32)


@pytest.fixture(scope="module")
def codec(official_checkpoint: Path) -> Codec:
    """One pass over each input, as moshi's batch mode does (the default processes 10 s chunks, see below)."""
    return Codec.load(official_checkpoint, chunk_frames=4096)


def _signals(speech: list[Path]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    t = np.arange(5 * 24000) / 24000
    signals = {path.stem: load_audio(path) for path in speech}
    signals["synthetic"] = synthetic_signal(6.0, seed=3)
    signals["sweep"] = (0.5 * np.sin(2 * np.pi * (50 + 2000 * t) * t)).astype(np.float32)
    signals["noise"] = (0.1 * rng.standard_normal(len(t))).astype(np.float32)
    signals["clicks"] = np.where(np.arange(len(t)) % 4000 == 0, 0.9, 0.0).astype(np.float32)
    signals["silence"] = np.zeros(3 * FRAME + 100, dtype=np.float32)
    return signals


def _moshi_encode(model, pcm: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model.encode(torch.from_numpy(pcm)[None, None]).numpy()[0]


def test_codes_identical_on_all_levels_batch(moshi_model, codec: Codec, speech: list[Path]) -> None:
    total = 0
    for name, pcm in _signals(speech).items():
        grid = codec.encode(pcm)
        expected = _moshi_encode(moshi_model, pcm)  # moshi pads to whole frames itself
        assert expected.shape == grid.codes.shape, name
        if name not in ("silence", "clicks"):
            distinct = [len(np.unique(grid.codes[level])) for level in range(32)]
            assert min(distinct) >= 5, (name, distinct)  # a meaningful comparison, not all-zero codes
        mismatches = int((grid.codes != expected).sum())
        assert mismatches == 0, f"{name}: {mismatches} of {expected.size} tokens differ"
        total += expected.size
    assert total > 20_000  # every speech clip and the synthetic signals: ~24k tokens


@pytest.mark.parametrize("count", [1, 8, 32])
def test_decoded_audio_matches_moshi(moshi_model, codec: Codec, speech: list[Path], count: int) -> None:
    pcm = load_audio(speech[0])
    grid = codec.encode(pcm)
    ours = codec.decode(grid, f"0-{count - 1}")
    with torch.no_grad():
        codes = torch.from_numpy(grid.codes.astype(np.int64))[None, :count]
        reference = moshi_model.decode(codes).numpy()[0, 0, : len(pcm)]
    assert ours.shape == reference.shape
    assert np.linalg.norm(ours - reference) / np.linalg.norm(reference) <= 1e-5


@pytest.fixture(scope="module")
def long_speech(speech: list[Path]) -> np.ndarray:
    """10.56 s of speech (the two longest clips back to back): 7 frames past the transformers' 250-step (10 s,
    125-frame) context, where the caches matter (moshi's ring then drops one key per frame)."""
    longest = sorted((load_audio(p) for p in speech), key=len)[-2:]
    return np.concatenate(longest)[: 132 * FRAME]


def test_streaming_identical_to_moshi_streaming(moshi_model, codec: Codec, long_speech: np.ndarray) -> None:
    encoder = codec.stream_encoder(mode="moshi")
    ours = np.concatenate([encoder.push(long_speech[i : i + FRAME]) for i in range(0, len(long_speech), FRAME)], -1)
    parts = []
    with torch.no_grad(), moshi_model.streaming(1):
        for i in range(0, len(long_speech), FRAME):
            parts.append(moshi_model.encode(torch.from_numpy(long_speech[i : i + FRAME])[None, None]).numpy()[0])
    reference = np.concatenate(parts, -1)
    assert ours.shape == reference.shape
    assert int((ours != reference).sum()) == 0

    decoder = codec.stream_decoder("0-7", mode="moshi")
    ours_pcm = np.concatenate([decoder.push(ours[:, i : i + 1]) for i in range(ours.shape[1])])
    pieces = []
    with torch.no_grad(), moshi_model.streaming(1):
        for i in range(reference.shape[1]):
            pieces.append(moshi_model.decode(torch.from_numpy(reference[None, :8, i : i + 1].astype(np.int64))))
    reference_pcm = torch.cat(pieces, -1).numpy()[0, 0]
    assert np.linalg.norm(ours_pcm - reference_pcm) / np.linalg.norm(reference_pcm) <= 1e-5


def test_default_streaming_computes_the_batch_function(codec: Codec, long_speech: np.ndarray) -> None:
    """Window-mode streaming (the default) is batch's arithmetic in frame-sized pieces; only float rounding
    differs, which can flip a near-tied token now and then (random codebooks are dense in near-ties)."""
    batch = codec.encode(long_speech)
    encoder = codec.stream_encoder()
    streamed = np.concatenate([encoder.push(long_speech[i : i + FRAME]) for i in range(0, len(long_speech), FRAME)], -1)
    agreement = (streamed == batch.codes).mean()
    assert agreement >= 0.99, agreement
    decoder = codec.stream_decoder("all")
    pcm = np.concatenate([decoder.push(batch.codes[:, i : i + 1]) for i in range(batch.num_frames)])
    reference = codec.decode(batch)
    assert np.linalg.norm(pcm - reference) / np.linalg.norm(reference) <= 1e-5


def test_default_chunked_batch_agrees_with_one_pass(
    official_checkpoint: Path, codec: Codec, long_speech: np.ndarray
) -> None:
    """The default codec processes 10 s chunks with the state carried over (flat memory): the same function,
    float rounding aside."""
    chunked = Codec.load(official_checkpoint)
    assert chunked.chunk_frames * FRAME < len(long_speech)
    agreement = (chunked.encode(long_speech).codes == codec.encode(long_speech).codes).mean()
    assert agreement >= 0.99, agreement


def test_transformers_layout_gives_the_same_codes(
    tmp_path: Path, official_checkpoint: Path, codec: Codec, speech: list[Path]
) -> None:
    from safetensors.numpy import save_file

    from mimistack.weights import load_weights, to_transformers_layout

    weights = load_weights(official_checkpoint)
    converted = tmp_path / "model.safetensors"
    save_file(to_transformers_layout(weights.tensors, weights.config), str(converted))
    other = Codec.load(converted)
    pcm = load_audio(speech[-1])
    np.testing.assert_array_equal(other.encode(pcm).codes, codec.encode(pcm).codes)
