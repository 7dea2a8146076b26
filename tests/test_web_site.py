"""The page as a static site: `mimistack export-web` writes it, `python -m http.server` serves it (under a sub-path,
as GitHub Pages does), Debian's Chromium runs it (headless, driven by tests/e2e/site.mjs with playwright-core).

One browser context goes through the driver's phases (see site.mjs), announced in http.server's request log so the
log can be split by phase. The tests then hold the page to:

* the exact bundle's codes equal `Codec.encode` (differences only at near-ties: tests/near_ties.py), and every
  decoded selection equals `Codec.decode` within DECODE_TOLERANCE; the light bundle's agreement is recorded and its
  audio held to a loose floor;
* a second visit requests no model file (they come from Cache Storage, checked);
* a damaged cached file (one byte changed, another cut short) is detected, deleted and fetched again: exactly one
  new request for each, none for the others, and the page says so and still decodes like Python;
* the service worker made the page cross-origin isolated (threads), and the page hides server mode (no server);
* every request stayed on the static server, with no CSP violation, page error or console error.

Needs: /usr/bin/chromium, node, `npm ci --prefix web && npm run build --prefix web`. Without them the tests skip,
except under CI (CI=true), where a missing piece is a failure.
"""

from __future__ import annotations

import json
import os
import re
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
from mimistack.tokens import TokenGrid
from near_ties import assert_codes_match
from test_web_e2e import CHROMIUM, DECODE_TOLERANCE, REPO, SPEECH_FILE, _free_port, _missing, floats, require_present

DRIVER = REPO / "tests" / "e2e" / "site.mjs"
MODEL_FILES = ("encoder_stream.onnx", "decoder_stream.onnx", "codebooks.bin")
FLIPPED = "exact/decoder_stream.onnx"
TRUNCATED = "exact/codebooks.bin"
LIGHT_SNR_FLOOR_DB = 30.0
"""The light bundle's decode of its own codes against Python's decode of them: float16 weights cost this much at
most (measured about 90 dB on the tiny model)."""


@pytest.fixture(scope="module", autouse=True)
def _browser_available() -> None:
    require_present(_missing(), "browser tests")


@pytest.fixture(scope="module")
def site(tiny_checkpoint: Path, tiny_onnx_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A static site of the tiny checkpoint, both bundles, at <root>/mimistack/ (served from <root>: a sub-path)."""
    root = tmp_path_factory.mktemp("site-root")
    command = [sys.executable, "-m", "mimistack.cli", "export-web", "--weights", str(tiny_checkpoint)]
    command += ["--onnx", str(tiny_onnx_dir), "-o", str(root / "mimistack"), "--bundle", "both", "-q"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr
    return root


@pytest.fixture(scope="module")
def served(site: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`python -m http.server` on the site's parent folder; yields the page's URL and the server's request log."""
    port = _free_port()
    log = tmp_path_factory.mktemp("http") / "requests.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port), "--directory", str(site)],
            stdout=subprocess.DEVNULL,
            stderr=output,
        )
    url = f"http://127.0.0.1:{port}/mimistack/"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}models/bundles.json", timeout=5):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"http.server did not start:\n{log.read_text()}") from None
                time.sleep(0.2)
        yield url, log
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture(scope="module")
def driven(
    served: tuple[str, Path], speech: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Path, dict[str, list[str]]]:
    """The driver's one run: its result.json, its output folder, and the server's requested paths by phase."""
    url, log = served
    out = Path(os.environ["MIMISTACK_ARTIFACTS"]) / "web-site" if os.environ.get("MIMISTACK_ARTIFACTS") else None
    out = out or tmp_path_factory.mktemp("web-site")
    out.mkdir(parents=True, exist_ok=True)
    audio = next(p for p in speech if p.name == SPEECH_FILE)
    command = ["node", str(DRIVER), "--url", url, "--out", str(out), "--file", str(audio), "--chromium", str(CHROMIUM)]
    command += ["--corrupt", FLIPPED, "--truncate", TRUNCATED, "--timeout", "180"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    result_path = out / "result.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else {}
    assert completed.returncode == 0 and not result.get("failure"), (
        f"driver failed: {result.get('failure')}\n{completed.stdout}\n{completed.stderr}\n"
        f"console: {result.get('console')}"
    )
    return result, out, requests_by_phase(log.read_text())


def requests_by_phase(log: str) -> dict[str, list[str]]:
    """The paths http.server logged ('"GET /path HTTP/1.1" 200'), split at the driver's `?phase=NAME` requests."""
    phases: dict[str, list[str]] = {"before": []}
    current = "before"
    for match in re.finditer(r'"GET (\S+) HTTP/[\d.]+" (\d+)', log):
        path = match.group(1)
        phase = re.search(r"[?&]phase=(\w+)", path)
        if phase:
            current = phase.group(1)
            phases[current] = []
        else:
            phases[current].append(path)
    return phases


def model_requests(paths: list[str]) -> list[str]:
    """The model files among `paths`, as 'bundle/file'."""
    return ["/".join(urlsplit(p).path.split("/")[-2:]) for p in paths if urlsplit(p).path.endswith(MODEL_FILES)]


def check_decodes(
    out: Path, prefix: str, selections: list[str], codes: np.ndarray, num_samples: int, codec: Any
) -> None:
    grid = TokenGrid(codes=codes, num_samples=num_samples, codebook_size=codec.codebook_size)
    for selection in selections:
        page = floats(out / f"{prefix}decoded_{selection.replace(',', '_')}.f32")
        expected = codec.decode(grid, selection)
        assert page.shape == expected.shape, selection
        error = float(np.abs(page - expected).max())
        assert error <= DECODE_TOLERANCE, f"{prefix}levels {selection}: max |browser - python| = {error:.3g}"


def page_codes(out: Path, prefix: str, num_levels: int) -> np.ndarray:
    return np.fromfile(out / f"{prefix}codes.u16", dtype="<u2").reshape(num_levels, -1).astype(np.int64)


def test_exact_bundle_encodes_and_decodes_like_python(
    driven: tuple[dict[str, Any], Path, dict[str, list[str]]], speech: list[Path], tiny_codec: Any
) -> None:
    result, out, requests = driven
    first = result["phases"]["first"]
    assert first["state"]["executionProvider"] == "wasm" and first["state"]["streaming"] is True
    assert "exact" in first["engine"]
    assert sorted(model_requests(requests["first"])) == sorted(f"exact/{f}" for f in MODEL_FILES)
    reference = load_audio(next(p for p in speech if p.name == SPEECH_FILE))
    assert np.abs(floats(out / "exact_original.f32") - reference).max() <= 1e-7
    expected = tiny_codec.encode(reference)
    codes = page_codes(out, "exact_", expected.num_levels)
    assert_codes_match(tiny_codec, reference, codes, expected.codes)
    assert first["selections"] == ["0-31", "0-7", "0-2,4-7", "0"]
    check_decodes(out, "exact_", first["selections"], codes, len(reference), tiny_codec)
    # The bundle select showed both bundles' sizes, and the light one's measurements, before anything downloaded.
    labels = {o["value"]: o["label"] for o in first["bundleOptions"]}
    assert set(labels) == {"exact", "light"} and all(" MB" in label for label in labels.values())
    assert "% of codes as exact" in labels["light"] and "dB" in labels["light"] and "%" not in labels["exact"]


def test_light_bundle_runs_and_its_agreement_is_recorded(
    driven: tuple[dict[str, Any], Path, dict[str, list[str]]],
    speech: list[Path],
    tiny_codec: Any,
    record_property: Any,
) -> None:
    result, out, requests = driven
    light = result["phases"]["light"]
    assert "light" in light["engine"]
    assert sorted(model_requests(requests["light"])) == sorted(f"light/{f}" for f in MODEL_FILES)
    reference = load_audio(next(p for p in speech if p.name == SPEECH_FILE))
    expected = tiny_codec.encode(reference)
    codes = page_codes(out, "light_", expected.num_levels)
    agreement = float((codes == expected.codes).mean())
    record_property("light_code_agreement", agreement)
    print(f"light bundle: {agreement:.2%} of the tokens equal Python's")
    assert agreement > 0.2  # the same model: far above chance (1/64 for the tiny model)
    grid = TokenGrid(codes=codes, num_samples=len(reference), codebook_size=tiny_codec.codebook_size)
    for selection in light["selections"]:
        page = floats(out / f"light_decoded_{selection}.f32").astype(np.float64)
        exact = tiny_codec.decode(grid, selection).astype(np.float64)
        snr = 10 * np.log10(np.sum(exact**2) / max(np.sum((page - exact) ** 2), 1e-30))
        record_property(f"light_decode_snr_db_{selection}", round(float(snr), 1))
        assert snr >= LIGHT_SNR_FLOOR_DB, f"levels {selection}: SNR {snr:.1f} dB"


def test_second_visit_loads_every_model_file_from_the_cache(
    driven: tuple[dict[str, Any], Path, dict[str, list[str]]],
) -> None:
    result, _, requests = driven
    assert model_requests(requests["second"]) == []
    assert any(p.endswith("/exact/manifest.json") for p in requests["second"])  # a new export would be seen
    assert "from this browser's cache" in result["phases"]["second"]["modelsNote"]


def test_a_damaged_cached_file_is_fetched_again(
    driven: tuple[dict[str, Any], Path, dict[str, list[str]]], speech: list[Path], tiny_codec: Any
) -> None:
    result, out, requests = driven
    corrupt = result["phases"]["corrupt"]
    damaged = {d["name"]: (d["from"], d["to"]) for d in corrupt["damaged"]}
    assert set(damaged) == {FLIPPED, TRUNCATED}
    assert damaged[FLIPPED][0] == damaged[FLIPPED][1] and damaged[TRUNCATED][1] < damaged[TRUNCATED][0]
    assert sorted(model_requests(requests["corrupt"])) == sorted([FLIPPED, TRUNCATED])
    note = corrupt["modelsNote"]
    assert "decoder_stream.onnx was damaged (sha256" in note and "codebooks.bin was damaged (" in note
    reference = load_audio(next(p for p in speech if p.name == SPEECH_FILE))
    codes = page_codes(out, "corrupt_", tiny_codec.num_levels)
    assert np.array_equal(codes, page_codes(out, "exact_", tiny_codec.num_levels))
    check_decodes(out, "corrupt_", corrupt["selections"], codes, len(reference), tiny_codec)


def test_service_worker_isolates_the_static_site(driven: tuple[dict[str, Any], Path, dict[str, list[str]]]) -> None:
    result, _, requests = driven
    for name, phase in result["phases"].items():
        state = phase["state"]
        assert state["crossOriginIsolated"] is True and phase["controlled"] is True, name
        assert state["numThreads"] >= 2 and "(isolated by service worker)" in phase["engine"], name
        assert phase["computeHidden"] is True and state["mode"] == "browser", name  # no server: browser-only
    assert sum(p.endswith("/sw.js") for p in requests["first"]) >= 1


def test_the_site_stays_on_its_server(
    driven: tuple[dict[str, Any], Path, dict[str, list[str]]], served: tuple[str, Path]
) -> None:
    result, _, requests = driven
    origin = urlsplit(served[0])
    assert result["requests"]
    for request in result["requests"]:
        url = urlsplit(request["url"])
        if url.scheme in ("data", "blob"):
            continue
        assert (url.scheme, url.hostname, url.port) == ("http", "127.0.0.1", origin.port), request
        assert url.path.startswith("/mimistack/"), request  # every URL relative to the page
    assert all(p.startswith("/mimistack/") for paths in requests.values() for p in paths)
    assert result["cspViolations"] == []
    assert result["pageErrors"] == []
    assert not [m for m in result["console"] if m["type"] == "error"], result["console"]


def test_webgpu_on_the_software_adapter_matches_webassembly(
    served: tuple[str, Path], speech: list[Path], tmp_path: Path
) -> None:
    """?ep=webgpu on the adapter headless Chromium offers here (SwiftShader, a CPU implementation of WebGPU: slow, so
    a 1.6 s clip) against ?ep=wasm on the same page: the same codes and audio within DECODE_TOLERANCE. Speed on
    this adapter says nothing about a GPU; BENCHMARKS.md records it as SwiftShader's."""
    import soundfile

    url, _ = served
    audio = load_audio(next(p for p in speech if p.name == SPEECH_FILE))[: 20 * 1920]
    clip = tmp_path / "short.wav"
    soundfile.write(clip, audio, 24000, subtype="FLOAT")
    command = ["node", str(DRIVER), "--webgpu", "--url", url, "--out", str(tmp_path), "--file", str(clip)]
    completed = subprocess.run([*command, "--chromium", str(CHROMIUM), "--timeout", "300"], capture_output=True,
                               text=True, timeout=900)  # fmt: skip
    result = json.loads((tmp_path / "result.json").read_text())
    assert completed.returncode == 0 and not result.get("failure"), result.get("failure")
    assert "webgpu" in result["phases"]["webgpu"]["engine"].lower(), result["phases"]["webgpu"]["engine"]
    wasm = np.fromfile(tmp_path / "wasm_codes.u16", dtype="<u2")
    gpu = np.fromfile(tmp_path / "webgpu_codes.u16", dtype="<u2")
    assert wasm.size == 32 * 20 and float((gpu == wasm).mean()) >= 0.99
    for selection in ("0-31", "0-7"):
        a, b = (floats(tmp_path / f"{ep}_decoded_{selection}.f32") for ep in ("wasm", "webgpu"))
        assert a.shape == b.shape and float(np.abs(a - b).max()) <= DECODE_TOLERANCE, selection
