"""ONNX export (`engine.export`) and the ONNX Runtime engine (`engine.onnx`) on the tiny random model.

One export of the tiny checkpoint serves the whole session (tracing takes a minute or two on 2 cores); every test
compares against the torch engine or the numpy level algebra.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mimistack.codec import Codec
from mimistack.config import MimiConfig
from mimistack.engine.base import EngineError
from mimistack.engine.export import ExportError, export_onnx
from mimistack.engine.onnx import OnnxEngine
from mimistack.engine.onnx_cache import cached_export_dir, load_onnx_engine
from mimistack.engine.onnx_format import MANIFEST_NAME, OnnxDirError
from mimistack.engine.options import OnnxOptions, TorchOptions
from mimistack.levels import Levels, latent_from_codes
from mimistack.testing import synthetic_signal, write_random_checkpoint
from near_ties import TOKEN_AGREEMENT, assert_codes_match

REPO = Path(__file__).resolve().parents[1]
CONTEXT_FRAMES = MimiConfig.tiny().context // 2
"""Frames inside the tiny config's attention context (2 transformer steps a frame)."""
AUDIO_TOLERANCE = 1e-5


@pytest.fixture(scope="session")
def onnx_dir(tiny_onnx_dir: Path) -> Path:
    return tiny_onnx_dir


@pytest.fixture(scope="session")
def manifest(onnx_dir: Path) -> dict:
    return json.loads((onnx_dir / MANIFEST_NAME).read_text())


@pytest.fixture(scope="session")
def onnx_codec(onnx_dir: Path) -> Codec:
    return Codec.load(engine=OnnxOptions(onnx_dir=onnx_dir))


def session(path: Path):  # -> onnxruntime.InferenceSession
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def relative_l2(estimate: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(estimate - reference) / np.linalg.norm(reference))


def frames_of(seconds: float, seed: int) -> np.ndarray:
    return synthetic_signal(seconds, seed=seed)


# -- the folder -----------------------------------------------------------------------------------------------
def test_export_writes_every_graph_with_the_contract_names_and_shapes(onnx_dir: Path, manifest: dict) -> None:
    expected = {
        "encoder.onnx": ({"pcm": ["batch", 1, "1920*frames"]}, {"codes": ["batch", 32, "frames"]}),
        "decoder.onnx": ({"latent": ["batch", 32, "frames"]}, {"pcm": ["batch", 1, "1920*frames"]}),
        "embed.onnx": ({"codes": ["batch", 32, "frames"], "level_mask": [32]}, {"latent": ["batch", 32, "frames"]}),
    }
    for name, (inputs, outputs) in expected.items():
        graph = session(onnx_dir / name)
        assert {i.name: len(i.shape) for i in graph.get_inputs()} == {k: len(v) for k, v in inputs.items()}, name
        assert {o.name: len(o.shape) for o in graph.get_outputs()} == {k: len(v) for k, v in outputs.items()}, name
        for value in graph.get_inputs():
            fixed = [d for d in inputs[value.name] if isinstance(d, int)]
            assert [d for d in value.shape if isinstance(d, int)] == fixed, (name, value.name, value.shape)
    for name in ("encoder_stream", "decoder_stream", "encoder_stream_moshi", "decoder_stream_moshi"):
        stream = manifest["streams"][name]
        graph = session(onnx_dir / f"{name}.onnx")
        inputs = {i.name: i for i in graph.get_inputs()}
        outputs = [o.name for o in graph.get_outputs()]
        assert stream["input"] in inputs and outputs[0] == stream["output"]
        assert len(stream["states"]) == len(inputs) - 1 == len(outputs) - 1 > 10
        for state in stream["states"]:
            value = inputs[state["name"]]
            assert state["output"] in outputs and state["initial"] == 0
            assert list(value.shape) == state["shape"], state
        ringed = [state for state in stream["states"] if "ring" in state["shape"]]
        if stream["mode"] == "window":  # the KV caches: a ring whose size the caller picks, updated in place
            assert len(ringed) == 2 * manifest["config"]["num_layers"]
            assert stream["ring"] == {"context": manifest["config"]["context"], "steps_per_frame": 2}
            assert manifest["variants"]["fp32"]["in_place"][name] == [state["name"] for state in ringed]
        else:
            assert not ringed and "ring" not in stream
            assert value.type == {"float32": "tensor(float)", "int64": "tensor(int64)"}[state["dtype"]]
    for name, entry in manifest["files"].items():
        data = (onnx_dir / name).read_bytes()
        assert len(data) == entry["bytes"]
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
    assert (onnx_dir / "codebooks.safetensors").is_file()
    assert manifest["config"]["dimension"] == 32 and manifest["frame_size"] == 1920
    assert manifest["checks"]["worst_codes_agreement"] >= TOKEN_AGREEMENT
    assert manifest["checks"]["worst_audio_relative_l2"] <= AUDIO_TOLERANCE


def test_every_onnx_file_carries_its_provenance(onnx_dir: Path, tiny_checkpoint: Path, manifest: dict) -> None:
    from mimistack.weights import file_sha256

    files = sorted(onnx_dir.rglob("*.onnx"))
    assert len(files) >= 21  # 7 fp32 graphs + 2 tjs, each also as fp16 and int8 (embed stays fp32)
    for path in files:
        meta = session(path).get_modelmeta()
        props = meta.custom_metadata_map
        assert props["weights_sha256"] == file_sha256(tiny_checkpoint), path
        assert json.loads(props["mimistack_config"]) == manifest["config"], path
        assert props["opset"] == str(manifest["opset"]) and props["mimistack_version"] == manifest["mimistack_version"]
        assert meta.producer_name == "mimistack"


@pytest.mark.parametrize("frames", [1, 2, 5, 9])
@pytest.mark.parametrize("batch", [1, 3])
def test_batch_graphs_run_at_any_length_and_batch(onnx_dir: Path, frames: int, batch: int) -> None:
    """The frame count is dynamic in every graph (a traced-in length would fail here)."""
    pcm = np.random.default_rng(frames).standard_normal((batch, 1, frames * 1920)).astype(np.float32) * 0.1
    codes = session(onnx_dir / "encoder.onnx").run(None, {"pcm": pcm})[0]
    assert codes.shape == (batch, 32, frames) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 64
    latent = session(onnx_dir / "embed.onnx").run(None, {"codes": codes, "level_mask": np.ones(32, np.float32)})[0]
    assert latent.shape == (batch, 32, frames)
    audio = session(onnx_dir / "decoder.onnx").run(None, {"latent": latent})[0]
    assert audio.shape == (batch, 1, frames * 1920) and np.isfinite(audio).all()


# -- parity with the torch engine -----------------------------------------------------------------------------
def test_batch_encode_and_decode_match_the_torch_engine(
    onnx_codec: Codec, tiny_codec: Codec, speech: list[Path], signal: np.ndarray
) -> None:
    from mimistack.audio import load_audio

    inputs = [signal, *(load_audio(path)[: 8 * 24000 + 77 * index] for index, path in enumerate(speech))]
    torch_grids, onnx_grids = tiny_codec.encode_batch(inputs), onnx_codec.encode_batch(inputs)
    for pcm, mine, reference in zip(inputs, onnx_grids, torch_grids):
        assert_codes_match(tiny_codec, pcm, mine.codes, reference.codes)
    assert all(g.weights_sha256 == tiny_codec.weights_sha256 for g in onnx_grids)
    for grid in torch_grids[:3]:
        error = relative_l2(onnx_codec.decode(grid), tiny_codec.decode(grid))
        assert error <= AUDIO_TOLERANCE, error


def test_chunked_batch_carries_state_like_the_torch_engine(onnx_dir: Path, tiny_checkpoint: Path) -> None:
    """Codec cuts long inputs into chunks with the state carried over: 7-frame chunks here."""
    pcm = frames_of(3.0, seed=21)
    torch_codec = Codec.load(tiny_checkpoint, chunk_frames=7)
    onnx_codec = Codec.load(engine=OnnxOptions(onnx_dir=onnx_dir), chunk_frames=7)
    whole = Codec.load(engine=OnnxOptions(onnx_dir=onnx_dir)).encode(pcm)
    grid = onnx_codec.encode(pcm)
    assert_codes_match(torch_codec, pcm, grid.codes, whole.codes)
    assert_codes_match(torch_codec, pcm, grid.codes, torch_codec.encode(pcm).codes)
    assert relative_l2(onnx_codec.decode(grid, "0-7"), torch_codec.decode(grid, "0-7")) <= AUDIO_TOLERANCE


def test_streaming_equals_batch_and_the_torch_engine(onnx_codec: Codec, tiny_codec: Codec) -> None:
    pcm = frames_of(4.1, seed=5)
    batch = onnx_codec.encode(pcm)
    encoder = onnx_codec.stream_encoder()
    bounds = [0, 500, 2420, 6420, 6437, 15437, len(pcm)]  # chunks of 500, 1920, 4000, 17, 9000 and the rest
    pieces = [encoder.push(pcm[start:stop]) for start, stop in itertools.pairwise(bounds)]
    pieces.append(encoder.flush())
    streamed = np.concatenate(pieces, axis=1)
    assert_codes_match(tiny_codec, pcm, streamed, batch.codes)
    torch_encoder = tiny_codec.stream_encoder()
    torch_encoder.push(pcm)
    torch_encoder.flush()
    assert_codes_match(tiny_codec, pcm, streamed, torch_encoder.grid().codes)

    decoder, torch_decoder = onnx_codec.stream_decoder("0-7"), tiny_codec.stream_decoder("0-7")
    outputs, references = [], []
    for start, stop, levels in ((0, 1, None), (1, 4, None), (4, 20, "all"), (20, batch.num_frames, "0")):
        outputs.append(decoder.push(batch.codes[:, start:stop], levels=levels))
        references.append(torch_decoder.push(batch.codes[:, start:stop], levels=levels))
    assert relative_l2(np.concatenate(outputs), np.concatenate(references)) <= AUDIO_TOLERANCE
    whole = onnx_codec.stream_decoder("0-7").push(batch.codes)
    assert relative_l2(np.concatenate(outputs)[: 1920 * 4], whole[: 1920 * 4]) <= AUDIO_TOLERANCE


def test_moshi_cache_mode_streams_like_the_torch_engine_beyond_the_context(
    onnx_codec: Codec, tiny_codec: Codec
) -> None:
    """Past the context (8 transformer steps in the tiny config, 10 s in the official one) moshi's ring cache drops
    old keys; the moshi graphs must too."""
    pcm = frames_of(1.2, seed=8)  # 15 frames: 11 beyond the 4-frame (8-step) context
    streams = []
    for codec in (onnx_codec, tiny_codec):
        encoder = codec.stream_encoder(mode="moshi")
        encoder.push(pcm)
        encoder.flush()
        streams.append(encoder.grid().codes)
    assert_codes_match(tiny_codec, pcm, streams[0], streams[1])
    window = onnx_codec.encode(pcm).codes
    inside = CONTEXT_FRAMES
    assert_codes_match(tiny_codec, pcm[: inside * 1920], window[:, :inside], streams[0][:, :inside])
    assert not np.array_equal(window[:, inside:], streams[0][:, inside:]), "moshi mode should differ past the context"
    decoded = [codec.stream_decoder("0-3", mode="moshi").push(streams[1]) for codec in (onnx_codec, tiny_codec)]
    assert relative_l2(decoded[0], decoded[1]) <= AUDIO_TOLERANCE


def test_every_prefix_and_some_subsets_decode_through_the_one_decoder(onnx_dir: Path, tiny_codec: Codec) -> None:
    codec = Codec.load(engine=OnnxOptions(onnx_dir=onnx_dir))
    grid = tiny_codec.encode(frames_of(0.9, seed=3))
    subsets: list[object] = [*range(1, 33), "none", "0,3,9", "5", "1-31", "0,31", {2, 4, 8, 16}]
    for levels in subsets:
        onnx_pcm, torch_pcm = codec.decode(grid, levels), tiny_codec.decode(grid, levels)  # type: ignore[arg-type]
        assert relative_l2(onnx_pcm, torch_pcm) <= AUDIO_TOLERANCE, levels
    assert set(codec.engine._sessions) == {"decoder_stream"}  # type: ignore[attr-defined] - one graph for all


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_embed_graph_equals_latent_from_codes(onnx_dir: Path, onnx_codec: Codec, seed: int) -> None:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 64, size=(2, 32, 11), dtype=np.int64)
    mask = (rng.random(32) < 0.5).astype(np.float32)
    codes[:, mask == 0] = rng.integers(-5000, 5000, size=(2, int((mask == 0).sum()), 11))  # ignored rows
    latent = session(onnx_dir / "embed.onnx").run(None, {"codes": codes, "level_mask": mask})[0]
    expected = latent_from_codes(onnx_codec.engine.tables, codes, Levels(tuple(np.flatnonzero(mask).tolist())))
    assert np.abs(latent - expected).max() <= 1e-5 * max(1.0, float(np.abs(expected).max()))


# -- transformers.js graphs, from Python -------------------------------------------------------------------------
def test_transformers_js_graphs_pad_any_length_and_take_every_prefix(onnx_dir: Path, onnx_codec: Codec) -> None:
    folder = onnx_dir / "transformers.js"
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "mimi" and config["num_quantizers"] == 32 and config["hidden_size"] == 32
    assert config["codebook_dim"] == 16 and config["upsampling_ratios"] == [8, 6, 5, 4]
    pcm = frames_of(1.0, seed=4)[: 24000 - 333]
    codes = session(folder / "onnx" / "encoder_model.onnx").run(None, {"input_values": pcm[None, None]})[0]
    padded = np.zeros(13 * 1920, np.float32)
    padded[: len(pcm)] = pcm
    reference = session(onnx_dir / "encoder.onnx").run(None, {"pcm": padded[None, None]})[0]
    np.testing.assert_array_equal(codes, reference)
    decoder = session(folder / "onnx" / "decoder_model.onnx")
    for count in range(1, 33):
        audio = decoder.run(None, {"audio_codes": codes[:, :count]})[0]
        expected = onnx_codec.decode_codes(codes[0], Levels.prefix(count))
        assert audio.shape == (1, 1, 13 * 1920)
        assert relative_l2(audio[0, 0], expected) <= AUDIO_TOLERANCE, count


# -- variants -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["fp16", "int8"])
def test_variants_are_recorded_with_their_error_and_load(
    onnx_dir: Path, manifest: dict, onnx_codec: Codec, variant: str
) -> None:
    report = manifest["variants"][variant]
    errors = report["errors_vs_fp32"]
    assert 0.0 <= errors["codes_agreement"] <= 1.0 and 0.0 <= errors["level0_agreement"] <= 1.0
    assert 0.0 < errors["decoder_audio_relative_l2"] < 0.05
    assert (onnx_dir / f"encoder_stream.{variant}.onnx").is_file()
    assert (onnx_dir / "transformers.js" / "onnx" / f"decoder_model_{variant}.onnx").is_file()
    engine = load_onnx_engine(onnx_dir=onnx_dir, variant=variant)
    grid = onnx_codec.encode(frames_of(1.5, seed=9))
    pcm = Codec(engine).decode(grid)
    error = relative_l2(pcm, onnx_codec.decode(grid))
    assert error < 0.05, error
    codes = Codec(engine).encode(frames_of(1.5, seed=9)).codes
    assert codes.shape == grid.codes.shape


# -- running without torch ------------------------------------------------------------------------------------
def test_the_onnx_engine_runs_with_torch_unimportable(onnx_dir: Path, speech: list[Path]) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "no_torch_smoke.py"), str(onnx_dir), str(speech[0]), "--block-torch"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("ok:"), result.stdout


def test_no_torch_module_is_imported_on_the_onnx_path(onnx_dir: Path) -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np, mimistack\n"
        f"codec = mimistack.Codec.load(engine=mimistack.OnnxOptions(onnx_dir={str(onnx_dir)!r}))\n"
        "grid = codec.encode(np.zeros(5000, np.float32)); codec.decode(grid, '0-3')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'onnxscript'))\n"
        "print(loaded)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['torch']", result.stdout  # only the blocking None entry itself


def test_without_torch_and_without_an_export_the_error_says_what_to_do(tmp_path: Path) -> None:
    checkpoint = write_random_checkpoint(tmp_path / "other.safetensors", "tiny", seed=5)
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from mimistack.codec import Codec\n"
        f"Codec.load({str(checkpoint)!r}, engine='onnx')\n"
    )
    env = {**os.environ, "MIMISTACK_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode != 0
    assert "OnnxDirError" in result.stderr and "mimistack export-onnx --weights" in result.stderr
    assert "needs torch" in result.stderr and "--onnx" in result.stderr
    assert not (tmp_path / "cache" / "onnx").exists() or not any((tmp_path / "cache" / "onnx").iterdir())


# -- the cache keyed by the weights' sha256 ---------------------------------------------------------------------
def test_weights_without_onnx_dir_use_the_cache_keyed_by_sha256(
    onnx_dir: Path, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mimistack.engine import export as export_module
    from mimistack.weights import file_sha256

    monkeypatch.setenv("MIMISTACK_CACHE", str(tmp_path / "cache"))
    sha256 = file_sha256(tiny_checkpoint)
    folder = cached_export_dir(sha256)
    assert folder == tmp_path / "cache" / "onnx" / sha256
    calls: list[tuple[str, Path, dict]] = []

    def fake_export(weights: object, out_dir: Path, **options: object) -> None:
        calls.append((os.fspath(weights), Path(out_dir), options))  # type: ignore[arg-type]
        if options.get("force"):
            shutil.rmtree(out_dir)
        shutil.copytree(onnx_dir, out_dir)

    monkeypatch.setattr(export_module, "export_onnx", fake_export)
    first = load_onnx_engine(weights=tiny_checkpoint)
    assert calls == [(str(tiny_checkpoint), folder, {"transformers_js": False, "force": False})]
    assert first.onnx_dir == folder and first.weights_sha256 == sha256
    second = Codec.load(tiny_checkpoint, engine="onnx")
    assert len(calls) == 1, "the second load must reuse the cached export"
    assert second.weights_sha256 == sha256
    # An export of an older format (still readable) is made again, once, to get the current graphs.
    manifest = folder / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format_version": 1}))
    third = load_onnx_engine(weights=tiny_checkpoint)
    assert calls[1:] == [(str(tiny_checkpoint), folder, {"transformers_js": False, "force": True})]
    assert json.loads(manifest.read_text())["format_version"] == 2 and third.weights_sha256 == sha256
    load_onnx_engine(weights=tiny_checkpoint)
    assert len(calls) == 2


def test_onnx_dir_from_other_weights_is_refused(onnx_dir: Path, tmp_path: Path) -> None:
    other = write_random_checkpoint(tmp_path / "other.safetensors", "tiny", seed=9)
    with pytest.raises(OnnxDirError, match="exported from weights with sha256"):
        load_onnx_engine(weights=other, onnx_dir=onnx_dir)


# -- broken folders -------------------------------------------------------------------------------------------
def broken_copy(onnx_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(onnx_dir, target)
    return target


def test_missing_folder_and_missing_manifest_are_explained(tmp_path: Path) -> None:
    with pytest.raises(OnnxDirError, match=r"does not exist; export one with `mimistack export-onnx"):
        OnnxEngine(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OnnxDirError, match=r"holds no manifest\.json"):
        Codec.load(engine=OnnxOptions(onnx_dir=tmp_path / "empty"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(OnnxDirError, match="is a file"):
        OnnxEngine(tmp_path / "file")


@pytest.mark.parametrize(
    "damage, message",
    [
        ("manifest_json", "is corrupt"),
        ("manifest_version", "format version 99"),
        ("manifest_format", "not a mimistack ONNX manifest"),
        ("truncate_graph", "bytes, the manifest says"),
        ("delete_graph", "is missing from the export"),
        ("delete_codebooks", r"codebooks\.safetensors is missing"),
    ],
)
def test_corrupt_folders_are_refused_with_a_clear_error(
    onnx_dir: Path, tmp_path: Path, damage: str, message: str
) -> None:
    folder = broken_copy(onnx_dir, tmp_path)
    manifest_path = folder / MANIFEST_NAME
    data = json.loads(manifest_path.read_text())
    if damage == "manifest_json":
        manifest_path.write_text(manifest_path.read_text()[:100])
    elif damage == "manifest_version":
        manifest_path.write_text(json.dumps({**data, "format_version": 99}))
    elif damage == "manifest_format":
        manifest_path.write_text(json.dumps({**data, "format": "something-else"}))
    elif damage == "truncate_graph":
        graph = folder / "decoder_stream.onnx"
        graph.write_bytes(graph.read_bytes()[:1000])
    elif damage == "delete_graph":
        (folder / "encoder_stream.onnx").unlink()
    else:
        (folder / "codebooks.safetensors").unlink()
    with pytest.raises(OnnxDirError, match=message):
        Codec.load(engine=OnnxOptions(onnx_dir=folder))


def test_same_size_corruption_is_caught_by_sha256_or_by_onnx_runtime(onnx_dir: Path, tmp_path: Path) -> None:
    folder = broken_copy(onnx_dir, tmp_path)
    graph = folder / "encoder_stream.onnx"
    data = bytearray(graph.read_bytes())
    data[: len(data) // 2] = bytes(len(data) // 2)  # same size, garbage protobuf
    graph.write_bytes(bytes(data))
    with pytest.raises(OnnxDirError, match="does not match its sha256"):
        OnnxEngine(folder, verify_sha256=True)
    engine = OnnxEngine(folder)
    with pytest.raises(OnnxDirError, match=r"ONNX Runtime cannot load .*encoder_stream\.onnx"):
        engine.encode(np.zeros((1, 1, 1920), np.float32), None, "window")


def test_missing_variant_and_foreign_state_are_refused(onnx_dir: Path, tmp_path: Path, onnx_codec: Codec) -> None:
    folder = broken_copy(onnx_dir, tmp_path)
    (folder / "decoder_stream.fp16.onnx").unlink()
    with pytest.raises(OnnxDirError, match=r"decoder_stream\.fp16\.onnx is missing"):
        OnnxEngine(folder, variant="fp16")
    with pytest.raises(EngineError, match="unknown variant"):
        OnnxEngine(onnx_dir, variant="int4")
    engine = onnx_codec.engine
    decoder_state = engine.init_decoder_state(1, "window")
    with pytest.raises(EngineError, match="does not belong to encoder_stream"):
        engine.encode(np.zeros((1, 1, 1920), np.float32), decoder_state, "window")
    with pytest.raises(EngineError, match="state is for batch size 2"):
        engine.encode(np.zeros((1, 1, 1920), np.float32), engine.init_encoder_state(2, "window"), "window")
    with pytest.raises(EngineError, match=r"pcm must be \[B, 1, N\*1920\]"):
        engine.encode(np.zeros((1, 1, 1000), np.float32), None, "window")


# -- exporting ------------------------------------------------------------------------------------------------
def test_export_refuses_to_overwrite_without_force_and_foreign_folders_even_with_it(
    tmp_path: Path, tiny_checkpoint: Path
) -> None:
    target = tmp_path / "out"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty; pass force=True"):
        export_onnx(tiny_checkpoint, target)
    with pytest.raises(FileExistsError, match="not a mimistack ONNX export"):
        export_onnx(tiny_checkpoint, target, force=True)
    assert (target / "notes.txt").read_text() == "mine"
    with pytest.raises(ExportError, match="unknown variant"):
        export_onnx(tiny_checkpoint, tmp_path / "new", variants=("fp32", "bf8"))
    with pytest.raises(ExportError, match="opset 13 is too old"):
        export_onnx(tiny_checkpoint, tmp_path / "new", opset=13)


def test_cli_export_onnx_checks_its_arguments(
    tmp_path: Path, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mimistack import cli
    from mimistack.engine import export as export_module

    target = tmp_path / "out"
    target.mkdir()
    (target / "x").write_text("x")
    assert cli.main(["export-onnx", "--weights", str(tiny_checkpoint), "-o", str(target)]) == 2
    assert "not empty; pass --force" in capsys.readouterr().err
    assert cli.main(["export-onnx", "--weights", str(tiny_checkpoint), "-o", str(tmp_path / "a" / "b")]) == 2
    assert "does not exist" in capsys.readouterr().err

    seen: dict = {}

    def fake_export(weights: object, out_dir: Path, **options: object) -> None:
        seen.update(options, weights=weights, out_dir=out_dir)
        raise ExportError("stopped by the test")

    monkeypatch.setattr(export_module, "export_onnx", fake_export)
    code = cli.main(
        [
            "export-onnx",
            "--weights",
            str(tiny_checkpoint),
            "-o",
            str(tmp_path / "new"),
            "--fp16",
            "--int8",
            "--moshi-stream",
            "--no-transformers-js",
            "-q",
        ]
    )
    assert code == 1 and "stopped by the test" in capsys.readouterr().err
    assert seen["variants"] == ["fp32", "fp16", "int8"] and seen["stream_modes"] == ["window", "moshi"]
    assert seen["transformers_js"] is False and seen["opset"] == 18


def test_cli_encode_and_decode_with_the_onnx_engine(
    onnx_dir: Path, tmp_path: Path, speech: list[Path], tiny_codec: Codec
) -> None:
    from mimistack import cli
    from mimistack.audio import load_audio
    from mimistack.tokens import TokenGrid

    tokens, audio = tmp_path / "speech.mimi", tmp_path / "speech.wav"
    assert (
        cli.main(["encode", str(speech[0]), "-o", str(tokens), "--engine", "onnx", "--onnx", str(onnx_dir), "-q"]) == 0
    )
    assert (
        cli.main(
            [
                "decode",
                str(tokens),
                "-o",
                str(audio),
                "--levels",
                "0-7",
                "--engine",
                "onnx",
                "--onnx",
                str(onnx_dir),
                "-q",
            ]
        )
        == 0
    )
    grid = TokenGrid.load(tokens)
    pcm = load_audio(speech[0])
    assert_codes_match(tiny_codec, pcm, grid.codes, tiny_codec.encode(pcm).codes)
    assert len(load_audio(audio)) == grid.num_samples


def test_cli_and_codec_select_an_onnx_variant(
    onnx_dir: Path, tmp_path: Path, speech: list[Path], onnx_codec: Codec, capsys: pytest.CaptureFixture[str]
) -> None:
    from mimistack import cli
    from mimistack.audio import load_audio
    from mimistack.tokens import TokenGrid

    codec = Codec.load(engine=OnnxOptions(onnx_dir=onnx_dir, variant="fp16"))
    assert codec.engine.variant == "fp16"  # type: ignore[attr-defined]
    tokens, audio = tmp_path / "speech.mimi", tmp_path / "speech.wav"
    assert (
        cli.main(
            [
                "encode",
                str(speech[0]),
                "-o",
                str(tokens),
                "--engine",
                "onnx",
                "--onnx",
                str(onnx_dir),
                "--onnx-variant",
                "int8",
                "-q",
            ]
        )
        == 0
    )
    assert (
        cli.main(
            [
                "decode",
                str(tokens),
                "-o",
                str(audio),
                "--engine",
                "onnx",
                "--onnx",
                str(onnx_dir),
                "--onnx-variant",
                "fp16",
                "-q",
            ]
        )
        == 0
    )
    grid = TokenGrid.load(tokens)
    want = codec.decode(grid)
    got = load_audio(audio)
    assert got.shape == want.shape and relative_l2(got, want) < 1e-3  # wav is 16-bit or float; fp16 either way
    capsys.readouterr()
    assert (
        cli.main(
            [
                "encode",
                str(speech[0]),
                "-o",
                str(tmp_path / "x.mimi"),
                "--weights",
                "random-tiny",
                "--engine",
                "torch",
                "--onnx-variant",
                "int8",
                "-q",
            ]
        )
        == 2
    )
    assert "--onnx and --onnx-variant are options of --engine onnx" in capsys.readouterr().err
    assert not (tmp_path / "x.mimi").exists()
    with pytest.raises(TypeError, match="variant"):
        TorchOptions(variant="int8")  # type: ignore[call-arg]
    with pytest.raises(EngineError, match="variant must be one of"):
        OnnxOptions(variant="int4")  # type: ignore[arg-type]


def test_shared_thread_pool_gives_the_same_results_and_keeps_export_checks_working(
    onnx_dir: Path, tmp_path: Path
) -> None:
    """The `mimistack` program runs every session on one ONNX Runtime pool (much faster streaming on 2 cores). In
    its own process (ONNX Runtime then refuses sessions with private pools, so never inside pytest's)."""
    script = tmp_path / "shared.py"
    script.write_text(f"""
import numpy as np
from mimistack.codec import Codec
from mimistack.engine.onnx import OnnxEngine, prefer_shared_thread_pool, shared_pool_threads
from mimistack.engine.export import _session
from mimistack.testing import synthetic_signal

folder = {str(onnx_dir)!r}
private = Codec(OnnxEngine(folder, thread_pool="session"))
pcm = synthetic_signal(1.2, seed=3)
want = private.encode(pcm)
prefer_shared_thread_pool()
shared = Codec(OnnxEngine(folder, num_threads=2))
assert shared.engine.thread_pool == "shared" and shared_pool_threads() == 2
assert Codec(OnnxEngine(folder, num_threads=1, thread_pool="session")).engine.thread_pool == "shared"  # ORT's rule
stream = shared.stream_encoder()
codes = np.concatenate([stream.push(pcm[i:i + 1920]) for i in range(0, len(pcm), 1920)] + [stream.flush()], axis=1)
assert np.array_equal(shared.encode(pcm).codes, want.codes)
assert (codes == want.codes).mean() >= 0.99, (codes == want.codes).mean()
assert np.allclose(shared.decode(want), private.decode(want), atol=1e-5)  # private's new sessions: shared too
assert private.engine.thread_pool == "shared"
_session(__import__("pathlib").Path(folder) / "embed.onnx")  # export checks still open sessions
print("ok")
""")
    completed = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0 and completed.stdout.strip().endswith("ok"), completed.stderr[-3000:]


def test_the_program_entry_point_turns_the_shared_pool_on(monkeypatch: pytest.MonkeyPatch) -> None:
    from mimistack import cli
    from mimistack.engine import ort_session as onnx_engine

    seen: list[bool] = []
    monkeypatch.setattr(onnx_engine, "prefer_shared_thread_pool", lambda enabled=True: seen.append(enabled))
    monkeypatch.setattr(sys, "argv", ["mimistack", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        cli.entry()
    assert exit_info.value.code == 0 and seen == [True]
