"""The golden `.mimi` files (`tests/data/golden/`, made by its `make_golden.py`) against both implementations.

Python (`mimistack.mimifile`): every golden decodes to what `index.json` lists; the v2 ones re-encode to the same
bytes; the v1 ones still decode (and the v1 writer kept for them reproduces them); the generator reproduces every
file. TypeScript (`web/src/mimi-format.ts`, compiled with tsc and run in Node by `tests/js_protocol/golden.mjs`):
the same goldens decode to the same fields (range-coded ones are refused with a message that says so), the v2
packed ones are rewritten byte for byte, and files and prefixes Python writes read back identically in JS. Needs
node and `npm ci --prefix tests/js_protocol` for the TypeScript part.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mimistack import mimifile
from mimistack.tokens import TokenGrid, grid_from_bytes, grid_to_bytes
from ts_harness import HARNESS, TSC, TSC_FLAGS

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "data" / "golden"
INDEX = json.loads((GOLDEN / "index.json").read_text())["goldens"]
IDS = [entry["file"] for entry in INDEX]


def _bytes(entry: dict[str, Any]) -> bytes:
    return (GOLDEN / entry["file"]).read_bytes()


# -- Python ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("entry", INDEX, ids=IDS)
def test_every_golden_decodes_to_the_listed_record(entry: dict[str, Any]) -> None:
    data = _bytes(entry)
    assert len(data) == entry["bytes"] and hashlib.sha256(data).hexdigest() == entry["file_sha256"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a golden is complete: no TruncatedFileWarning
        decoded = mimifile.decode(data, entry["file"])
    record, header = decoded.record, decoded.header
    assert (header.version, header.layout, header.coding) == (entry["version"], entry["layout"], entry["coding"])
    assert record.num_levels == entry["num_levels"] and record.num_frames == entry["num_frames"]
    assert record.num_samples == entry["num_samples"] and record.sample_rate == entry["sample_rate"]
    assert record.frame_rate == entry["frame_rate"] and record.codebook_size == entry["codebook_size"]
    assert record.weights_sha256 == entry["weights_sha256"]
    assert list(record.levels_present) == entry["levels_present"]
    assert record.metadata == entry["metadata"]
    assert hashlib.sha256(record.codes.astype("<u2").tobytes()).hexdigest() == entry["codes_sha256"]
    np.testing.assert_array_equal(record.codes, np.array(entry["codes"], dtype=np.uint16).reshape(record.codes.shape))
    assert isinstance(grid_from_bytes(data), TokenGrid)


@pytest.mark.parametrize("entry", INDEX, ids=IDS)
def test_re_encoding_a_golden_reproduces_its_bytes(entry: dict[str, Any]) -> None:
    data = _bytes(entry)
    record = mimifile.record_from_bytes(data)
    again = mimifile.record_to_bytes(record, layout=entry["layout"], coding=entry["coding"], version=entry["version"])
    assert again == data
    if entry["version"] == 1:  # a v1 file re-encoded by the default writer is a v2 file of the same record
        upgraded = mimifile.record_to_bytes(record, layout=entry["layout"], coding=entry["coding"])
        assert upgraded[8:10] == b"\x02\x00" and mimifile.record_from_bytes(upgraded) == record


def test_the_size_target_golden_is_within_700_bytes() -> None:
    (entry,) = [e for e in INDEX if e["file"] == "v2-32-levels-1s.mimi"]
    assert entry["num_levels"] == 32 and entry["num_samples"] == 24_000 and entry["weights_sha256"]
    assert entry["bytes"] <= 700


def test_the_generator_reproduces_every_file(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(GOLDEN / "make_golden.py"), "--check"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    result = subprocess.run(
        [sys.executable, str(GOLDEN / "make_golden.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted([*IDS, "index.json"])
    for name in written:
        assert (tmp_path / name).read_bytes() == (GOLDEN / name).read_bytes(), name


# -- TypeScript ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mimi_format_js(tmp_path_factory: pytest.TempPathFactory) -> Path:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed; the TypeScript .mimi reader cannot be tested")
    if not TSC.exists():
        pytest.fail(f"TypeScript is not installed for the JS tests: run npm ci --prefix {HARNESS}")
    out = tmp_path_factory.mktemp("mimi-format-js")
    result = subprocess.run(
        [node, str(TSC), str(REPO / "web" / "src" / "mimi-format.ts"), "--outDir", str(out), *TSC_FLAGS],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"tsc failed on web/src/mimi-format.ts:\n{result.stdout}{result.stderr}"
    (out / "package.json").write_text('{"type": "module"}\n')
    return out / "mimi-format.js"


def _node(module: Path, inputs: list[bytes], tmp_path: Path) -> dict[str, Any]:
    source, target = tmp_path / "in.json", tmp_path / "out.json"
    source.write_text(json.dumps([data.hex() for data in inputs]))
    result = subprocess.run(
        ["node", str(HARNESS / "golden.mjs"), str(module), str(GOLDEN), str(target), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert target.exists(), f"golden.mjs wrote nothing:\n{result.stdout}{result.stderr}"
    output: dict[str, Any] = json.loads(target.read_text())
    assert result.returncode == 0, f"golden.mjs failed:\n{result.stderr}"
    return output


def _js_fields(record: mimifile.MimiRecord, version: int, truncation: bool) -> dict[str, Any]:
    return {
        "version": version,
        "numLevels": record.num_levels,
        "numFrames": record.num_frames,
        "numSamples": record.num_samples,
        "sampleRate": record.sample_rate,
        "frameRate": record.frame_rate,
        "codebookSize": record.codebook_size,
        "weightsSha256": record.weights_sha256,
        "levelsPresent": list(record.levels_present),
        "metadata": record.metadata,
        "codesSha256": hashlib.sha256(record.codes.astype("<u2").tobytes()).hexdigest(),
        "truncated": truncation,
    }


def test_typescript_reads_every_golden_and_rewrites_the_v2_ones(mimi_format_js: Path, tmp_path: Path) -> None:
    output = _node(mimi_format_js, [], tmp_path)
    assert [g["file"] for g in output["goldens"]] == IDS
    assert all(not g["problems"] for g in output["goldens"])
    for entry, result in zip(INDEX, output["goldens"], strict=True):
        assert result["ok"] == (entry["coding"] == "packed11"), entry["file"]
        if result["ok"]:  # whatever JS writes (even where Python zlib'd the metadata), Python reads the same record
            rewritten = mimifile.record_from_bytes(bytes.fromhex(result["rewritten"]))
            assert rewritten == mimifile.record_from_bytes(_bytes(entry)), entry["file"]


def _python_inputs() -> list[bytes]:
    rng = np.random.default_rng(11)
    files = []
    for levels, frames, codebook, present in [
        (32, 13, 2048, None),
        (32, 63, 2048, None),
        (8, 125, 2048, None),
        (5, 9, 5, (0, 2, 4)),
        (3, 0, 2048, None),
        (40, 7, 65536, (1, 39)),
    ]:
        samples = frames * 1920 - 3 * bool(frames)
        grid = TokenGrid(
            codes=rng.integers(0, codebook, size=(levels, frames)),
            num_samples=samples,
            codebook_size=codebook,
            weights_sha256=rng.bytes(32).hex(),
            levels_present=present,
            metadata={"source": "café.wav", "writer": "mimistack-web"} if levels == 8 else {},
        )
        files.append(grid_to_bytes(grid.with_levels(grid.levels_present)))
    files.append(
        grid_to_bytes(TokenGrid(codes=rng.integers(0, 2048, size=(4, 6)), num_samples=6 * 1920), layout="frame-major")
    )
    return files


def test_typescript_reads_and_rewrites_python_files_and_their_prefixes(mimi_format_js: Path, tmp_path: Path) -> None:
    files = _python_inputs()
    cases: list[bytes] = []
    for data in files:
        header, start = mimifile.readwrite.parse_header(data, "<bytes>")
        cases.append(data)
        for section in header.sections:  # every section boundary, and a cut inside each section
            end = start + section.offset + section.length
            cases += [data[:end], data[: end - section.length // 2]]
    output = _node(mimi_format_js, cases, tmp_path)
    for data, result in zip(cases, output["inputs"], strict=True):
        decoded = mimifile.decode(data, "<bytes>")  # (returns the truncation; does not warn)
        assert result["ok"], result
        expected = _js_fields(decoded.record, decoded.header.version, decoded.truncation is not None)
        truncated = expected.pop("truncated")
        assert (result["truncation"] is not None) == truncated
        assert {key: result[key] for key in expected} == expected
        if decoded.truncation is None and decoded.header.layout == "level-major":
            assert bytes.fromhex(result["rewritten"]) == data  # the JS writer writes Python's bytes exactly
