"""The web app end to end: Debian's Chromium, headless, driven by playwright-core (tests/e2e/drive.mjs).

`mimistack serve` runs for real (a subprocess on 127.0.0.1, as a user starts it) with a tiny random checkpoint; the
web bundles it serves under /models/ are made from the engine's export cache (exported once per test session; the
static-site mode of the page is tests/test_web_site.py). The page loads, opens a speech
file, encodes it in the browser, toggles levels and decodes; the test then checks what the page computed against
Python:

* the page's pcm equals `load_audio` of the file (a 24 kHz WAV: no resampling, so exactly);
* the page's codes equal `Codec.encode` (at least 99% of tokens: float rounding may flip a near-tie);
* every decoded selection equals `Codec.decode` of the page's codes with the same levels within
  DECODE_TOLERANCE (max abs difference; observed about 2e-7), and selections differ from each other by far more;
* the downloaded `.mimi` reads back in Python to the same tokens, byte-identical to Python's writer;
* every request went to the server on 127.0.0.1, no CSP violation, no page error;
* the plain page (no ?test in its URL) has no `window.mimistack` and loads no testing chunk: the test hooks and the
  benchmark load only on ?test / ?bench pages, which the driver opens otherwise.

Screenshots and the driver's log go to $MIMISTACK_ARTIFACTS/web-e2e/<scenario>/ (or the test's tmp_path).
Needs: /usr/bin/chromium, node, `npm ci --prefix web && npm run build --prefix web`. Without them the tests skip,
except under CI (CI=true), where a missing piece is a failure.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest

from mimistack.audio import load_audio
from mimistack.container import grid_from_bytes, grid_to_bytes
from mimistack.tokens import TokenGrid
from near_ties import assert_near_ties_only

REPO = Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "e2e" / "drive.mjs"
CHROMIUM = Path(os.environ.get("MIMISTACK_CHROMIUM", "/usr/bin/chromium"))
STATIC = REPO / "src" / "mimistack" / "server" / "static"
SPEECH_FILE = "flite_awb.wav"  # 6.8 s, male voice
DECODE_TOLERANCE = 5e-6
"""Largest |browser - Python| sample difference accepted for the same codes and levels (float32 arithmetic in
WebAssembly vs the PyTorch reference; observed about 2e-7)."""
CODE_AGREEMENT = 0.99


def _missing() -> list[str]:
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    if shutil.which("node") is None:
        missing.append("node")
    if not (REPO / "web" / "node_modules" / "playwright-core").is_dir():
        missing.append("web/node_modules (npm ci --prefix web)")
    if not (STATIC / "index.html").is_file() or not (STATIC / "ort").is_dir():
        missing.append("the built page (npm run build --prefix web)")
    return missing


def require_present(missing: list[str], what: str) -> None:
    """Skip when something the browser tests need is missing, naming it; under CI (CI=true) fail instead."""
    if missing:
        message = f"{what} need " + ", ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module", autouse=True)
def _browser_available() -> None:
    require_present(_missing(), "browser tests")


@pytest.fixture(scope="module")
def exported(tiny_onnx_dir: Path) -> Path:
    """The tiny checkpoint's ONNX graphs in the engine's export cache, where `mimistack serve` looks for them (the
    session's one export)."""
    return tiny_onnx_dir


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(exported: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`mimistack serve` in a subprocess on 127.0.0.1; yields its URL."""
    yield from _serve(tiny_checkpoint, tmp_path_factory)


def _serve(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory, *extra: str) -> Iterator[str]:
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mimistack.cli",
                "serve",
                "--weights",
                str(tiny_checkpoint),
                "--port",
                str(port),
                *extra,
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}api/info", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mimistack serve did not start:\n{log.read_text()}") from None
                time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _artifacts(tmp_path: Path, scenario: str) -> Path:
    root = os.environ.get("MIMISTACK_ARTIFACTS")
    folder = Path(root) / "web-e2e" / scenario if root else tmp_path / scenario
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def drive(server: str, out: Path, scenario: str, audio: Path, timeout: int = 240, *extra: str) -> dict[str, Any]:
    """Run the driver; return its result.json (failing with its log when the page did not get through)."""
    command = [
        "node",
        str(DRIVER),
        "--url",
        server,
        "--out",
        str(out),
        "--scenario",
        scenario,
        "--file",
        str(audio),
        "--chromium",
        str(CHROMIUM),
        "--timeout",
        str(timeout),
        *extra,
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 120)
    result_path = out / "result.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    assert completed.returncode == 0 and not result.get("failure"), (
        f"driver failed: {result.get('failure')}\n{completed.stdout}\n{completed.stderr}\n"
        f"console: {result.get('console')}"
    )
    return result


def check_clean(result: dict[str, Any], server: str) -> None:
    """Every request stayed on the server; no CSP violation; no uncaught page error; screenshots written."""
    origin = urlsplit(server)
    assert result["requests"], "the driver recorded no requests"
    for request in result["requests"]:
        url = urlsplit(request["url"])
        if url.scheme in ("data", "blob"):
            continue
        assert (url.scheme, url.hostname, url.port) == ("http", "127.0.0.1", origin.port), request
    assert result["cspViolations"] == []
    assert result["pageErrors"] == []
    assert not [m for m in result["console"] if m["type"] == "error"], result["console"]
    assert result["crossOriginIsolated"] is True


def check_plain_page(result: dict[str, Any]) -> None:
    """The page opened without ?test got ready without the test hooks; the ?test page then loaded them."""
    plain = result["plainPage"]
    assert "test" not in urlsplit(plain["url"]).query.split("&"), plain
    assert plain["ready"] == "true", plain
    assert plain["mimistack"] == "undefined", plain
    assert plain["testingChunks"] == [], plain
    assert any("/assets/hooks-" in r["url"] for r in result["requests"]), "the ?test page did not load the hooks chunk"


def floats(path: Path) -> np.ndarray:
    return np.fromfile(path, dtype="<f4")


def check_decodes(out: Path, result: dict[str, Any], codes: np.ndarray, num_samples: int, codec: Any) -> None:
    """Each decoded selection equals Python's decode of the page's codes with those levels."""
    grid = TokenGrid(codes=codes, num_samples=num_samples, codebook_size=codec.codebook_size)
    decoded = {}
    for step in result["steps"]:
        selection = step["selection"]
        page = floats(out / f"decoded_{selection.replace(',', '_')}.f32")
        expected = codec.decode(grid, selection)
        assert page.shape == expected.shape, selection
        error = float(np.abs(page - expected).max())
        assert error <= DECODE_TOLERANCE, f"levels {selection}: max |browser - python| = {error:.3g}"
        decoded[selection] = expected
    # The comparison can tell selections apart: they differ by much more than the tolerance.
    selections = list(decoded)
    for first, second in itertools.pairwise(selections):
        if first != second:
            assert np.abs(decoded[first] - decoded[second]).max() > 4 * DECODE_TOLERANCE, (first, second)


def test_page_encodes_toggles_and_decodes_like_python(
    server: str, speech: list[Path], tiny_codec: Any, tmp_path: Path
) -> None:
    audio = next(p for p in speech if p.name == SPEECH_FILE)
    out = _artifacts(tmp_path, "browser")
    # A frame-major file written by Python (as a live writer appends it), opened in the page at the end.
    other = tiny_codec.encode(load_audio(speech[0]))
    frame_major = out / "python-frame-major.mimi"
    frame_major.write_bytes(grid_to_bytes(other, layout="frame-major"))
    result = drive(server, out, "roundtrip", audio, 240, "--open-mimi", str(frame_major))
    check_clean(result, server)
    check_plain_page(result)
    assert result["engine"]["executionProvider"] == "wasm" and result["engine"]["streaming"] is True
    assert [s["selection"] for s in result["steps"]] == ["0-31", "0-7", "0-2,4-7", "0", "0-31", "0-7"]
    assert result["steps"][-1]["state"]["numFrames"] == result["steps"][0]["state"]["numFrames"]  # .mimi reopened
    assert result["experimentalBadge"] is True  # 0-2,4-7 is not a prefix
    assert result["errorShown"]["visible"] and "cannot decode this file" in result["errorShown"]["state"]
    assert not any("/api/" in r["url"] and r["method"] == "POST" for r in result["requests"])  # nothing uploaded
    for name in ("00-loaded.png", "01-all-levels.png", "03-without-level-3.png", "05-spectrogram.png"):
        assert (out / name).stat().st_size > 10_000, name

    reference = load_audio(audio)
    page_pcm = floats(out / "original.f32")
    assert page_pcm.shape == reference.shape and np.abs(page_pcm - reference).max() <= 1e-7

    expected = tiny_codec.encode(reference)
    codes = np.fromfile(out / "codes.u16", dtype="<u2").reshape(expected.num_levels, -1)
    assert codes.shape == expected.codes.shape
    assert (codes == expected.codes).mean() >= CODE_AGREEMENT
    check_decodes(out, result, codes, len(reference), tiny_codec)

    mimi = (out / "download.mimi").read_bytes()
    grid = grid_from_bytes(mimi)
    assert np.array_equal(grid.codes, codes) and grid.num_samples == len(reference)
    assert grid.weights_sha256 == tiny_codec.weights_sha256
    assert grid.metadata == {"source": SPEECH_FILE, "writer": "mimistack-web"}
    assert grid_to_bytes(grid) == mimi  # the JS writer produces Python's bytes exactly
    assert result["downloadName"] == "flite_awb.mimi"

    # The page read Python's frame-major file and decoded it as Python does.
    assert result["openedMimi"]["numFrames"] == other.num_frames
    assert result["openedMimi"]["numSamples"] == other.num_samples
    page = floats(out / "opened_decoded_0-7.f32")
    assert np.abs(page - tiny_codec.decode(other, "0-7")).max() <= DECODE_TOLERANCE


def test_page_in_server_mode_decodes_like_python(
    server: str, speech: list[Path], tiny_codec: Any, tmp_path: Path
) -> None:
    audio = next(p for p in speech if p.name == SPEECH_FILE)
    out = _artifacts(tmp_path, "server")
    result = drive(server, out, "server", audio)  # with ?browserLimit=2: the 6.7 s file goes to the server
    check_clean(result, server)
    check_plain_page(result)
    assert urlsplit(result["plainPage"]["url"]).query == "browserLimit=2"
    assert all(step["state"]["mode"] == "server" for step in result["steps"])
    assert "encoded and decoded by the server" in result["notice"]
    posts = [urlsplit(r["url"]).path for r in result["requests"] if r["method"] == "POST"]
    assert posts.count("/api/encode") == 1 and posts.count("/api/decode") >= len(result["steps"])
    expected = tiny_codec.encode(load_audio(audio))
    codes = np.fromfile(out / "codes.u16", dtype="<u2").reshape(expected.num_levels, -1)
    assert np.array_equal(codes, expected.codes)  # the server's own codec: identical
    check_decodes(out, result, codes, expected.num_samples, tiny_codec)


def test_live_stream_from_the_microphone(server: str, speech: list[Path], tiny_codec: Any, tmp_path: Path) -> None:
    """Chromium's fake microphone plays a speech file; frames stream through the models as they arrive."""
    audio = next(p for p in speech if p.name == SPEECH_FILE)
    out = _artifacts(tmp_path, "live")
    result = drive(server, out, "live", audio)
    check_clean(result, server)
    live = result["liveState"]["live"]
    assert live["frames"] >= 37 and live["columns"] == live["frames"]
    captured = floats(out / "original.f32")
    assert np.abs(captured).max() > 0.05  # the fake microphone delivered the speech, not silence
    codes = np.fromfile(out / "codes.u16", dtype="<u2").reshape(tiny_codec.num_levels, -1)
    assert codes.shape[1] == -(-len(captured) // tiny_codec.frame_size)
    # Streaming frame by frame in the browser computes what batch encoding computes in Python: every difference
    # starts at a near-tie (the captured audio differs from run to run, and so do its near-ties).
    assert_near_ties_only(tiny_codec, captured, codes, tiny_codec.encode(captured).codes)
    check_decodes(out, result, codes, len(captured), tiny_codec)

    # Then a plain recording, encoded and decoded afterwards like a file.
    recorded = floats(out / "recorded_original.f32")
    assert len(recorded) >= 2 * 24000 and np.abs(recorded).max() > 0.05
    recorded_codes = np.fromfile(out / "recorded_codes.u16", dtype="<u2").reshape(tiny_codec.num_levels, -1)
    assert (recorded_codes == tiny_codec.encode(recorded).codes).mean() >= CODE_AGREEMENT
    grid = TokenGrid(codes=recorded_codes, num_samples=len(recorded), codebook_size=tiny_codec.codebook_size)
    error = np.abs(floats(out / "recorded_decoded_0-7.f32") - tiny_codec.decode(grid, "0-7")).max()
    assert error <= DECODE_TOLERANCE


def test_light_bundle_and_catch_up_steps_in_the_page(server: str, speech: list[Path], tmp_path: Path) -> None:
    """`?bundle=light` loads the light web bundle (float16 storage) that the server serves next to the exact one;
    the page's benchmark hook streams with 1, 2 and 4 frames per decoder call (live mode's catch-up steps) and
    times each."""
    audio = next(p for p in speech if p.name == SPEECH_FILE)
    out = _artifacts(tmp_path, "light")
    result = drive(
        server, out, "bench", audio, 240, "--bundle", "light", "--seconds", "2", "--repeats", "1", "--threads", "1"
    )
    check_clean(result, server)
    assert any("/assets/bench-" in r["url"] for r in result["requests"]), "the ?bench page loaded no bench chunk"
    bench = result["bench"]
    assert bench["bundle"] == "light" and bench["numThreads"] == 1
    models = [urlsplit(r["url"]).path for r in result["requests"] if "/models/" in r["url"]]
    assert "/models/light/decoder_stream.onnx" in models and not any("/models/exact/" in p for p in models), models
    for key in ("streamDecodeRealtime", "stream2DecodeRealtime", "stream4DecodeRealtime"):
        assert bench[key] > 0, key
