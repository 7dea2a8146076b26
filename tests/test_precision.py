"""`mimistack precision` on the CPU: the fp16 and int8 ONNX variants against exact fp32, with margins; the CUDA
paths are listed as skipped here; an exact path scores 100 % and the 200 dB cap (a known answer)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mimistack.testing import synthetic_signal

pytest.importorskip("torch")

from mimistack.analysis.precision import PRECISION_PATHS, PrecisionPath, _torch_path, run_precision


@pytest.mark.usefixtures("one_torch_thread")
def test_precision_onnx_variants_on_cpu(tmp_path: Path, tiny_checkpoint: Path, tiny_onnx_dir: Path) -> None:
    exact = PrecisionPath("cpu-fp32-again", "exact fp32 once more (a known answer)", _torch_path("cpu", "float32"))
    result = run_precision(
        tiny_checkpoint,
        [("a", synthetic_signal(1.5, seed=2))],
        out_dir=tmp_path / "report",
        paths=[*PRECISION_PATHS, exact],
    )
    frames = result.clips[0][2]
    assert result.margins.shape == (32, frames) and (result.margins >= 0).all()
    for name in ("onnx-fp16", "onnx-int8"):
        path = result.get(name)
        assert path.status == "ran", path.reason
        assert path.agreement is not None and len(path.agreement) == 32
        assert 0.0 < np.mean(path.agreement) < 1.0  # random codebooks: reduced precision flips some tokens
        assert path.snr_db(32) is not None and path.snr_db(32) < 200.0
        assert path.verdict().startswith(f"{name}: ") and "level 0" in path.verdict()
    assert np.mean(result.get("onnx-int8").agreement or []) < np.mean(result.get("onnx-fp16").agreement or [])
    same = result.get("cpu-fp32-again")
    assert same.agreement == [1.0] * 32 and same.snr_db(32) == 200.0 and "no token differs" in same.verdict()
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda:
        for name in ("cuda-fp32", "cuda-tf32", "cuda-bf16"):
            assert result.get(name).status == "skipped" and "CUDA" in result.get(name).reason

    data = json.loads((tmp_path / "report" / "precision.json").read_text())
    assert data["weights"]["random"] is True and len(data["margins_per_level"]) == 32
    assert {item["name"] for item in data["paths"]} >= {"onnx-fp16", "onnx-int8", "cuda-bf16"}
    text = (tmp_path / "report" / "precision.md").read_text()
    assert text.splitlines()[0].startswith("RANDOM WEIGHTS") and result.weights.sha256 in text.splitlines()[0]
    assert "## Verdicts" in text and (tmp_path / "report" / "precision_margins.png").exists()


def test_cli_precision_bad_input(tmp_path: Path, tiny_checkpoint: Path) -> None:
    from mimistack.cli.main import main

    assert main(["precision", str(tmp_path / "none.wav"), "--weights", str(tiny_checkpoint), "-o", "x"]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["precision", str(tmp_path / "empty"), "--weights", str(tiny_checkpoint), "-o", "x"]) == 2
    clip = tmp_path / "a.wav"
    from mimistack.audio import save_audio

    save_audio(clip, synthetic_signal(0.5, seed=1))
    out = tmp_path / "o"
    assert main(["precision", str(clip), "--weights", str(tiny_checkpoint), "--skip", "bogus", "-o", str(out)]) == 2
