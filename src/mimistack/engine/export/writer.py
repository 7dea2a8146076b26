"""`export_onnx`: make every graph, check it, and publish the folder whole with its manifest.

Part of `engine.export` (see its package docstring for the folder it writes).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..._files import publish_dir, staging_dir
from ..._version import __version__
from ...weights import LoadedWeights, codebook_tables, load_weights
from ..onnx_format import (
    CODEBOOK_FIELDS,
    CODEBOOKS_NAME,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST_NAME,
    STREAM_GRAPHS,
    TRANSFORMERS_JS_DIR,
    VARIANTS,
    StateSpec,
    graph_file,
)
from .checks import _check_graphs, _variant_errors
from .common import DEFAULT_OPSET, STREAM_MODES, ExportError, ExportResult
from .embed import _embed_model
from .graphs import _bind_initial_state, _in_place_states
from .trace import _build_model, _export_stream, _with_quantizer, require_export_dependencies
from .transformers_js import (
    PREPROCESSOR_CONFIG,
    _transformers_js_decoder,
    _transformers_js_encoder,
    transformers_config,
)
from .variants import _fp16, _int8

logger = logging.getLogger(__name__)


def _file_entry(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"sha256": digest.hexdigest(), "bytes": path.stat().st_size}


def _save(onnx: Any, model: Any, path: Path, metadata: dict[str, str], role: str) -> None:
    del model.metadata_props[:]
    for key, value in {**metadata, "mimistack_graph": role}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "mimistack"
    model.producer_version = __version__
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))  # into the staging folder: `publish_dir` gives every file its final mode


def _check_target(target: Path, force: bool) -> None:
    if not target.exists():
        return
    if not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a folder")
    if not any(target.iterdir()):
        return
    if not force:
        raise FileExistsError(f"{target} exists and is not empty; pass force=True (--force) to replace it")
    if not (target / MANIFEST_NAME).is_file():
        raise FileExistsError(
            f"{target} is not a mimistack ONNX export (no {MANIFEST_NAME}); refusing to replace "
            "it even with --force: choose another folder"
        )


def _publish(staging: Path, target: Path, force: bool) -> None:
    """Move the finished folder into place (a rename: readers never see a half-written export)."""
    _check_target(target, force)
    if target.exists() and not any(target.iterdir()):
        target.rmdir()
    publish_dir(staging, target)


def export_onnx(
    weights: LoadedWeights | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    variants: Sequence[str] = ("fp32",),
    force: bool = False,
    stream_modes: Sequence[str] = ("window",),
    transformers_js: bool = True,
    check: bool = True,
    revision: str | None = None,
) -> ExportResult:
    """Export every graph of the module docstring into `out_dir` (created; an existing non-empty folder only with
    `force`, and only if it is an earlier export).

    `variants`: "fp32" always, plus "fp16" and/or "int8" copies of the encoder/decoder graphs, each with its
    measured error against fp32 in the manifest. `stream_modes`: "window" (batch-exact; always) and optionally
    "moshi" (`encoder_stream_moshi.onnx`/`decoder_stream_moshi.onnx`: Kyutai's ring-cache arithmetic, for
    `mode="moshi"` streams). `check`: run each graph against the torch model at several frame counts and refuse
    an export that does not match.
    """
    torch, onnx = require_export_dependencies()
    wanted = list(dict.fromkeys(["fp32", *variants]))
    unknown = [v for v in wanted if v not in VARIANTS]
    if unknown:
        raise ExportError(f"unknown variant(s) {unknown}; expected some of {', '.join(VARIANTS)}")
    modes = list(dict.fromkeys(["window", *stream_modes]))
    if any(m not in STREAM_MODES for m in modes):
        raise ExportError(f"unknown stream mode(s) in {list(stream_modes)}; expected 'window' and/or 'moshi'")
    if opset < 18:
        raise ExportError(
            f"opset {opset} is too old: the graphs use opset-18 operators (Split with sizes, "
            "ReduceSum with axes as input); use 18 or newer"
        )
    target = Path(out_dir)
    _check_target(target, force)
    if not target.parent.exists():
        raise FileNotFoundError(f"the parent folder of {target} does not exist")
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    loaded = weights if isinstance(weights, LoadedWeights) else load_weights(weights, revision=revision)
    model = _build_model(loaded)
    config = loaded.config
    tables = codebook_tables(loaded.tensors, config)
    seconds["load_weights"] = time.perf_counter() - started
    metadata = {
        "mimistack_config": config.to_json(),
        "weights_sha256": loaded.sha256,
        "opset": str(opset),
        "mimistack_version": __version__,
    }
    with staging_dir(target) as staging:
        traced: dict[str, Any] = {}  # name -> graph as traced (encoders end at the latent)
        streams: dict[str, dict[str, Any]] = {}
        state_specs: dict[str, list[StateSpec]] = {}
        for mode in modes:
            for direction in ("encoder", "decoder"):
                name = STREAM_GRAPHS[direction, mode]  # type: ignore[index]
                step_started = time.perf_counter()
                logger.info("tracing %s", name)
                traced[name], state_specs[name] = _export_stream(model, direction, mode, opset)
                seconds[f"trace_{name}"] = time.perf_counter() - step_started
                main, output = ("pcm", "codes") if direction == "encoder" else ("latent", "pcm")
                streams[name] = {
                    "direction": direction,
                    "mode": mode,
                    "input": main,
                    "output": output,
                    "states": [s.to_dict() for s in state_specs[name]],
                }
                if any(spec.ringed for spec in state_specs[name]):
                    streams[name]["ring"] = {"context": config.context, "steps_per_frame": config.downsample_stride}
        step_started = time.perf_counter()
        # The batch graphs: one call takes the whole input, so the ring holds every step (and the context before).
        traced["encoder"] = _bind_initial_state(
            onnx,
            traced["encoder_stream"],
            "pcm",
            state_specs["encoder_stream"],
            streams["encoder_stream"].get("ring"),
            config.frame_size,
        )
        traced["decoder"] = _bind_initial_state(
            onnx,
            traced["decoder_stream"],
            "latent",
            state_specs["decoder_stream"],
            streams["decoder_stream"].get("ring"),
        )
        in_place: dict[str, dict[str, list[str]]] = {}

        def write_variant(variant: str) -> list[str]:
            """Convert the traced graphs (fp16/int8), add the hand-written fp32 parts, save; returns the names."""
            names = ["encoder", "decoder", *streams]
            suffix = {"fp32": "", "fp16": "_fp16", "int8": "_int8"}[variant]
            graphs = {}
            for name in names:
                graph = traced[name]
                if variant == "fp16":
                    graph = _fp16(onnx, graph)
                elif variant == "int8":
                    graph = _int8(onnx, graph, staging)
                graphs[name] = _with_quantizer(onnx, graph, model) if name.startswith("encoder") else graph
                if name in streams:
                    in_place.setdefault(variant, {})[name] = _in_place_states(graphs[name], state_specs[name])
            files = {graph_file(name, variant): (graphs[name], name) for name in names}
            if variant == "fp32":
                files["embed.onnx"] = (_embed_model(onnx, tables, opset, traced["encoder"].ir_version), "embed")
            if transformers_js:
                tjs = f"{TRANSFORMERS_JS_DIR}/onnx"
                files[f"{tjs}/encoder_model{suffix}.onnx"] = (
                    _transformers_js_encoder(onnx, graphs["encoder"], config.frame_size),
                    "transformers_js/encoder_model",
                )
                files[f"{tjs}/decoder_model{suffix}.onnx"] = (
                    _transformers_js_decoder(onnx, graphs["decoder"], tables),
                    "transformers_js/decoder_model",
                )
            extra = {} if variant == "fp32" else {"variant": variant}
            for relative, (graph, role) in files.items():
                _save(onnx, graph, staging / relative, {**metadata, **extra}, role)
            return [graph_file(name, variant) for name in names]

        fp32_graphs = write_variant("fp32")
        from safetensors.numpy import save_file

        save_file(
            {name: np.ascontiguousarray(getattr(tables, name)) for name in CODEBOOK_FIELDS},
            str(staging / CODEBOOKS_NAME),
            metadata={"weights_sha256": loaded.sha256},
        )
        if transformers_js:
            (staging / TRANSFORMERS_JS_DIR / "config.json").write_text(
                json.dumps(transformers_config(config, loaded.sha256), indent=2) + "\n"
            )
            (staging / TRANSFORMERS_JS_DIR / "preprocessor_config.json").write_text(
                json.dumps({**PREPROCESSOR_CONFIG, "sampling_rate": config.sample_rate}, indent=2) + "\n"
            )
        seconds["write_graphs"] = time.perf_counter() - step_started

        checks: dict[str, Any] = {}
        if check:
            step_started = time.perf_counter()
            checks = _check_graphs(model, staging, streams, tables, transformers_js)
            seconds["check"] = time.perf_counter() - step_started

        variant_report: dict[str, Any] = {"fp32": {"graphs": fp32_graphs, "in_place": in_place["fp32"]}}
        for variant in wanted[1:]:
            step_started = time.perf_counter()
            variant_report[variant] = {
                "graphs": write_variant(variant),
                "in_place": in_place[variant],
                "errors_vs_fp32": _variant_errors(staging, variant, config, tables),
            }
            seconds[f"variant_{variant}"] = time.perf_counter() - step_started
            logger.info("variant %s: %s", variant, variant_report[variant]["errors_vs_fp32"])

        listed = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "mimistack_version": __version__,
            "torch_version": torch.__version__,
            "onnx_version": onnx.__version__,
            "opset": opset,
            "weights_sha256": loaded.sha256,
            "weights_source": loaded.source,
            "config": config.to_dict(),
            "frame_size": config.frame_size,
            "sample_rate": config.sample_rate,
            "num_levels": config.num_levels,
            "codebook_size": config.codebook_size,
            "dimension": config.dimension,
            "graphs": {
                "encoder": {
                    "file": "encoder.onnx",
                    "inputs": {"pcm": ["batch", 1, f"{config.frame_size}*frames"]},
                    "outputs": {"codes": ["batch", config.num_levels, "frames"]},
                },
                "decoder": {
                    "file": "decoder.onnx",
                    "inputs": {"latent": ["batch", config.dimension, "frames"]},
                    "outputs": {"pcm": ["batch", 1, f"{config.frame_size}*frames"]},
                },
                "embed": {
                    "file": "embed.onnx",
                    "inputs": {"codes": ["batch", config.num_levels, "frames"], "level_mask": [config.num_levels]},
                    "outputs": {"latent": ["batch", config.dimension, "frames"]},
                },
            },
            "streams": streams,
            "variants": variant_report,
            "checks": checks,
            "export_seconds": {k: round(v, 3) for k, v in seconds.items()},
            "files": {name: _file_entry(staging / name) for name in listed},
        }
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
        _publish(staging, target, force)
    seconds["total"] = time.perf_counter() - started
    logger.info("exported %s in %.1f s", target, seconds["total"])
    return ExportResult(
        out_dir=target,
        manifest=manifest,
        files=tuple([*listed, MANIFEST_NAME]),
        seconds={k: v for k, v in seconds.items() if k != "total"},
    )
