"""The public Codec API on the tiny random model."""

from __future__ import annotations

import numpy as np
import pytest

from mimistack.codec import Codec, CodecError
from mimistack.levels import Levels
from mimistack.tokens import TokenGrid


def test_encode_returns_all_levels_and_provenance(tiny_codec: Codec, signal: np.ndarray) -> None:
    grid = tiny_codec.encode(signal)
    assert isinstance(grid, TokenGrid)
    assert grid.codes.shape == (32, int(np.ceil(len(signal) / 1920)))
    assert grid.codes.dtype == np.uint16
    assert grid.num_samples == len(signal) and grid.sample_rate == 24000 and grid.frame_rate == 12.5
    assert grid.weights_sha256 == tiny_codec.weights_sha256 and len(grid.weights_sha256) == 64


@pytest.mark.parametrize("levels", ["0", "0-7", "0,3,9", "all", {1, 2}, "none"])
def test_decode_any_subset_has_the_input_length(tiny_codec: Codec, signal: np.ndarray, levels: object) -> None:
    grid = tiny_codec.encode(signal)
    pcm = tiny_codec.decode(grid, levels)  # type: ignore[arg-type]
    assert pcm.shape == signal.shape and pcm.dtype == np.float32
    assert np.isfinite(pcm).all()


def test_different_subsets_decode_differently(tiny_codec: Codec, signal: np.ndarray) -> None:
    grid = tiny_codec.encode(signal)
    outputs = {spec: tiny_codec.decode(grid, spec) for spec in ("0", "0-7", "all", "0,3,9")}
    for a in outputs:
        for b in outputs:
            if a != b:
                assert not np.allclose(outputs[a], outputs[b]), (a, b)


def test_decode_matches_latent_sum_definition(tiny_codec: Codec, signal: np.ndarray) -> None:
    """Decoding a subset = decoding the latent built by the numpy level algebra (sum of the chosen terms)."""
    from mimistack.levels import latent_from_codes

    grid = tiny_codec.encode(signal)
    engine = tiny_codec.engine
    latent = latent_from_codes(engine.tables, grid.codes.astype(np.int64), "0,3,9")
    import torch

    with torch.no_grad():
        expected, _ = engine.model.decode_latent(torch.from_numpy(latent)[None])  # type: ignore[attr-defined]
    pcm = tiny_codec.decode(grid, "0,3,9")
    reference = expected[0, 0, : len(signal)].numpy()
    assert np.linalg.norm(pcm - reference) / np.linalg.norm(reference) < 1e-5


def test_batch_equals_single(tiny_codec: Codec, signal: np.ndarray) -> None:
    pcms = [signal, signal[:20000], signal[5000:]]
    grids = tiny_codec.encode_batch(pcms)
    for pcm, grid in zip(pcms, grids):
        single = tiny_codec.encode(pcm)
        assert grid == single
    decoded = tiny_codec.decode_batch(grids, "0-7")
    for grid, pcm in zip(grids, decoded):
        np.testing.assert_allclose(pcm, tiny_codec.decode(grid, "0-7"), atol=1e-5)


def test_long_inputs_are_processed_in_chunks_with_the_same_result(tiny_checkpoint, signal: np.ndarray) -> None:
    whole = Codec.load(tiny_checkpoint)
    chunked = Codec.load(tiny_checkpoint, chunk_frames=4)
    long_signal = np.tile(signal, 3)
    a, b = whole.encode(long_signal), chunked.encode(long_signal)
    assert (a.codes == b.codes).mean() >= 0.999
    pa, pb = whole.decode(a), chunked.decode(a)
    assert np.linalg.norm(pa - pb) / np.linalg.norm(pa) < 1e-5


@pytest.mark.parametrize("mode", ["window", "moshi"])
def test_stream_encoder_any_chunk_sizes_equal_batch(tiny_codec: Codec, signal: np.ndarray, mode: str) -> None:
    """Any chunking gives the codes of one push; in "window" mode those are batch's. "moshi" mode is moshi's ring
    cache, which drops a key per frame past the context (8 steps in the tiny config, so within this signal): its
    reference is the whole signal pushed at once."""
    grid = tiny_codec.encode(signal)
    if mode == "moshi":
        whole = tiny_codec.stream_encoder(mode="moshi")
        whole.push(signal)
        whole.flush()
        grid = whole.grid()
        assert (grid.codes != tiny_codec.encode(signal).codes).any(), "the tiny context should be crossed here"
    encoder = tiny_codec.stream_encoder(mode=mode)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    position, emitted = 0, []
    while position < len(signal):
        size = int(rng.integers(1, 5000))
        codes = encoder.push(signal[position:position + size])
        assert codes.shape[0] == 32
        # A frame is emitted as soon as it is complete, never earlier.
        assert encoder.frames_emitted == min(position + size, len(signal)) // 1920
        emitted.append(codes)
        position += size
    emitted.append(encoder.flush())
    np.testing.assert_array_equal(np.concatenate(emitted, -1), grid.codes)
    assert encoder.grid() == grid
    with pytest.raises(CodecError, match="flushed"):
        encoder.push(signal[:10])


def test_stream_decoder_equals_batch_and_follows_level_changes(tiny_codec: Codec, signal: np.ndarray) -> None:
    grid = tiny_codec.encode(signal)
    decoder = tiny_codec.stream_decoder("0-7")
    out = np.concatenate([decoder.push(grid.codes[:, i:i + 2]) for i in range(0, grid.num_frames, 2)])
    expected = tiny_codec.decode(grid, "0-7")
    assert np.linalg.norm(out[: len(signal)] - expected) / np.linalg.norm(expected) < 1e-5
    # Changing levels mid-stream equals decoding a latent whose frames use different level sets.
    switching = tiny_codec.stream_decoder("0")
    first = switching.push(grid.codes[:, :10])
    second = switching.push(grid.codes[:, 10:], levels="all")
    assert len(first) == 10 * 1920 and len(second) == (grid.num_frames - 10) * 1920


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        pytest.param(np.array([], dtype=np.float32), "no samples", id="empty"),
        pytest.param(np.array([0.0, np.nan], dtype=np.float32), "NaN", id="nan"),
        pytest.param(np.array([0.0, np.inf], dtype=np.float32), "inf", id="inf"),
        pytest.param(np.zeros((2, 100), dtype=np.float32), "mono", id="stereo"),
    ],
)
def test_bad_pcm_is_refused(tiny_codec: Codec, bad: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_codec.encode(bad)


def test_missing_levels_are_refused(tiny_codec: Codec, signal: np.ndarray) -> None:
    grid = tiny_codec.encode(signal).with_levels("0-3")
    assert tiny_codec.decode(grid).shape == signal.shape  # decodes what it holds
    with pytest.raises(CodecError, match="not in this grid"):
        tiny_codec.decode(grid, "0-7")


def test_stream_decoder_rejects_bad_codes(tiny_codec: Codec) -> None:
    decoder = tiny_codec.stream_decoder()
    with pytest.raises(CodecError, match=r"\[32, n\]"):
        decoder.push(np.zeros((8, 2), dtype=np.int64))
    with pytest.raises(CodecError, match="0-63"):
        decoder.push(np.full((32, 1), 64))


def test_levels_object_and_codes_api(tiny_codec: Codec, signal: np.ndarray) -> None:
    grid = tiny_codec.encode(signal)
    a = tiny_codec.decode_codes(grid.codes, Levels.parse("0-7"), num_samples=grid.num_samples)
    np.testing.assert_allclose(a, tiny_codec.decode(grid, "0-7"), atol=1e-6)


def test_batch_padding_is_zeroed_in_a_lent_host_buffer(tiny_checkpoint, signal: np.ndarray) -> None:
    """Engines may lend the batch buffer (page-locked memory on CUDA); whatever it held, padding is zeros."""
    codec = Codec.load(tiny_checkpoint)
    pcms = [signal[:30001], signal[:7000]]
    want = codec.encode_batch(pcms)
    lent: list[np.ndarray] = []

    def dirty_buffer(shape: tuple[int, ...]) -> np.ndarray:
        lent.append(np.full(shape, np.nan, dtype=np.float32))
        return lent[-1]

    codec.engine.host_buffer = dirty_buffer  # type: ignore[attr-defined]
    got = codec.encode_batch(pcms)
    assert lent and all(a == b for a, b in zip(got, want))
    assert np.isfinite(lent[0]).all()
