"""Shared fixtures: random checkpoints written by the tests themselves, speech samples, tiny codecs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mimistack.testing import synthetic_signal, write_random_checkpoint

REPO = Path(__file__).resolve().parents[1]
SPEECH_DIR = Path(os.environ.get("MIMISTACK_SPEECH_DIR", REPO.parent / "shared" / "speech"))


def speech_files() -> list[Path]:
    files = sorted(SPEECH_DIR.glob("*.wav"))
    if not files:
        raise RuntimeError(f"no speech samples in {SPEECH_DIR}; set MIMISTACK_SPEECH_DIR")
    return files


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
def tiny_codec(tiny_checkpoint: Path):
    from mimistack.codec import Codec

    return Codec.load(tiny_checkpoint)


@pytest.fixture(scope="session")
def signal() -> np.ndarray:
    """3.3 s of speech-like synthetic audio (not a whole number of frames)."""
    return synthetic_signal(3.3, seed=7)
