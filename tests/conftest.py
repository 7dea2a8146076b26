"""Shared fixtures: random checkpoints written by the tests themselves, speech samples, tiny codecs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mimistack.testing import synthetic_signal, write_random_checkpoint
from speech_data import speech_files

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Random checkpoints and exported graphs go to a per-session folder, never the user's cache or the repo."""
    os.environ.setdefault("MIMISTACK_CACHE", str(tmp_path_factory.mktemp("mimistack-cache")))
    os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models run far faster on one thread than through OpenMP barriers on a busy 2-core machine; the
    process-wide setting is restored afterwards."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def speech() -> list[Path]:
    return speech_files()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors", "tiny", seed=1)


@pytest.fixture(scope="session")
def official_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "official.safetensors", "official", seed=0)


@pytest.fixture(scope="session")
def tiny_onnx_dir(tiny_checkpoint: Path) -> Path:
    """The session's one ONNX export of the tiny checkpoint: every variant (fp32, fp16, int8), both stream modes and
    the transformers.js folder. It is written straight into the engine's export cache (this session's
    `MIMISTACK_CACHE`), so `load_onnx_engine(weights=tiny_checkpoint)` and `mimistack serve` reuse it. Tests that
    change an export copy this folder first."""
    from mimistack.engine.export import export_onnx
    from mimistack.engine.onnx_cache import cached_export_dir
    from mimistack.weights import file_sha256

    target = cached_export_dir(file_sha256(tiny_checkpoint))
    target.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(tiny_checkpoint, target, variants=("fp32", "fp16", "int8"), stream_modes=("window", "moshi"))
    return target


@pytest.fixture(scope="session")
def tiny_codec(tiny_checkpoint: Path):
    from mimistack.codec import Codec

    return Codec.load(tiny_checkpoint)


@pytest.fixture(scope="session")
def signal() -> np.ndarray:
    """3.3 s of speech-like synthetic audio (not a whole number of frames)."""
    return synthetic_signal(3.3, seed=7)
