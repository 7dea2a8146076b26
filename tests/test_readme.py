"""The README's promises, run as a new user would: its Python block, the quick start through the installed program,
`python -m mimistack`, and the public API that `mimistack.__all__` pins."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

import mimistack
from speech_data import speech_files

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DEMO_CLIP = REPO / "examples" / "librivox_sense_and_sensibility_0870.wav"
PUBLIC_API = [
    "Codec",
    "Levels",
    "MimiConfig",
    "MimistackError",
    "OnnxOptions",
    "TokenGrid",
    "TorchOptions",
    "__version__",
    "load_audio",
    "save_audio",
]


def readme_python_block() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 1, f"the README should have exactly one Python block, found {len(blocks)}"
    return blocks[0]


def program(name: str) -> str:
    """An installed console script of this environment (the one a user would run after setup)."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"the {name!r} program is not installed in this environment (pip install -e .)"
    return found


def test_the_readme_python_block_runs_with_random_tiny_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = readme_python_block()
    assert '"kyutai/mimi"' in code
    code = code.replace('"kyutai/mimi"', '"random-tiny"')
    pcm, rate = soundfile.read(speech_files()[0], dtype="float32")
    soundfile.write(tmp_path / "speech.flac", pcm[: 3 * rate], rate)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(code, str(README), "exec"), namespace)

    grid = namespace["grid"]
    assert isinstance(grid, mimistack.TokenGrid)
    assert grid.codes.shape == (32, -(-3 * 24_000 // 1920)) and grid.codes.dtype == np.uint16
    assert mimistack.TokenGrid.load(tmp_path / "speech.mimi").num_frames == grid.num_frames
    assert namespace["codes"].shape == (32, 2)  # type: ignore[attr-defined]
    assert namespace["audio"].shape == (2 * 1920,)  # type: ignore[attr-defined]
    assert namespace["out"].shape == (3 * 24_000,)  # type: ignore[attr-defined]
    assert "out of range" in capsys.readouterr().out  # the block's except clause caught a MimistackError


def test_quick_start_demo_through_the_installed_program(tmp_path: Path) -> None:
    out = tmp_path / "mimistack-demo"
    completed = subprocess.run(
        [program("mimistack"), "demo", str(DEMO_CLIP), "--weights", "random-tiny", "-o", str(out), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "RANDOM weights" in completed.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "decoded_01_levels.wav",
        "decoded_08_levels.wav",
        "decoded_32_levels.wav",
        "summary.json",
        "summary.md",
        "tokens.mimi",
    ]
    summary = json.loads((out / "summary.json").read_text())
    frames = soundfile.info(str(DEMO_CLIP)).frames
    assert summary["random_weights"] is True and summary["frames"] == -(-frames // 1920)
    assert [row["levels"] for row in summary["outputs"]] == ["0", "0-7", "0-31"]
    for row in summary["outputs"]:
        assert soundfile.info(str(out / row["file"])).frames == frames
    assert mimistack.TokenGrid.load(out / "tokens.mimi").num_samples == frames


def test_python_dash_m_mimistack_help() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "mimistack", "--help"], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 0, completed.stderr
    for command in ("encode", "decode", "demo", "sweep", "stream", "tokenize-corpus", "serve", "export-onnx"):
        assert command in completed.stdout


def test_the_public_api_is_pinned() -> None:
    assert sorted(mimistack.__all__) == sorted(PUBLIC_API)
    for name in mimistack.__all__:
        assert getattr(mimistack, name) is not None
    assert issubclass(mimistack.MimistackError, Exception)
    with pytest.raises(AttributeError):
        _ = mimistack.NotAName  # type: ignore[attr-defined]


def test_public_errors_share_one_base_class() -> None:
    from mimistack.audio import AudioError
    from mimistack.codec import CodecError
    from mimistack.config import ConfigError
    from mimistack.engine.base import EngineError
    from mimistack.levels import LevelsError
    from mimistack.tokens import TokenGridError
    from mimistack.weights import WeightsError

    for error in (AudioError, CodecError, ConfigError, EngineError, LevelsError, TokenGridError, WeightsError):
        assert issubclass(error, mimistack.MimistackError), error
