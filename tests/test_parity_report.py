"""`mimistack parity`: the implementations the repository already proves equal are reported at 100 %, a model
whose weights were nudged in one level is reported as disagreeing from that level on, and the report names the
weights (random, sha256) in its first line. Plus the comparisons the report is built on, on known answers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mimistack.analysis.agreement import (
    audio_difference,
    first_difference_margins,
    first_differences,
    level_agreement,
    nearest_margins,
    quantizer_distances,
)
from mimistack.levels import quantize
from mimistack.testing import synthetic_signal
from mimistack.weights import codebook_tables, load_weights, read_safetensors

torch = pytest.importorskip("torch")

from mimistack.analysis.parity import IMPLEMENTATIONS, CodecRunner, Implementation, run_parity  # noqa: E402

PERTURBED_LEVEL = 5
ALL_NAMES = [item.name for item in IMPLEMENTATIONS]


# -- the comparisons, on known answers ---------------------------------------------------------------------------
def test_agreement_and_first_differences_on_known_codes() -> None:
    reference = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 9, 9, 9]])
    other = np.array([[1, 2, 0, 4], [5, 0, 7, 8], [9, 9, 0, 9]])
    np.testing.assert_allclose(level_agreement(reference, other), [0.75, 0.75, 0.75])
    np.testing.assert_array_equal(first_differences(reference, other), [-1, 1, 0, -1])
    with pytest.raises(ValueError, match="levels"):
        level_agreement(reference, other[:2])


def test_margins_on_known_distances() -> None:
    distances = np.array([[[1.0, 3.0, 1.5]], [[2.0, 2.0, 5.0]]], dtype=np.float32)  # [K=2, T=1, C=3]
    np.testing.assert_allclose(nearest_margins(distances), [[0.5], [0.0]])
    flips = first_difference_margins(distances, np.array([[0], [0]]), np.array([[2], [1]]))
    assert [(f.frame, f.level) for f in flips] == [(0, 0)]
    assert flips[0].margin == pytest.approx(0.5)


def test_audio_difference_known_values() -> None:
    a = np.ones(100, dtype=np.float32)
    relative, snr = audio_difference(a, a * 1.1)
    assert relative == pytest.approx(0.1, rel=1e-6)
    assert snr == pytest.approx(20.0, rel=1e-5)
    assert audio_difference(a, a) == (0.0, 200.0)


def test_distances_follow_the_quantizer(tiny_checkpoint: Path) -> None:
    """Along the quantizer's own path, the chosen token is the nearest centroid at every level and frame."""
    weights = load_weights(tiny_checkpoint)
    tables = codebook_tables(weights.tensors, weights.config)
    latent = np.random.default_rng(0).standard_normal((1, tables.dimension, 7)).astype(np.float32)
    codes = quantize(tables, latent)[0]
    distances = quantizer_distances(tables, latent[0], codes)
    np.testing.assert_array_equal(distances.argmin(-1), codes)
    assert (nearest_margins(distances) >= 0).all()


# -- the matrix ------------------------------------------------------------------------------------------------------
def _perturbed_checkpoint(source: Path, target: Path, level: int) -> Path:
    """`source` with the codebook of acoustic `level` nudged: its centroids moved by half their spread."""
    from safetensors.numpy import save_file

    tensors, metadata = read_safetensors(source)
    key = f"quantizer.rvq_rest.vq.layers.{level - 1}._codebook.embedding_sum"
    book = tensors[key]
    noise = np.random.default_rng(1).standard_normal(book.shape).astype(np.float32)
    tensors = {**tensors, key: book + 0.5 * float(book.std()) * noise}
    save_file(tensors, str(target), metadata=metadata)
    return target


@pytest.mark.usefixtures("one_torch_thread")
def test_tiny_matrix_onnx_and_a_perturbed_level(tmp_path: Path, tiny_checkpoint: Path, tiny_onnx_dir: Path) -> None:
    from mimistack.codec import Codec

    perturbed = _perturbed_checkpoint(tiny_checkpoint, tmp_path / "perturbed.safetensors", PERTURBED_LEVEL)
    nudged = Implementation(
        "perturbed",
        f"level {PERTURBED_LEVEL}'s codebook nudged",
        "",
        lambda setup: CodecRunner(Codec.load(perturbed, chunk_frames=4096)),
    )
    keep = {"moshi-batch", "mimistack-torch", "onnx-fp32", "onnx-int8"}
    result = run_parity(
        tiny_checkpoint,
        [("a", synthetic_signal(2.0, seed=3)), ("b", synthetic_signal(1.0, seed=4))],
        out_dir=tmp_path / "report",
        extra=[nudged],
        skip=[name for name in ALL_NAMES if name not in keep],
        plots=False,
    )
    # moshi builds the official architecture only: the reference falls back to mimistack's exact torch engine.
    assert result.get("moshi-batch").status == "skipped"
    assert "official" in result.get("moshi-batch").reason
    assert result.reference == "mimistack-torch"
    assert result.get("mimistack-torch").agreement == [1.0] * 32

    onnx = result.get("onnx-fp32")
    assert onnx.status == "ran", onnx.reason
    assert onnx.agreement is not None and np.mean(onnx.agreement) >= 0.99  # what tests/test_onnx.py proves
    assert (onnx.rel_l2(32) or 0.0) <= 1e-4
    int8 = result.get("onnx-int8")
    assert int8.status == "ran" and int8.agreement is not None
    assert np.mean(int8.agreement) < np.mean(onnx.agreement)  # dynamic int8 is visibly less exact

    bad = result.get("perturbed")
    assert bad.status == "ran" and bad.agreement is not None and bad.first_level is not None
    assert bad.agreement[:PERTURBED_LEVEL] == [1.0] * PERTURBED_LEVEL
    assert bad.agreement[PERTURBED_LEVEL] < 0.8
    assert bad.first_level[:PERTURBED_LEVEL].sum() == 0 and bad.first_level[PERTURBED_LEVEL] > 0
    assert len(bad.margins) == bad.first_level.sum() and min(bad.margins) >= 0.0

    data = json.loads((tmp_path / "report" / "parity.json").read_text())
    assert data["weights"]["sha256"] == result.weights.sha256 and data["weights"]["random"] is True
    entries = {item["name"]: item for item in data["implementations"]}
    assert len(entries["perturbed"]["agreement"]) == 32
    assert entries["perturbed"]["first_difference"]["per_level"][PERTURBED_LEVEL] > 0
    assert entries["transformers"]["status"]["state"] == "skipped"
    assert "pip install" in entries["transformers"]["status"]["install"]
    assert set(entries["onnx-fp32"]["audio_rel_l2"]) == {"8", "32"}
    first = (tmp_path / "report" / "parity.md").read_text().splitlines()[0]
    assert first.startswith("RANDOM WEIGHTS") and result.weights.sha256 in first


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_official_matrix_moshi_transformers_rustymimi_torch(tmp_path: Path, official_checkpoint: Path) -> None:
    """Where tests/test_parity_moshi.py proves identical codes (mimistack torch, transformers' layout), and for
    transformers' own MimiModel and rustymimi on the same random official weights: 100 % on every level."""
    pytest.importorskip("moshi")
    pytest.importorskip("transformers")
    pytest.importorskip("rustymimi")
    keep = {"moshi-batch", "transformers", "rustymimi", "mimistack-torch"}
    result = run_parity(
        official_checkpoint,
        [("synthetic", synthetic_signal(1.0, seed=3))],
        out_dir=tmp_path / "report",
        skip=[name for name in ALL_NAMES if name not in keep],
    )
    assert result.reference == "moshi-batch"
    for name in sorted(keep):
        item = result.get(name)
        assert item.status == "ran", (name, item.reason)
        assert item.agreement == [1.0] * 32, name
        assert (item.rel_l2(8) or 0.0) <= 1e-5 and (item.rel_l2(32) or 0.0) <= 1e-5, name
    assert result.get("mimistack-torch-cuda").status == "skipped"
    assert (tmp_path / "report" / "parity_heatmap.png").stat().st_size > 1000


def test_cli_parity_and_bad_input(tmp_path: Path, tiny_checkpoint: Path) -> None:
    from mimistack.audio import save_audio
    from mimistack.cli.main import main

    clip = save_audio(tmp_path / "clip.wav", synthetic_signal(1.0, seed=5))
    skip = ",".join(name for name in ALL_NAMES if name != "mimistack-torch")
    args = [str(clip), "--weights", str(tiny_checkpoint), "--skip", skip, "--no-plots"]
    assert main(["parity", *args, "-o", str(tmp_path / "out")]) == 0
    assert json.loads((tmp_path / "out" / "parity.json").read_text())["reference"] == "mimistack-torch"
    assert main(["parity", *args, "-o", str(tmp_path / "out")]) == 2  # not empty, no --force
    assert main(["parity", str(tmp_path / "missing.wav"), "--weights", str(tiny_checkpoint), "-o", "x"]) == 2
    bad_skip = [str(clip), "--weights", str(tiny_checkpoint), "--skip", "nonsense", "-o", str(tmp_path / "o2")]
    assert main(["parity", *bad_skip]) == 2
