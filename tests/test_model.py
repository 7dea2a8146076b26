"""Properties of the PyTorch reference model on the tiny config: streaming == batch, causality, subsets."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mimistack.config import MimiConfig  # noqa: E402
from mimistack.torch.mimi import MimiModel  # noqa: E402
from mimistack.weights import load_weights  # noqa: E402


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    weights = load_weights(tiny_checkpoint)
    m = MimiModel(weights.config).eval()
    m.load_state_dict({k: torch.from_numpy(v) for k, v in weights.tensors.items()})
    return m


@pytest.fixture(scope="module")
def pcm(signal: np.ndarray):
    frames = len(signal) // 1920
    return torch.from_numpy(signal[: frames * 1920].copy()).view(1, 1, -1)


def test_codes_are_diverse_on_every_level(model, pcm) -> None:
    with torch.no_grad():
        codes, _ = model.encode(pcm)
    distinct = [len(set(codes[0, i].tolist())) for i in range(32)]
    assert min(distinct) >= 3, distinct


@pytest.mark.parametrize(
    ("mode", "chunk_frames"),
    [
        pytest.param("window", 1, id="window-frame"),
        pytest.param("window", 3, id="window-3frames"),
        pytest.param("ring", 1, id="ring-frame"),  # moshi's ring is defined for one frame per step
        pytest.param("moshi-window", 1, id="moshi-window-frame"),
        pytest.param("moshi-window", 3, id="moshi-window-3frames"),
    ],
)
def test_streaming_equals_batch(model, pcm, mode: str, chunk_frames: int) -> None:
    """ "window" streaming is batch's function at any length. Kyutai's ring cache ("ring", and "moshi-window", its
    summation order) keeps exactly `context` steps, so it equals batch only while the stream fits in the context
    (the tiny config's 8 steps = 4 frames); past it, it drops a key per frame as moshi does (tests/test_onnx.py,
    tests/test_engine_contract.py)."""
    if mode != "window":
        pcm = pcm[..., : MimiConfig.tiny().context // 2 * 1920]
    with torch.no_grad():
        batch_codes, _ = model.encode(pcm)
        state = model.init_encoder_state(1)
        parts = []
        step = chunk_frames * 1920
        for start in range(0, pcm.shape[-1], step):
            codes, state = model.encode(pcm[..., start : start + step], state, mode)
            parts.append(codes)
        assert torch.equal(torch.cat(parts, -1), batch_codes)
        latent = model.latent_from_codes(batch_codes)
        batch_pcm, _ = model.decode_latent(latent)
        state = model.init_decoder_state(1)
        outs = []
        for start in range(0, latent.shape[-1], chunk_frames):
            out, state = model.decode_latent(latent[..., start : start + chunk_frames], state, mode)
            outs.append(out)
        streamed = torch.cat(outs, -1)
    assert streamed.shape == batch_pcm.shape
    assert float((streamed - batch_pcm).norm() / batch_pcm.norm()) < 1e-5


def test_causality_prefix_of_input_gives_prefix_of_codes(model, pcm) -> None:
    with torch.no_grad():
        full, _ = model.encode(pcm)
        prefix, _ = model.encode(pcm[..., : 10 * 1920])
        changed = pcm.clone()
        changed[..., 10 * 1920 :] = torch.randn_like(changed[..., 10 * 1920 :])
        other, _ = model.encode(changed)
    assert torch.equal(prefix, full[..., :10])
    assert torch.equal(other[..., :10], full[..., :10])
    assert not torch.equal(other[..., 10:], full[..., 10:])


def test_decoding_a_subset_is_the_sum_of_its_terms(model) -> None:
    codes = torch.randint(0, 64, (2, 32, 6))
    with torch.no_grad():
        terms = [model.latent_from_codes(codes, [i]) for i in range(32)]
        for levels in ([0], list(range(8)), [0, 3, 9], [5], list(range(32)), []):
            expected = sum((terms[i] for i in levels), torch.zeros_like(terms[0]))
            torch.testing.assert_close(model.latent_from_codes(codes, levels), expected, atol=1e-5, rtol=1e-5)


def test_bad_pcm_shape_is_refused(model) -> None:
    with pytest.raises(ValueError, match="N\\*1920"):
        model.encode(torch.zeros(1, 1, 1000))


def test_state_dict_matches_the_official_layout() -> None:
    from mimistack.weights import expected_shapes

    model = MimiModel(MimiConfig.official())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == expected_shapes(MimiConfig.official())
