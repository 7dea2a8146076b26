"""The transformers.js folder of an export, loaded as it is by `@huggingface/transformers` in Node.

Runs tests/js/mimi_roundtrip.mjs (MimiModel.from_pretrained on the folder, onnxruntime-node) on the tiny export
and compares its codes and audio with Python's. Needs node and `npm ci --prefix tests/js`; skipped, saying why,
only when node itself is missing.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from mimistack.codec import Codec
from mimistack.levels import Levels
from mimistack.testing import synthetic_signal
from test_onnx import AUDIO_TOLERANCE, assert_codes_match

JS_DIR = Path(__file__).resolve().parent / "js"
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed (CI installs it with the npm packages)")


def test_transformers_js_mimi_model_reproduces_python(tiny_onnx_dir: Path, tiny_codec: Codec, tmp_path: Path) -> None:
    if not (JS_DIR / "node_modules" / "@huggingface" / "transformers").is_dir():
        pytest.fail("tests/js/node_modules is missing: run `npm ci --prefix tests/js`")
    folder = tiny_onnx_dir / "transformers.js"
    pcm = synthetic_signal(2.0, seed=13)[: 2 * 24000 - 500]  # not a whole number of frames: the graph pads
    pcm.astype("<f4").tofile(tmp_path / "input.f32")
    counts = [1, 2, 8, 32]
    result = subprocess.run(
        [
            NODE,
            str(JS_DIR / "mimi_roundtrip.mjs"),
            str(folder),
            str(tmp_path / "input.f32"),
            str(tmp_path / "output.json"),
            ",".join(map(str, counts)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=JS_DIR,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    output = json.loads((tmp_path / "output.json").read_text())

    frames = -(-len(pcm) // 1920)
    assert output["codes"]["dims"] == [1, 32, frames]
    codes = np.array(output["codes"]["data"], dtype=np.int64).reshape(32, frames)
    assert_codes_match(tiny_codec, pcm, codes, tiny_codec.encode(pcm).codes)

    for count in counts:
        entry = output["audio"][str(count)]
        assert entry["dims"] == [1, 1, frames * 1920]
        audio = np.frombuffer(base64.b64decode(entry["base64"]), dtype="<f4")
        expected = tiny_codec.decode_codes(codes, Levels.prefix(count))
        error = float(np.linalg.norm(audio - expected) / np.linalg.norm(expected))
        assert error <= AUDIO_TOLERANCE, f"{count} levels: relative L2 {error:.2e}"
