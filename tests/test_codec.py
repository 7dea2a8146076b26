"""The public Codec API on the tiny random model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mimistack.codec import Codec, CodecError
from mimistack.levels import Levels
from mimistack.testing import synthetic_signal
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
        codes = encoder.push(signal[position : position + size])
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
    out = np.concatenate([decoder.push(grid.codes[:, i : i + 2]) for i in range(0, grid.num_frames, 2)])
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


def test_engine_auto_picks_torch_when_installed_and_options_are_checked_when_written() -> None:
    from mimistack.engine.base import EngineError
    from mimistack.engine.options import OnnxOptions, TorchOptions, resolve_options

    assert isinstance(resolve_options("auto"), TorchOptions)  # torch is installed in the test environment
    assert isinstance(resolve_options("onnx"), OnnxOptions)
    with pytest.raises(EngineError, match="unknown engine"):
        resolve_options("tensorflow")  # type: ignore[arg-type]
    for bad in ({"device": "tpu"}, {"dtype": "int8"}, {"num_threads": 0}):
        with pytest.raises(EngineError):
            TorchOptions(**bad)  # type: ignore[arg-type]


def test_other_sample_rates_are_resampled(tiny_codec: Codec) -> None:
    import soxr

    pcm_16k = synthetic_signal(1.5, sample_rate=16_000, seed=4)
    grid = tiny_codec.encode(pcm_16k, sample_rate=16_000)
    at_24k = soxr.resample(pcm_16k, 16_000, 24_000, quality="VHQ").astype(np.float32)
    assert grid.num_samples == len(at_24k) == round(1.5 * 24_000)
    np.testing.assert_array_equal(grid.codes, tiny_codec.encode(at_24k).codes)
    assert tiny_codec.encode(at_24k, sample_rate=24_000) == tiny_codec.encode(at_24k)
    with pytest.raises(CodecError, match="sample_rate"):
        tiny_codec.encode(pcm_16k, sample_rate=0)


def test_torch_tensors_in_give_torch_tensors_out(tiny_codec: Codec, signal: np.ndarray) -> None:
    torch = pytest.importorskip("torch")
    tensor = torch.from_numpy(signal.copy())
    grid = tiny_codec.encode(tensor)
    assert grid == tiny_codec.encode(signal)
    assert tiny_codec.encode(tensor.to(torch.bfloat16)).num_frames == grid.num_frames  # reduced precision: upcast
    decoded = tiny_codec.decode_codes(torch.from_numpy(grid.codes.astype(np.int64)), "0-7")
    assert isinstance(decoded, torch.Tensor) and decoded.dtype == torch.float32
    np.testing.assert_allclose(decoded.numpy(), tiny_codec.decode_codes(grid.codes, "0-7"), atol=1e-6)
    again = tiny_codec.roundtrip(tensor, "0-3")
    assert isinstance(again, torch.Tensor) and again.shape == tensor.shape
    encoder = tiny_codec.stream_encoder()
    codes = encoder.push(tensor[:4000])
    assert isinstance(codes, torch.Tensor) and codes.dtype == torch.int64 and codes.shape == (32, 2)
    np.testing.assert_array_equal(codes.numpy(), grid.codes[:, :2])
    pcm = tiny_codec.stream_decoder("0-7").push(codes)
    assert isinstance(pcm, torch.Tensor) and pcm.shape == (2 * 1920,)
    with pytest.raises(CodecError, match="integers"):
        tiny_codec.decode_codes(torch.zeros(32, 2), "0-7")


def test_encode_file_equals_encode_and_respects_a_length_limit(
    tiny_codec: Codec, speech: list[Path], tmp_path: Path
) -> None:
    from mimistack.audio import load_audio
    from mimistack.codec import AudioTooLongError

    pcm = load_audio(speech[4])
    seen: list[float] = []
    grid = Codec(tiny_codec.engine, chunk_frames=7).encode_file(speech[4], progress=seen.append)
    assert grid.num_samples == len(pcm) and abs(sum(seen) - len(pcm) / 24_000) < 1e-6 and len(seen) > 1
    agreement = float((grid.codes == tiny_codec.encode(pcm).codes).mean())
    assert agreement >= 0.97  # chunked: float rounding may flip a near-tied token
    with pytest.raises(AudioTooLongError, match="longer than 1 s"):
        tiny_codec.encode_file(speech[4], max_seconds=1.0)
