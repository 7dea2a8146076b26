"""The opt-in whole-input fast path (`mimistack.torch.fast`, `Codec.load(engine=TorchOptions(fast=True))`): same
function as the exact batch path in float32 (different summation order), used only for batch calls that fit
`fast_max_frames`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from mimistack.codec import Codec  # noqa: E402
from mimistack.engine.base import EngineError  # noqa: E402
from mimistack.engine.options import OnnxOptions, TorchOptions  # noqa: E402
from mimistack.testing import synthetic_signal  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_polyphase_weight_is_the_transposed_convolution() -> None:
    from mimistack.torch.fast import polyphase_weight

    torch.manual_seed(0)
    for stride, cin, cout in [(2, 6, 3), (5, 4, 7), (8, 3, 2)]:
        convtr = torch.nn.ConvTranspose1d(cin, cout, 2 * stride, stride)
        x = torch.randn(2, cin, 11)
        expected = convtr(x)[..., :-stride]  # the causal batch path drops the overlap tail
        weight, bias = polyphase_weight(convtr)
        z = torch.nn.functional.conv2d(torch.nn.functional.pad(x.unsqueeze(2), (1, 0)), weight, bias)
        got = z.permute(0, 2, 3, 1).reshape(2, 11 * stride, cout).transpose(1, 2)
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)


def test_polyphase_rejects_other_shapes() -> None:
    from mimistack.torch.fast import polyphase_weight

    with pytest.raises(ValueError, match="kernel 2 x stride"):
        polyphase_weight(torch.nn.ConvTranspose1d(4, 4, 3, 2))


@pytest.mark.parametrize("channels_last", [True, False])
def test_seanet_stacks_match_the_streaming_modules(tiny_checkpoint: Path, channels_last: bool) -> None:
    from mimistack.torch.fast import ChannelsLastSeanet
    from mimistack.torch.mimi import MimiModel
    from mimistack.weights import load_weights

    weights = load_weights(tiny_checkpoint)
    model = MimiModel(weights.config)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.tensors.items()})
    model.eval()
    pcm = torch.from_numpy(synthetic_signal(0.8, seed=3)[: 10 * 1920]).reshape(1, 1, -1)
    with torch.inference_mode():
        expected, _ = model.encoder(pcm)
        got = ChannelsLastSeanet(model.encoder, channels_last)(pcm)
        assert got.shape == expected.shape
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4)
        latent = torch.randn(2, weights.config.dimension, 24)
        expected, _ = model.decoder(latent)
        got = ChannelsLastSeanet(model.decoder, channels_last)(latent)
        assert got.shape == expected.shape
        assert float((got - expected).norm() / expected.norm()) < 1e-5


def test_fast_codec_equals_the_exact_codec_in_float32(tiny_checkpoint: Path, tiny_codec: Codec) -> None:
    fast = Codec.load(tiny_checkpoint, engine=TorchOptions(fast=True))
    assert fast.engine.whole_max_frames == 1500
    signals = [synthetic_signal(2.0, seed=11), synthetic_signal(3.3, seed=12)[:70_001]]
    exact_grids = tiny_codec.encode_batch(signals)
    fast_grids = fast.encode_batch(signals)
    exact_codes = np.concatenate([g.codes for g in exact_grids], axis=1)
    fast_codes = np.concatenate([g.codes for g in fast_grids], axis=1)
    assert fast_codes.shape == exact_codes.shape
    # float32 in another summation order: only near-tied tokens (and the levels after them) may flip.
    assert float((fast_codes == exact_codes).mean()) >= 0.97
    assert float((fast_codes[0] == exact_codes[0]).mean()) >= 0.95
    for grid in exact_grids:
        for levels in ("0-31", "0", "0-7,12"):
            want = tiny_codec.decode(grid, levels)
            got = fast.decode(grid, levels)
            assert got.shape == want.shape
            assert float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-12)) < 1e-5


def test_fast_codec_falls_back_to_the_chunked_path_for_long_inputs(tiny_checkpoint: Path, tiny_codec: Codec) -> None:
    codec = Codec.load(tiny_checkpoint, engine=TorchOptions(fast=True), chunk_frames=10)
    codec.engine.whole_max_frames = 8  # shorter than the input: the exact chunked path runs, fast path untouched
    calls: list[str] = []
    codec.engine.encode_whole = lambda pcm: calls.append("encode") or None  # type: ignore[method-assign]
    signal = synthetic_signal(1.5, seed=4)
    grid = codec.encode(signal)
    assert calls == []
    reference = Codec.load(tiny_checkpoint, chunk_frames=10).encode(signal)
    assert np.array_equal(grid.codes, reference.codes)


def test_fast_bfloat16_runs_and_stays_close(tiny_checkpoint: Path, tiny_codec: Codec) -> None:
    codec = Codec.load(tiny_checkpoint, engine=TorchOptions(fast=True, dtype="bfloat16"))
    signal = synthetic_signal(2.0, seed=5)
    grid = codec.encode(signal)
    exact = tiny_codec.encode(signal)
    assert grid.codes.shape == exact.codes.shape and grid.codes.dtype == np.uint16
    assert int(grid.codes.max()) < tiny_codec.codebook_size
    # bf16 arithmetic before the quantizer: level 0 mostly agrees, the residual chain drifts (random weights).
    assert float((grid.codes[0] == exact.codes[0]).mean()) >= 0.5
    pcm = codec.decode(exact, "0-7")
    want = tiny_codec.decode(exact, "0-7")
    assert float(np.linalg.norm(pcm - want) / np.linalg.norm(want)) < 0.1


def test_fast_options_are_checked(tiny_checkpoint: Path) -> None:
    with pytest.raises(EngineError, match="pass fast=True too"):
        TorchOptions(compile=True)  # fails where it is written, before any weights are read
    with pytest.raises(TypeError, match="fast"):
        OnnxOptions(fast=True)  # type: ignore[call-arg]  # an option of the other engine cannot be written
    from mimistack.engine.torch import TorchEngine
    from mimistack.weights import load_weights

    with pytest.raises(EngineError, match="fast_max_frames"):
        TorchEngine(load_weights(tiny_checkpoint), fast=True, fast_max_frames=0)
    plain = Codec.load(tiny_checkpoint)
    with pytest.raises(EngineError, match="fast=True"):
        plain.engine.encode_whole(np.zeros((1, 1, 1920), np.float32))  # type: ignore[attr-defined]


def test_strict_fp32_switches_tf32_off_inside_and_restores_it() -> None:
    from mimistack.torch.fast import strict_fp32

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, True
        with strict_fp32():
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        with pytest.raises(RuntimeError), strict_fp32():
            raise RuntimeError("restored on errors too")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_loading_an_engine_leaves_process_wide_precision_settings_alone(tiny_checkpoint: Path) -> None:
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    Codec.load(tiny_checkpoint, engine=TorchOptions(fast=True)).encode(synthetic_signal(0.5, seed=1))
    assert (
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
        torch.backends.cudnn.benchmark,
    ) == before


def test_allow_tf32_turns_tf32_on_inside_and_restores_it() -> None:
    """`TorchOptions(allow_tf32=True)`: the engine's calls run with TF32 on; the process-wide settings come back."""
    import torch

    from mimistack.engine.options import TorchOptions
    from mimistack.engine.torch import _tf32_on

    assert TorchOptions(allow_tf32=True).allow_tf32 and not TorchOptions().allow_tf32
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, False
        with _tf32_on(torch):
            assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
