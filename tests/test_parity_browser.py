"""`mimistack parity`'s browser implementation: the page's engine (onnxruntime-web in headless Chromium, the exact
bundle, the page's own level sum) held to mimistack's torch engine on the tiny checkpoint.

Needs Chromium, Node.js and the built page with web/node_modules (like tests/test_web_site.py); without them the
test skips, except under CI (CI=true), where a missing piece is a failure.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx", reason="the page's bundle is written with the [export] extra")

from mimistack.analysis.browser import missing_pieces
from mimistack.analysis.parity import IMPLEMENTATIONS, run_parity
from mimistack.audio import load_audio
from speech_data import speech_file
from test_web_e2e import require_present


@pytest.fixture(autouse=True)
def _browser_available() -> None:
    require_present(missing_pieces(), "the browser implementation")


def test_browser_engine_agrees_with_torch(tmp_path: Path, tiny_checkpoint: Path, tiny_onnx_dir: Path) -> None:
    keep = {"mimistack-torch", "browser"}
    clip = load_audio(speech_file("flite_awb"))[: 24000 * 3]
    result = run_parity(
        tiny_checkpoint,
        [("flite_awb", clip)],
        out_dir=tmp_path / "report",
        skip=[item.name for item in IMPLEMENTATIONS if item.name not in keep],
        reference="mimistack-torch",
        onnx_dir=tiny_onnx_dir,
        plots=False,
    )
    browser = result.get("browser")
    assert browser.status == "ran", browser.reason
    agreement = browser.agreement
    assert agreement is not None and len(agreement) == 32
    # Float rounding in WebAssembly may flip a near-tie (and the residual chain below it); the page's e2e tests
    # hold the same engine to 99 % of tokens.
    assert float(np.mean(agreement)) >= 0.99 and agreement[0] >= 0.99
    for count in (8, 32):
        rel = browser.rel_l2(count)
        assert rel is not None and rel < 1e-5, (count, rel)  # observed 2.4e-7 (float32 in WebAssembly vs torch)
    report = json.loads((tmp_path / "report" / "parity.json").read_text())
    entry = next(item for item in report["implementations"] if item["name"] == "browser")
    assert entry["status"]["state"] == "ran" and len(entry["agreement"]) == 32


def test_page_splits_a_call_longer_than_its_ring(tmp_path: Path, tiny_onnx_dir: Path) -> None:
    """The bundle's KV cache rings hold 50 frames a call; a frame stream given 120 frames at once (a live stream
    catching up) goes through in pieces and gives what the 50-frame chunks of a file give, bit for bit."""
    from mimistack.analysis.browser import BrowserRunner

    frames = 120
    pcm = np.resize(load_audio(speech_file("flite_awb")), frames * 1920).astype(np.float32)
    runner = BrowserRunner(tiny_onnx_dir, tmp_path)
    try:
        codes = runner.encode(pcm)
        assert codes.shape == (32, frames)
        np.testing.assert_array_equal(runner.encode(pcm, one_call=True), codes)
        for levels in (8, 32):
            chunked = runner.decode(codes[:levels])
            assert chunked.shape == (frames * 1920,)
            np.testing.assert_array_equal(runner.decode(codes[:levels], one_call=True), chunked)
    finally:
        runner.close()
