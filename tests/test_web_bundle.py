"""The page's model bundles (`engine.export.web`) and the static site (`mimistack export-web`).

On the tiny checkpoint's export (the session's one, `tiny_onnx_dir`): the exact bundle reproduces the export's
codes and audio bit for bit, `codebooks.bin` is at once the encoder graph's external data and the table the page
sums levels from (its layout gives `latent_from_codes` back), no tensor is stored twice, and the light bundle
stores its large tensors as float16 while computing in float32, with its measured agreement in the manifest. The
site command writes the page and both bundles and refuses what it must. The browser side is tests/test_web_site.py.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("onnx", reason="bundles are written with the [export] extra")
import onnx

from mimistack.engine.export.common import ExportError
from mimistack.engine.export.site import SiteError, write_site
from mimistack.engine.export.web import (
    _page_states,
    export_web_bundle,
    export_web_bundles,
    read_bundle_latent_tables,
    read_web_manifest,
)
from mimistack.engine.onnx_format import CODEBOOKS_NAME, StateSpec, load_codebooks
from mimistack.levels import latent_from_codes


@pytest.fixture(scope="module")
def bundles(tiny_onnx_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bundles")
    folders = {name: root / name for name in ("exact", "light")}
    export_web_bundles(tiny_onnx_dir, dict(folders))
    return folders


def _initializers(path: Path) -> dict[str, Any]:
    model = onnx.load_model(str(path), load_external_data=False)
    return {tensor.name: tensor for tensor in model.graph.initializer}


def _run(folder: Path, manifest: dict[str, Any], direction: str, value: np.ndarray) -> np.ndarray:
    from mimistack.engine.export.checks import _run_stream, _session

    graph = manifest["graphs"][direction]
    specs = [StateSpec.from_dict(s) for s in graph["states"]]
    frames = value.shape[-1] // (manifest["frame_size"] if direction == "encoder" else 1)
    return _run_stream(
        _session(folder / graph["file"]),
        graph["input"],
        graph["output"],
        value,
        specs,
        [2, frames - 2],
        manifest["frame_size"] if direction == "encoder" else 1,
    )


def test_exact_bundle_reproduces_the_export(bundles: dict[str, Path], tiny_onnx_dir: Path) -> None:
    from mimistack.testing import synthetic_signal

    folder = bundles["exact"]
    manifest = read_web_manifest(folder, ["encoder_stream.onnx", "decoder_stream.onnx", "codebooks.bin"])
    source = json.loads((tiny_onnx_dir / "manifest.json").read_text())
    assert manifest["bundle"] == "exact" and manifest["storage"] == "float32" and manifest["compute"] == "float32"
    assert manifest["weights_sha256"] == source["weights_sha256"]
    assert set(manifest["files"]) == {"encoder_stream.onnx", "decoder_stream.onnx", "codebooks.bin"}
    for name, entry in manifest["files"].items():
        data = (folder / name).read_bytes()
        assert len(data) == entry["bytes"] and hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert manifest["total_bytes"] == sum(entry["bytes"] for entry in manifest["files"].values())
    measured = manifest["measured"]
    assert measured["code_agreement_vs_exact"] == 1.0 and measured["decode_max_abs_vs_exact"] == 0.0
    assert measured["decode_snr_db_vs_exact"] is None  # identical (JSON has no infinity)

    # Run the bundle on a clip it was not measured on: codes and audio equal the export's graphs.
    frames = 9
    pcm = synthetic_signal(1.0, 24000, seed=5)[: frames * 1920].astype(np.float32)[None, None]
    codes = _run(folder, manifest, "encoder", pcm)
    reference = _run(tiny_onnx_dir, {**manifest, "graphs": _source_graphs(source)}, "encoder", pcm)
    np.testing.assert_array_equal(codes, reference)
    tables = load_codebooks(tiny_onnx_dir / CODEBOOKS_NAME)
    latent = latent_from_codes(tables, codes)
    np.testing.assert_array_equal(
        _run(folder, manifest, "decoder", latent),
        _run(tiny_onnx_dir, {**manifest, "graphs": _source_graphs(source)}, "decoder", latent),
    )


def _source_graphs(source: dict[str, Any]) -> dict[str, Any]:
    return {
        # the export's graphs with the page's ring size (the bundle writes it as a number: see `_page_states`)
        direction: {"file": f"{name}.onnx", **source["streams"][name], "states": _page_states(source["streams"][name])}
        for direction, name in (("encoder", "encoder_stream"), ("decoder", "decoder_stream"))
    }


@pytest.mark.parametrize("name", ["exact", "light"])
def test_codebooks_file_is_the_quantizer_and_the_level_sum(
    bundles: dict[str, Path], tiny_onnx_dir: Path, name: str
) -> None:
    """The encoder's quantizer tables live only in codebooks.bin (external data), and the page's reading of that file
    (`read_bundle_latent_tables`, the layout of docs/web.md) gives the level sum of the Python engines, dropped
    levels included."""
    folder = bundles[name]
    manifest = read_web_manifest(folder)
    encoder = _initializers(folder / "encoder_stream.onnx")
    external = {n: t for n, t in encoder.items() if t.data_location == onnx.TensorProto.EXTERNAL}
    assert len(external) == manifest["num_levels"]
    entries = {n: {e.key: e.value for e in t.external_data} for n, t in external.items()}
    assert {e["location"] for e in entries.values()} == {"codebooks.bin"}
    assert all(not t.raw_data for t in external.values())
    assert not any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in _initializers(folder / "decoder_stream.onnx").values()
    )
    tables = load_codebooks(tiny_onnx_dir / CODEBOOKS_NAME)
    read = read_bundle_latent_tables(folder, manifest)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, manifest["codebook_size"], size=(2, manifest["num_levels"], 7))
    tolerance = 0.0 if name == "exact" else 2e-3
    for levels in (None, [0], [1, 2, 3], [0, 5, 31]):
        expected = latent_from_codes(tables, codes, levels)
        got = latent_from_codes(read, codes, levels)
        scale = float(np.max(np.abs(expected)))
        assert float(np.max(np.abs(got - expected))) <= tolerance * scale, levels
    # No tensor is stored twice: the bundle is smaller than the export's graphs plus embed.onnx by about the
    # codebooks, and no two large initializers of the two graphs hold the same bytes.
    seen: dict[bytes, str] = {}
    for file in ("encoder_stream.onnx", "decoder_stream.onnx"):
        for tensor in _initializers(folder / file).values():
            if len(tensor.raw_data) >= 4096:
                digest = hashlib.sha256(tensor.raw_data).digest()
                assert digest not in seen, (tensor.name, seen.get(digest))
                seen[digest] = tensor.name


def test_light_bundle_stores_float16_and_computes_float32(bundles: dict[str, Path]) -> None:
    exact, light = (read_web_manifest(bundles[name]) for name in ("exact", "light"))
    assert light["storage"] == "float16" and light["codebooks"]["dtype"] == "float16"
    # Half the codebook bytes; the tiny graphs are mostly structure, so their total shrinks less than the official
    # bundle's (194.7 of 387.0 MB, BENCHMARKS.md).
    book = {
        name: manifest["files"]["codebooks.bin"]["bytes"] for name, manifest in (("exact", exact), ("light", light))
    }
    assert book["light"] <= book["exact"] / 2 + 256
    assert light["total_bytes"] < 0.85 * exact["total_bytes"]
    for file in ("encoder_stream.onnx", "decoder_stream.onnx"):
        model = onnx.load_model(str(bundles["light"] / file), load_external_data=False)
        large = [t for t in model.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
        large = [t for t in large if int(np.prod(t.dims)) >= 256]
        assert large and all(t.data_type != onnx.TensorProto.FLOAT for t in large)
        assert all(o.type.tensor_type.elem_type != onnx.TensorProto.FLOAT16 for o in model.graph.output)
        casts = [n for n in model.graph.node if n.op_type == "Cast"]
        assert len(casts) >= sum(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    measured = light["measured"]
    assert 0.0 < measured["code_agreement_vs_exact"] <= 1.0 and measured["level0_agreement_vs_exact"] > 0.0
    assert measured["decode_snr_db_vs_exact"] > 30.0 and measured["tensors_stored_fp16"] > 10


def test_bundle_refuses_bad_requests(tiny_onnx_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="unknown bundle 'int8'"):
        export_web_bundle(tiny_onnx_dir, tmp_path / "b", "int8")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        export_web_bundle(tiny_onnx_dir, taken, "exact")
    with pytest.raises(FileExistsError, match="not a web bundle"):
        export_web_bundle(tiny_onnx_dir, taken, "exact", force=True)
    assert (taken / "notes.txt").read_text() == "mine"
    not_export = tmp_path / "empty"
    not_export.mkdir()
    with pytest.raises(Exception, match=r"manifest\.json"):
        export_web_bundle(not_export, tmp_path / "c", "exact")
    assert not (tmp_path / "c").exists()


def _fake_page(root: Path) -> Path:
    (root / "ort").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>page</title>")
    (root / "ort" / "x.wasm").write_bytes(b"\0asm")
    (root / ".gitignore").write_text("*\n")
    return root


def test_site_holds_the_page_and_both_bundles(tiny_onnx_dir: Path, tmp_path: Path) -> None:
    page = _fake_page(tmp_path / "static")
    result = write_site(tiny_onnx_dir, tmp_path / "site", page)
    site = tmp_path / "site"
    assert (site / "index.html").read_text() == (page / "index.html").read_text()
    assert (site / "ort" / "x.wasm").is_file() and not (site / ".gitignore").exists()
    index = json.loads((site / "models" / "bundles.json").read_text())
    assert index == result.index and index["server"] is False and index["default"] == "exact"
    for name, entry in index["bundles"].items():
        manifest = read_web_manifest(site / "models" / entry["path"].rstrip("/"))
        assert manifest["bundle"] == name and entry["bytes"] == manifest["total_bytes"]
    # A second run needs --force, and --force replaces only a site.
    with pytest.raises(SiteError, match="not empty; pass --force"):
        write_site(tiny_onnx_dir, site, page)
    write_site(tiny_onnx_dir, site, page, bundles=("light",), default="exact", force=True)
    index = json.loads((site / "models" / "bundles.json").read_text())
    assert list(index["bundles"]) == ["light"] and index["default"] == "light"
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("keep")
    with pytest.raises(SiteError, match="not a mimistack site"):
        write_site(tiny_onnx_dir, other, page, force=True)
    assert (other / "keep.txt").read_text() == "keep"
    with pytest.raises(SiteError, match="page is not built"):
        write_site(tiny_onnx_dir, tmp_path / "site2", tmp_path / "nothing")
    assert not (tmp_path / "site2").exists()


def test_export_web_command(tiny_checkpoint: Path, tiny_onnx_dir: Path, tmp_path: Path) -> None:
    page = _fake_page(tmp_path / "static")
    command = [sys.executable, "-m", "mimistack.cli", "export-web", "--weights", str(tiny_checkpoint)]
    done = subprocess.run(
        [*command, "-o", str(tmp_path / "site"), "--bundle", "light", "--static-dir", str(page)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "light" in done.stdout and "equal to exact" in done.stdout and "http.server" in done.stdout
    assert sorted(p.name for p in (tmp_path / "site" / "models").iterdir()) == ["bundles.json", "light"]
    again = subprocess.run(
        [*command, "-o", str(tmp_path / "site"), "--static-dir", str(page)], capture_output=True, text=True, timeout=300
    )
    assert again.returncode != 0 and "pass --force" in again.stderr and "Traceback" not in again.stderr
    missing = subprocess.run(
        [*command, "-o", str(tmp_path / "site3"), "--static-dir", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert missing.returncode != 0 and "npm run build" in missing.stderr and "Traceback" not in missing.stderr
