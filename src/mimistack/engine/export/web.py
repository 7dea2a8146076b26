"""`export_web_bundle`: the lean model bundle the browser page runs, made from an export folder.

Part of `engine.export` (see its package docstring). The page needs two graphs and the codebooks: the streaming
encoder (its quantizer inside) and the streaming decoder, which takes the summed latent. The level sum is a few row
additions and two small projections per frame, so the page computes it itself from the quantizer's own tables:
those tables are stored once, in `codebooks.bin`, which is at the same time the encoder graph's ONNX external data
(the quantizer's MatMul reads them) and the page's table for the latent sum. Nothing else is stored twice, and
`embed.onnx` (a second copy of every centroid) is not part of a bundle.

Two bundles:

* **exact**: float32, the export's graphs unchanged: codes identical to the export's (and so to the Python
  engines'), checked here on a signal before the bundle is published;
* **light**: every large float tensor stored as float16 and cast to float32 inside the graph, so that ONNX Runtime
  computes in float32 (it folds the casts when it loads the graph). About half the bytes; its code agreement and
  decode SNR against the exact bundle are measured here and written into the manifest, where the page shows them.

The written contract (manifest fields, `codebooks.bin` layout, `bundles.json`) is in `docs/web.md`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..._files import publish_dir, staging_dir
from ..._version import __version__
from ...config import MimiConfig
from ...levels import CodebookTables, latent_from_codes
from ..onnx_format import CODEBOOKS_NAME, StateSpec, check_files, load_codebooks, read_manifest, ring_slots
from .checks import _check_signal, _run_stream, _session
from .common import VARIANT_SIGNAL_SECONDS, ExportError
from .writer import _file_entry

WEB_FORMAT = "mimistack-web"
WEB_FORMAT_VERSION = 1
BUNDLES_FORMAT = "mimistack-web-bundles"
BUNDLES_NAME = "bundles.json"
BUNDLES = ("exact", "light")
STORAGE = {"exact": "float32", "light": "float16"}
GRAPH_FILES = {"encoder": "encoder_stream.onnx", "decoder": "decoder_stream.onnx"}
CODEBOOKS_FILE = "codebooks.bin"
FP16_MIN_ELEMENTS = 256
"""Float tensors smaller than this stay float32 in the light bundle (biases, scales: a few kB in all)."""
_TABLE_PREFIX = "quantizer/level_"
_ALIGN = 64


def _table_index(name: str) -> int | None:
    """The level of a quantizer table initializer (`quantizer/level_K/table`), else None."""
    if not (name.startswith(_TABLE_PREFIX) and name.endswith("/table")):
        return None
    return int(name[len(_TABLE_PREFIX) : -len("/table")])


def _cast_to_float(onnx: Any, source: str, target: str) -> Any:
    return onnx.helper.make_node("Cast", [source], [target], name=f"{target}/cast", to=onnx.TensorProto.FLOAT)


def _store_fp16(onnx: Any, model: Any) -> int:
    """Store every large float32 initializer of `model` (except the quantizer tables, handled with the codebooks) as
    float16 with a Cast back to float32 in front of its users; returns how many were converted."""
    graph = model.graph
    inputs = {value.name for value in graph.input}
    casts, kept, converted = [], [], 0
    for tensor in graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:  # the quantizer tables: already in codebooks.bin
            kept.append(tensor)
            continue
        array = onnx.numpy_helper.to_array(tensor)
        convert = (
            array.dtype == np.float32
            and array.size >= FP16_MIN_ELEMENTS
            and tensor.name not in inputs
            and _table_index(tensor.name) is None
            and bool(np.all(np.abs(array) <= np.finfo(np.float16).max))
        )
        if not convert:
            kept.append(tensor)
            continue
        half = onnx.numpy_helper.from_array(array.astype(np.float16), f"{tensor.name}/fp16")
        kept.append(half)
        casts.append(_cast_to_float(onnx, half.name, tensor.name))
        converted += 1
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = [*casts, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    return converted


def _externalise_tables(onnx: Any, model: Any, storage: str) -> np.ndarray:
    """Take the quantizer tables (`-2 eᵀ`, [d, size] per level) out of the encoder graph into external data in
    `codebooks.bin` at offset 0, stacked [K, d, size] in `storage` dtype; returns the stacked array to write."""
    graph = model.graph
    tables: dict[int, Any] = {}
    for tensor in graph.initializer:
        level = _table_index(tensor.name)
        if level is not None:
            tables[level] = tensor
    if sorted(tables) != list(range(len(tables))) or not tables:
        raise ExportError("the encoder graph has no quantizer tables quantizer/level_K/table for levels 0..K-1")
    dtype = np.dtype(storage)
    stacked = np.stack([onnx.numpy_helper.to_array(tables[k]) for k in range(len(tables))]).astype(dtype)
    per_level = stacked[0].nbytes
    casts = []
    for level, tensor in tables.items():
        name = tensor.name
        if storage == "float16":
            tensor.name = f"{name}/fp16"
            tensor.data_type = onnx.TensorProto.FLOAT16
            casts.append(_cast_to_float(onnx, tensor.name, name))
        tensor.ClearField("raw_data")
        tensor.ClearField("float_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        del tensor.external_data[:]
        for key, value in (("location", CODEBOOKS_FILE), ("offset", level * per_level), ("length", per_level)):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, str(value)
    if casts:
        nodes = [*casts, *graph.node]
        del graph.node[:]
        graph.node.extend(nodes)
    return stacked


def _codebooks_file(tables: np.ndarray, codebook_tables: CodebookTables, storage: str) -> tuple[bytes, dict[str, Any]]:
    """The bytes of codebooks.bin and its manifest entry: tables [K, d, size] at 0, then the two output
    projections [D, d], each aligned to 64 bytes."""
    dtype = np.dtype(storage)
    parts: list[bytes] = []
    entry: dict[str, Any] = {"file": CODEBOOKS_FILE, "dtype": storage}
    offset = 0
    for name, array in (
        ("tables", tables),
        ("semantic_output_proj", codebook_tables.semantic_output_proj),
        ("acoustic_output_proj", codebook_tables.acoustic_output_proj),
    ):
        pad = (-offset) % _ALIGN
        parts.append(b"\0" * pad)
        offset += pad
        data = np.ascontiguousarray(array, dtype=dtype.newbyteorder("<")).tobytes()
        entry[name] = {"offset": offset, "shape": list(array.shape)}
        parts.append(data)
        offset += len(data)
    return b"".join(parts), entry


def read_bundle_latent_tables(folder: Path, manifest: dict[str, Any]) -> CodebookTables:
    """The level-sum tables exactly as the page reads them from `codebooks.bin` (float32), for checks and tests."""
    entry = manifest["codebooks"]
    raw = (folder / entry["file"]).read_bytes()
    dtype = np.dtype(entry["dtype"]).newbyteorder("<")

    def array(name: str) -> np.ndarray:
        shape = entry[name]["shape"]
        count = int(np.prod(shape))
        return np.frombuffer(raw, dtype=dtype, count=count, offset=entry[name]["offset"]).reshape(shape)

    tables = array("tables").astype(np.float32)  # [K, d, size] = -2 eᵀ
    centroids = np.ascontiguousarray(np.transpose(tables, (0, 2, 1)) * np.float32(-0.5))  # [K, size, d]
    semantic = int(manifest["num_semantic"])
    return CodebookTables(
        semantic_codebooks=centroids[:semantic],
        acoustic_codebooks=centroids[semantic:],
        semantic_input_proj=np.zeros((0, 0), np.float32),
        semantic_output_proj=array("semantic_output_proj").astype(np.float32),
        acoustic_input_proj=np.zeros((0, 0), np.float32),
        acoustic_output_proj=array("acoustic_output_proj").astype(np.float32),
    )


def _weights_fields(source: object) -> dict[str, Any]:
    """`weights_source` without the local path (a published site must not carry the exporter's folders) and
    `random_weights` (from the note `write_random_checkpoint` leaves in the file, when the file is still there)."""
    from ...weights import NOTE_METADATA_KEY, RANDOM_NOTE, read_metadata

    text = str(source or "")
    path = Path(text)
    is_random = path.name.startswith("random-") and path.suffix == ".safetensors"
    if path.is_file():
        try:
            is_random = RANDOM_NOTE in read_metadata(path).get(NOTE_METADATA_KEY, "")
        except Exception:  # an unreadable header: keep the name's guess
            pass
    local = path.is_absolute() or path.exists() or text.endswith(".safetensors")
    return {"weights_source": path.name if local else text, "random_weights": is_random}


def _snr_db(estimate: np.ndarray, reference: np.ndarray) -> float | None:
    """Signal-to-error ratio in dB, rounded to 0.01; None when the two are identical (JSON has no infinity)."""
    noise = float(np.sum((estimate.astype(np.float64) - reference) ** 2))
    power = float(np.sum(reference.astype(np.float64) ** 2))
    return None if noise == 0 else round(10.0 * float(np.log10(max(power, 1e-30) / noise)), 2)


class _Runner:
    """One bundle's (or the source export's) graphs on ONNX Runtime, streamed from zero state in chunks."""

    def __init__(self, folder: Path, specs: dict[str, list[StateSpec]], config: MimiConfig) -> None:
        self.encoder = _session(folder / GRAPH_FILES["encoder"])
        self.decoder = _session(folder / GRAPH_FILES["decoder"])
        self.specs, self.config = specs, config

    def encode(self, pcm: np.ndarray) -> np.ndarray:
        frames = pcm.shape[-1] // self.config.frame_size
        return _run_stream(
            self.encoder, "pcm", "codes", pcm, self.specs["encoder"], _chunks(frames), self.config.frame_size
        )

    def decode(self, latent: np.ndarray) -> np.ndarray:
        return _run_stream(self.decoder, "latent", "pcm", latent, self.specs["decoder"], _chunks(latent.shape[-1]), 1)


PAGE_CHUNK_FRAMES = 50
"""The most frames the page gives one graph call (`web/src/engine/worker.ts`: CHUNK_FRAMES)."""


def _page_states(stream: dict[str, Any]) -> list[dict[str, Any]]:
    """A stream graph's states for the page: a ring KV cache gets the slot count that calls of up to
    `PAGE_CHUNK_FRAMES` frames need, written as a number (the page makes every state from its manifest shape)."""
    ring = stream.get("ring")
    if ring is None:
        return list(stream["states"])
    slots = ring_slots(ring, PAGE_CHUNK_FRAMES)
    return [
        {**state, "shape": [slots if dim == "ring" else dim for dim in state["shape"]]} for state in stream["states"]
    ]


def _chunks(frames: int, size: int = PAGE_CHUNK_FRAMES) -> list[int]:
    """The page's chunking of a file (`PAGE_CHUNK_FRAMES` frames a call)."""
    return [min(size, frames - start) for start in range(0, frames, size)]


def _signal(config: MimiConfig, audio: np.ndarray | None) -> tuple[np.ndarray, str]:
    if audio is None:
        frames = int(VARIANT_SIGNAL_SECONDS * config.frame_rate)
        return _check_signal(config, frames, seed=11), f"synthetic signal, {VARIANT_SIGNAL_SECONDS:g} s"
    frames = max(1, audio.shape[-1] // config.frame_size)
    pcm = np.zeros(frames * config.frame_size, np.float32)
    pcm[: min(audio.shape[-1], pcm.size)] = audio[: pcm.size]
    return pcm[None, None, :], f"given audio, {pcm.size / config.sample_rate:.1f} s"


@dataclasses.dataclass(frozen=True)
class _Source:
    """The export folder a bundle is made from, and its outputs on the measuring signal (computed once for every
    bundle made from it): they are the exact bundle's outputs."""

    folder: Path
    manifest: dict[str, Any]
    config: MimiConfig
    tables: CodebookTables
    specs: dict[str, list[StateSpec]]
    pcm: np.ndarray
    signal: str
    codes: np.ndarray
    latent: np.ndarray
    audio: np.ndarray
    audio8: np.ndarray

    @classmethod
    def read(cls, folder: Path, audio: np.ndarray | None) -> _Source:
        manifest = read_manifest(folder)
        check_files(folder, manifest, [*GRAPH_FILES.values(), CODEBOOKS_NAME])
        config = MimiConfig.from_dict(manifest["config"])
        tables = load_codebooks(folder / CODEBOOKS_NAME)
        streams = manifest["streams"]
        specs = {
            direction: [StateSpec.from_dict(s) for s in _page_states(streams[file.removesuffix(".onnx")])]
            for direction, file in GRAPH_FILES.items()
        }
        runner = _Runner(folder, specs, config)
        pcm, signal = _signal(config, audio)
        codes = runner.encode(pcm)
        latent = latent_from_codes(tables, codes)
        audio8 = runner.decode(latent_from_codes(tables, codes, _prefix(config)))
        return cls(folder, manifest, config, tables, specs, pcm, signal, codes, latent, runner.decode(latent), audio8)


def _prefix(config: MimiConfig) -> list[int]:
    return list(range(min(8, config.num_levels)))


def _measure(source: _Source, bundle: _Runner, tables: CodebookTables) -> dict[str, Any]:
    """The bundle against the source export (= the exact bundle): codes, the level sum and decoded audio."""
    codes = bundle.encode(source.pcm)
    latent = latent_from_codes(tables, source.codes)
    same_codes = bundle.decode(latent)
    end_to_end = bundle.decode(latent_from_codes(tables, codes))
    audio8 = bundle.decode(latent_from_codes(tables, source.codes, _prefix(source.config)))
    return {
        "signal": source.signal,
        "code_agreement_vs_exact": float((codes == source.codes).mean()),
        "level0_agreement_vs_exact": float((codes[:, 0] == source.codes[:, 0]).mean()),
        "latent_max_abs_vs_exact": float(np.max(np.abs(latent - source.latent))),
        "decode_snr_db_vs_exact": _snr_db(same_codes, source.audio),
        "decode_levels_0_7_snr_db_vs_exact": _snr_db(audio8, source.audio8),
        "end_to_end_snr_db_vs_exact": _snr_db(end_to_end, source.audio),
        "decode_max_abs_vs_exact": float(np.max(np.abs(same_codes - source.audio))),
    }


def export_web_bundle(
    onnx_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    bundle: str = "exact",
    *,
    audio: np.ndarray | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Write the `bundle` ("exact" or "light") of the export folder `onnx_dir` into `out_dir` (created whole, or
    replacing an earlier bundle with `force`); returns its manifest. See `export_web_bundles`."""
    return export_web_bundles(onnx_dir, {bundle: out_dir}, audio=audio, force=force)[bundle]


def export_web_bundles(
    onnx_dir: str | os.PathLike[str],
    targets: dict[str, str | os.PathLike[str]],
    *,
    audio: np.ndarray | None = None,
    force: bool = False,
) -> dict[str, dict[str, Any]]:
    """Write each bundle of `targets` ({"exact" | "light": folder}) of the export folder `onnx_dir`; the export is
    run once on the measuring signal for all of them. Returns {bundle: manifest}.

    `audio`: float32 mono at the model's rate to measure the bundles on (default: a synthetic 4 s signal). The
    exact bundle must reproduce the export's codes and audio on it bit for bit, or nothing is written.
    """
    unknown = [name for name in targets if name not in BUNDLES]
    if unknown:
        raise ExportError(f"unknown bundle {unknown[0]!r}; expected one of {', '.join(BUNDLES)}")
    for out_dir in targets.values():
        target = Path(out_dir)
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            if not force or not (target / "manifest.json").is_file():
                raise FileExistsError(
                    f"{target} exists and is not empty"
                    + ("; pass force=True (--force) to replace it" if not force else ", and it is not a web bundle")
                )
    source = _Source.read(Path(onnx_dir), audio)
    return {name: _write_bundle(source, name, Path(out_dir)) for name, out_dir in targets.items()}


def _write_bundle(source: _Source, bundle: str, target: Path) -> dict[str, Any]:
    import onnx

    started = time.perf_counter()
    config, storage, streams = source.config, STORAGE[bundle], source.manifest["streams"]
    with staging_dir(target) as staging:
        converted = 0
        graphs: dict[str, Any] = {}
        for direction, file in GRAPH_FILES.items():
            model = onnx.load_model(str(source.folder / file))
            if direction == "encoder":
                stacked = _externalise_tables(onnx, model, storage)
                data, codebooks_entry = _codebooks_file(stacked, source.tables, storage)
                (staging / CODEBOOKS_FILE).write_bytes(data)
            if bundle == "light":
                converted += _store_fp16(onnx, model)
            onnx.save_model(model, str(staging / file))
            stream = streams[file.removesuffix(".onnx")]
            graphs[direction] = {
                "file": file,
                "input": stream["input"],
                "output": stream["output"],
                "states": _page_states(stream),
                "max_frames_per_call": PAGE_CHUNK_FRAMES,
                "external_data": [CODEBOOKS_FILE] if direction == "encoder" else [],
            }
        files = {name: _file_entry(staging / name) for name in (*GRAPH_FILES.values(), CODEBOOKS_FILE)}
        manifest: dict[str, Any] = {
            "format": WEB_FORMAT,
            "format_version": WEB_FORMAT_VERSION,
            "bundle": bundle,
            "storage": storage,
            "compute": "float32",
            "mimistack_version": __version__,
            "weights_sha256": source.manifest["weights_sha256"],
            **_weights_fields(source.manifest.get("weights_source")),
            "config": source.manifest["config"],
            "sample_rate": config.sample_rate,
            "frame_size": config.frame_size,
            "num_levels": config.num_levels,
            "codebook_size": config.codebook_size,
            "dimension": config.dimension,
            "codebook_dim": int(source.tables.semantic_output_proj.shape[1]),
            "num_semantic": source.tables.num_semantic,
            "graphs": graphs,
            "codebooks": codebooks_entry,
            "files": files,
            "total_bytes": sum(entry["bytes"] for entry in files.values()),
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
        measured = _measure(
            source, _Runner(staging, source.specs, config), read_bundle_latent_tables(staging, manifest)
        )
        if bundle == "exact" and (measured["code_agreement_vs_exact"] != 1.0 or measured["decode_max_abs_vs_exact"]):
            raise ExportError(f"the exact web bundle does not reproduce {source.folder}: {measured}")
        if bundle == "light":
            measured["tensors_stored_fp16"] = converted
        measured["seconds"] = round(time.perf_counter() - started, 2)
        manifest["measured"] = measured
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
        publish_dir(staging, target)
    return manifest


def bundles_index(
    bundles: dict[str, dict[str, Any]], *, default: str = "exact", server: bool = False
) -> dict[str, Any]:
    """`bundles.json`: the bundles of a models folder ({name: manifest}), with their sizes and measurements, so the
    page can offer them before downloading any."""
    if default not in bundles:
        default = next(iter(bundles))
    return {
        "format": BUNDLES_FORMAT,
        "format_version": WEB_FORMAT_VERSION,
        "default": default,
        "server": server,
        "bundles": {
            name: {
                "path": f"{name}/",
                "bytes": manifest["total_bytes"],
                "storage": manifest["storage"],
                "weights_sha256": manifest["weights_sha256"],
                "measured": manifest.get("measured", {}),
            }
            for name, manifest in bundles.items()
        },
    }


def read_web_manifest(folder: Path, names: Sequence[str] = ()) -> dict[str, Any]:
    """A bundle's manifest, checked for format and version (and, when `names` are given, that it lists them)."""
    path = folder / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ExportError(f"{path}: not a readable web bundle manifest ({error})") from error
    if not isinstance(manifest, dict) or manifest.get("format") != WEB_FORMAT:
        raise ExportError(f"{path} is not a mimistack web bundle manifest")
    if manifest.get("format_version") != WEB_FORMAT_VERSION:
        raise ExportError(f"{path} has web format version {manifest.get('format_version')!r}, expected 1")
    missing = [name for name in names if name not in manifest.get("files", {})]
    if missing:
        raise ExportError(f"{path} does not list {', '.join(missing)}")
    return manifest
