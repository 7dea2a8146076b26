"""The export folder's format, read and written the same way by `engine.export` (the writer), `engine.onnx` (the
engine), the server and the web worker: the manifest, the graph file names, the stream states and the codebooks
file. The written contract is `docs/onnx.md`.

Sits on `config`, `levels` and `engine.base`; numpy and the standard library only (no onnxruntime, no torch).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..levels import CodebookTables
from .base import CacheMode, EngineError

FORMAT = "mimistack-onnx"
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
"""Format 2: the window stream graphs keep their KV caches in a ring whose size the caller picks (a "ring" dim)."""
MANIFEST_NAME = "manifest.json"
CODEBOOKS_NAME = "codebooks.safetensors"
TRANSFORMERS_JS_DIR = "transformers.js"
VARIANTS = ("fp32", "fp16", "int8")
STREAM_GRAPHS: dict[tuple[str, CacheMode], str] = {
    ("encoder", "window"): "encoder_stream",
    ("decoder", "window"): "decoder_stream",
    ("encoder", "moshi"): "encoder_stream_moshi",
    ("decoder", "moshi"): "decoder_stream_moshi",
}
"""Stream graph per (direction, cache mode). "moshi" graphs keep Kyutai's ring-cache arithmetic (opt-in export)."""
CODEBOOK_FIELDS = tuple(f.name for f in dataclasses.fields(CodebookTables))


class OnnxDirError(EngineError):
    """An export folder that is missing, incomplete, corrupt or made for other weights."""


def graph_file(name: str, variant: str = "fp32") -> str:
    """File name of graph `name` ("encoder", "decoder_stream", ...) in `variant` ("fp32", "fp16", "int8")."""
    if variant not in VARIANTS:
        raise EngineError(f"unknown variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    return f"{name}.onnx" if variant == "fp32" else f"{name}.{variant}.onnx"


# -- the folder -----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StateSpec:
    """One state tensor of a stream graph. `shape` holds "batch" where the batch size goes and "ring" where the
    slot count of a ring KV cache goes (format 2 window graphs: see `ring_slots`); every state starts as zeros."""

    input: str
    output: str
    shape: tuple[int | str, ...]
    dtype: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StateSpec:
        return cls(input=data["name"], output=data["output"], shape=tuple(data["shape"]), dtype=data["dtype"])

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.input, "output": self.output, "shape": list(self.shape), "dtype": self.dtype, "initial": 0}

    @property
    def ringed(self) -> bool:
        return "ring" in self.shape

    def dims(self, batch_size: int, ring: int | None = None) -> tuple[int, ...]:
        """The shape of this state for `batch_size` rows and rings of `ring` slots."""
        sizes: list[int] = []
        for dim in self.shape:
            if dim == "ring":
                if ring is None:
                    raise EngineError(f"state {self.input} is a ring KV cache: its slot count is needed")
                sizes.append(ring)
            else:
                sizes.append(batch_size if dim == "batch" else int(dim))
        return tuple(sizes)

    def zeros(self, batch_size: int, ring: int | None = None) -> np.ndarray:
        return np.zeros(self.dims(batch_size, ring), dtype=np.dtype(self.dtype))


def ring_slots(ring: dict[str, int], frames_per_call: int) -> int:
    """The ring size R a stream needs to take calls of up to `frames_per_call` frames with batch mode's window:
    R >= context + T - 1 for T transformer steps per call. `ring` is a stream graph's manifest entry
    `{"context": C, "steps_per_frame": S}`."""
    return int(ring["context"]) + int(ring["steps_per_frame"]) * max(1, frames_per_call) - 1


def ring_frames(ring: dict[str, int], slots: int) -> int:
    """The most frames one call may take on a ring of `slots` slots (the inverse of `ring_slots`)."""
    return (slots - int(ring["context"]) + 1) // int(ring["steps_per_frame"])


def read_manifest(onnx_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of an export folder, checked for format and version (files are checked by `check_files`)."""
    folder = Path(onnx_dir)
    hint = f"export one with `mimistack export-onnx --weights W -o {folder}` (needs torch) and pass --onnx {folder}"
    if not folder.exists():
        raise OnnxDirError(f"ONNX folder {folder} does not exist; {hint}")
    if not folder.is_dir():
        raise OnnxDirError(f"{folder} is a file, not an ONNX export folder; {hint}")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise OnnxDirError(f"{folder} holds no {MANIFEST_NAME}, so it is not a mimistack ONNX export; {hint}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise OnnxDirError(f"{path} is corrupt ({error}); re-export with `mimistack export-onnx --force`") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise OnnxDirError(f"{path} is not a mimistack ONNX manifest (format {found!r}, expected {FORMAT!r})")
    if manifest.get("format_version") not in READABLE_FORMAT_VERSIONS:
        raise OnnxDirError(
            f"{path} has format version {manifest.get('format_version')!r}; this mimistack reads "
            f"versions {' and '.join(map(str, READABLE_FORMAT_VERSIONS))}: re-export with this version "
            "(`mimistack export-onnx --force`)"
        )
    missing = [key for key in ("config", "weights_sha256", "files", "streams", "opset") if key not in manifest]
    if missing:
        raise OnnxDirError(f"{path} lacks {', '.join(missing)}; re-export with `mimistack export-onnx --force`")
    return manifest


def check_files(
    onnx_dir: str | os.PathLike[str], manifest: dict[str, Any], names: Sequence[str], verify_sha256: bool = False
) -> None:
    """Every file in `names` is listed, present and of the recorded size (and sha256 when asked)."""
    from ..weights import file_sha256

    folder = Path(onnx_dir)
    files = manifest["files"]
    for name in names:
        entry = files.get(name)
        if entry is None:
            raise OnnxDirError(
                f"{folder / MANIFEST_NAME} does not list {name}; re-export with "
                "`mimistack export-onnx --force` (and the variant or stream mode you need)"
            )
        path = folder / name
        if not path.is_file():
            raise OnnxDirError(f"{path} is missing from the export; re-export with `mimistack export-onnx --force`")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise OnnxDirError(
                f"{path} is {size} bytes, the manifest says {entry['bytes']}: the export is corrupt "
                "or was changed; re-export with `mimistack export-onnx --force`"
            )
        if verify_sha256 and file_sha256(path) != entry["sha256"]:
            raise OnnxDirError(
                f"{path} does not match its sha256 in the manifest: the export is corrupt; re-export "
                "with `mimistack export-onnx --force`"
            )


def load_codebooks(path: str | os.PathLike[str]) -> CodebookTables:
    """The codebook tables saved beside the graphs (safetensors, numpy)."""
    from safetensors.numpy import load_file

    try:
        arrays = load_file(str(path))
    except Exception as error:
        raise OnnxDirError(
            f"{path} is not a readable safetensors file ({error}); re-export with `mimistack export-onnx --force`"
        ) from error
    missing = [name for name in CODEBOOK_FIELDS if name not in arrays]
    if missing:
        raise OnnxDirError(f"{path} lacks {', '.join(missing)}; re-export with `mimistack export-onnx --force`")
    return CodebookTables(**{name: np.ascontiguousarray(arrays[name], dtype=np.float32) for name in CODEBOOK_FIELDS})
