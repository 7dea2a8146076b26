from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from safetensors.numpy import load_file, save_file

from mimistack.config import MimiConfig
from mimistack.testing import write_random_checkpoint
from mimistack.weights import (
    WeightsError,
    _rope_permute,
    expected_shapes,
    from_transformers_layout,
    load_weights,
    resolve_weights,
    to_transformers_layout,
)


def test_official_layout_has_the_318_tensors_of_kyutais_checkpoint() -> None:
    shapes = expected_shapes(MimiConfig.official())
    assert len(shapes) == 318
    assert shapes["encoder.model.0.conv.conv.weight"] == (64, 1, 7)
    assert shapes["encoder.model.12.conv.conv.weight"] == (1024, 512, 16)
    assert shapes["decoder.model.2.convtr.convtr.weight"] == (1024, 512, 16)
    assert shapes["encoder_transformer.transformer.layers.7.self_attn.in_proj_weight"] == (1536, 512)
    assert shapes["quantizer.rvq_rest.vq.layers.30._codebook.embedding_sum"] == (2048, 256)
    assert shapes["upsample.convtr.convtr.convtr.weight"] == (512, 1, 4)


def test_layout_matches_moshi_model() -> None:
    """Our key set and shapes are exactly those of Kyutai's own module (after its in_proj renaming hook)."""
    pytest.importorskip("moshi")
    from moshi.models.loaders import get_mimi

    reference = get_mimi(None, device="cpu", num_codebooks=32).state_dict()
    renamed = {
        k.replace("in_projs.0.weight", "in_proj_weight").replace("out_projs.0.weight", "out_proj.weight"): tuple(
            v.shape
        )
        for k, v in reference.items()
    }
    assert renamed == expected_shapes(MimiConfig.official())


def test_random_checkpoint_round_trips_both_layouts(tmp_path: Path) -> None:
    kyutai = write_random_checkpoint(tmp_path / "k.safetensors", "tiny", layout="kyutai", seed=3)
    hf = write_random_checkpoint(tmp_path / "t.safetensors", "tiny", layout="transformers", seed=3)
    a, b = load_weights(kyutai), load_weights(hf)
    assert (a.layout, b.layout) == ("kyutai", "transformers")
    assert a.config == b.config == MimiConfig.tiny()
    assert a.tensors.keys() == b.tensors.keys()
    for name, value in a.tensors.items():
        np.testing.assert_array_equal(value, b.tensors[name], err_msg=name)
    raw = load_file(str(hf))
    assert any(k.endswith("self_attn.q_proj.weight") for k in raw)
    assert "encoder.layers.0.conv.weight" in raw
    assert a.sha256 != b.sha256 and len(a.sha256) == 64


def test_rope_permutation_turns_interleaved_into_rotate_half() -> None:
    """Attention scores with interleaved RoPE on the original rows equal rotate-half RoPE on permuted rows."""
    rng = np.random.default_rng(0)
    heads, head_dim, dim, steps = 2, 8, 16, 5
    wq, wk = rng.standard_normal((2, dim, dim))
    x = rng.standard_normal((steps, dim))
    freqs = 10000.0 ** (-np.arange(head_dim // 2) * 2 / head_dim)
    angles = np.arange(steps)[:, None] * freqs[None]
    cos, sin = np.cos(angles), np.sin(angles)

    def interleaved(v: np.ndarray) -> np.ndarray:
        v = v.reshape(steps, heads, head_dim // 2, 2)
        r, i = v[..., 0], v[..., 1]
        c, s = cos[:, None], sin[:, None]
        return np.stack([r * c - i * s, r * s + i * c], -1).reshape(steps, heads, head_dim)

    def rotate_half(v: np.ndarray) -> np.ndarray:
        v = v.reshape(steps, heads, head_dim)
        c = np.concatenate([cos, cos], -1)[:, None]
        s = np.concatenate([sin, sin], -1)[:, None]
        half = np.concatenate([-v[..., head_dim // 2 :], v[..., : head_dim // 2]], -1)
        return v * c + half * s

    scores = np.einsum("thd,shd->hts", interleaved(x @ wq.T), interleaved(x @ wk.T))
    permuted = np.einsum(
        "thd,shd->hts", rotate_half(x @ _rope_permute(wq, heads).T), rotate_half(x @ _rope_permute(wk, heads).T)
    )
    np.testing.assert_allclose(permuted, scores, rtol=1e-10, atol=1e-10)


def test_transformers_conversion_is_invertible() -> None:
    cfg = MimiConfig.tiny()
    rng = np.random.default_rng(1)
    tensors = {k: rng.standard_normal(s).astype(np.float32) for k, s in expected_shapes(cfg).items()}
    back = from_transformers_layout(to_transformers_layout(tensors, cfg), cfg)
    assert back.keys() == tensors.keys()
    for k in tensors:
        np.testing.assert_array_equal(back[k], tensors[k])


def test_mismatched_checkpoint_lists_every_problem(tmp_path: Path, tiny_checkpoint: Path) -> None:
    tensors = load_file(str(tiny_checkpoint))
    metadata = {"mimistack_config": MimiConfig.tiny().to_json()}
    del tensors["encoder.model.0.conv.conv.bias"]
    tensors["encoder.model.0.extra"] = np.zeros(3, dtype=np.float32)
    tensors["decoder.model.14.conv.conv.weight"] = np.zeros((1, 2, 3), dtype=np.float32)
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=metadata)
    with pytest.raises(WeightsError) as info:
        load_weights(bad)
    message = str(info.value)
    assert "missing (1)" in message and "encoder.model.0.conv.conv.bias" in message
    assert "unexpected (1)" in message and "encoder.model.0.extra" in message
    assert "wrong shape (1)" in message and "decoder.model.14.conv.conv.weight: (1, 2, 3)" in message


def test_official_config_is_assumed_without_metadata(tmp_path: Path, tiny_checkpoint: Path) -> None:
    stripped = tmp_path / "stripped.safetensors"
    save_file(load_file(str(tiny_checkpoint)), str(stripped))
    with pytest.raises(WeightsError, match="wrong shape"):
        load_weights(stripped)
    assert load_weights(stripped, config=MimiConfig.tiny()).config == MimiConfig.tiny()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        pytest.param("model.pt", b"PK\x03\x04rest", "pickle", id="torch-zip"),
        pytest.param("model.safetensors", b"\x80\x04\x95junk", "pickle", id="raw-pickle"),
        pytest.param("model.safetensors", b"not a safetensors file at all", "not a readable safetensors", id="garbage"),
    ],
)
def test_unsafe_or_unreadable_files_are_refused(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=message):
        load_weights(path)


def test_not_a_mimi_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({"layer.weight": np.zeros(2, dtype=np.float32)}, str(path))
    with pytest.raises(WeightsError, match="not a Mimi checkpoint"):
        load_weights(path)


def test_hub_id_offline_and_not_cached_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as info:
        resolve_weights("kyutai/mimi")
    message = str(info.value)
    assert "hf download kyutai/mimi model.safetensors" in message and "huggingface-cli" not in message
    assert "--weights /path/to/model.safetensors" in message and "--weights random" in message
    assert str(tmp_path / "empty-cache") in message and "HF_HUB_OFFLINE" in message


BLOCK_NETWORK = """
import socket

_connect, _getaddrinfo = socket.socket.connect, socket.getaddrinfo

def _loopback(host):
    return host in ("localhost", "::1") or str(host).startswith("127.")

def getaddrinfo(host, *args, **kwargs):
    if not _loopback(host):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (network blocked by the test)")
    return _getaddrinfo(host, *args, **kwargs)

def connect(self, address):
    if isinstance(address, tuple) and not _loopback(address[0]):
        raise OSError(101, "Network is unreachable (blocked by the test)")
    return _connect(self, address)

socket.getaddrinfo, socket.socket.connect = getaddrinfo, connect
"""


@pytest.mark.parametrize("where", ["resolve", "cli"])
def test_without_network_a_model_command_fails_fast_with_one_message(tmp_path: Path, where: str) -> None:
    """No HF_HUB_OFFLINE, no cache, and no network (name resolution and connections blocked in the child): the
    first model command fails within about 2 s with one message that says what to do."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCK_NETWORK)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE"))}
    env.update(
        PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), env.get("PYTHONPATH", "")]),
        HF_HOME=str(tmp_path / "hf-home"),
        MIMISTACK_CACHE=str(tmp_path / "cache"),
    )
    if where == "resolve":
        command = [sys.executable, "-c", "import mimistack.weights as w; w.resolve_weights('kyutai/mimi')"]
    else:
        clip = tmp_path / "a.wav"
        soundfile.write(clip, np.zeros(4800, dtype=np.float32), 24_000)
        command = [sys.executable, "-m", "mimistack", "encode", str(clip), "-o", str(tmp_path / "a.mimi")]
    baseline = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import mimistack.weights"], env=env, check=True, timeout=120)
    startup = time.perf_counter() - baseline  # the interpreter and imports, which the limit does not count
    started = time.perf_counter()
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - started - startup
    assert completed.returncode != 0
    output = completed.stderr
    assert elapsed < 2.5, f"took {elapsed:.1f} s beyond start-up to fail:\n{output}"
    assert output.count("hf download kyutai/mimi") == 1, output
    assert "--weights random" in output and str(tmp_path / "hf-home") in output
    assert "Network is unreachable" in output or "not known" in output
    assert "Traceback" not in output or where == "resolve"
    assert "retry" not in output.lower() and "warning" not in output.lower(), output
    if where == "cli":
        assert completed.returncode == 2 and not (tmp_path / "a.mimi").exists()


def test_hub_id_resolves_from_the_offline_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_checkpoint: Path
) -> None:
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    snapshot = cache / "models--kyutai--mimi" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(tiny_checkpoint.read_bytes())
    (cache / "models--kyutai--mimi" / "refs").mkdir()
    (cache / "models--kyutai--mimi" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_weights("kyutai/mimi") == snapshot / "model.safetensors"
    weights = load_weights("kyutai/mimi")
    assert weights.source == "kyutai/mimi" and weights.config == MimiConfig.tiny()


@pytest.mark.parametrize("source", ["./missing.safetensors", "/no/such/file.safetensors", "weights.pt"])
def test_missing_local_files(source: str) -> None:
    with pytest.raises(WeightsError, match="not found"):
        resolve_weights(source)


def test_bfloat16_checkpoints_are_read_without_torch(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """bf16 weights (numpy has no bfloat16) are widened from the file's own bytes; torch reads them the same."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as save_torch

    from mimistack.weights import read_metadata, read_safetensors

    tensors, metadata = read_safetensors(tiny_checkpoint)
    path = tmp_path / "bf16.safetensors"
    save_torch({k: torch.from_numpy(v).to(torch.bfloat16) for k, v in tensors.items()}, str(path), metadata=metadata)
    loaded, loaded_metadata = read_safetensors(path)
    assert loaded_metadata == metadata == read_metadata(path)
    for name, value in tensors.items():
        expected = torch.from_numpy(value).to(torch.bfloat16).to(torch.float32).numpy()
        np.testing.assert_array_equal(loaded[name], expected)
    assert load_weights(path).config == load_weights(tiny_checkpoint).config
