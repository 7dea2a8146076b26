"""After export: run every graph against the torch model and measure what each variant changes.

Part of `engine.export` (see its package docstring for the folder it writes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...config import MimiConfig
from ...levels import CodebookTables, Levels, latent_from_codes
from ..onnx_format import (
    TRANSFORMERS_JS_DIR,
    StateSpec,
    graph_file,
    ring_slots,
)
from .common import CHECK_FRAMES, VARIANT_SIGNAL_SECONDS, ExportError


def _session(path: Path) -> Any:
    import onnxruntime as ort

    from ..ort_session import session_options, shared_pool_threads

    threads = shared_pool_threads()
    options = session_options(threads or 2, shared_pool=threads is not None)  # ORT refuses a private pool then
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _relative_l2(estimate: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(estimate - reference) / max(float(np.linalg.norm(reference)), 1e-12))


def _check_signal(config: MimiConfig, frames: int, batch: int = 1, seed: int = 0) -> np.ndarray:
    from ...testing import synthetic_signal

    length = frames * config.frame_size
    rows = [
        synthetic_signal(length / config.sample_rate + 0.1, config.sample_rate, seed + row)[:length]
        for row in range(batch)
    ]
    return np.stack(rows)[:, None, :].astype(np.float32)


def _run_stream(
    session: Any,
    main: str,
    output: str,
    value: np.ndarray,
    specs: Sequence[StateSpec],
    chunks: Sequence[int],
    frame_size: int,
    ring: dict[str, int] | None = None,
) -> np.ndarray:
    """Stream `value` through a graph from zero state in `chunks` frames a call (`ring`: the graph's ring entry,
    for states with a "ring" dim, sized for the largest chunk)."""
    slots = ring_slots(ring, max(chunks)) if ring is not None else None
    state = [spec.zeros(value.shape[0], slots) for spec in specs]
    scale = frame_size if main == "pcm" else 1
    parts, start = [], 0
    for count in chunks:
        piece = value[..., start * scale : (start + count) * scale]
        outputs = session.run(
            [output, *(s.output for s in specs)], {main: piece, **{s.input: a for s, a in zip(specs, state)}}
        )
        parts.append(outputs[0])
        state = outputs[1:]
        start += count
    return np.concatenate(parts, axis=-1)


def _check_graphs(
    model: Any, folder: Path, streams: dict[str, dict[str, Any]], tables: CodebookTables, transformers_js: bool
) -> dict[str, Any]:
    """Run every fp32 graph at several frame counts against the torch model; raise ExportError on a mismatch."""
    import torch

    config: MimiConfig = model.config
    results: dict[str, Any] = {}
    worst_agreement, worst_audio = 1.0, 0.0
    for frames in CHECK_FRAMES:
        pcm = _check_signal(config, frames, batch=2, seed=frames)
        with torch.no_grad():
            latent_ref, _ = model.encode_latent(torch.from_numpy(pcm))
            codes_ref = model.quantizer.encode(latent_ref).numpy()
            latent = torch.from_numpy(latent_from_codes(tables, codes_ref))
            audio_ref = model.decode_latent(latent)[0].numpy()
        codes = _session(folder / "encoder.onnx").run(["codes"], {"pcm": pcm})[0]
        audio = _session(folder / "decoder.onnx").run(["pcm"], {"latent": latent.numpy()})[0]
        agreement = float((codes == codes_ref).mean())
        audio_error = _relative_l2(audio, audio_ref)
        results[f"batch_{frames}_frames"] = {"codes_agreement": agreement, "audio_relative_l2": audio_error}
        worst_agreement, worst_audio = min(worst_agreement, agreement), max(worst_audio, audio_error)
        if frames > 1:
            chunks = [1, frames - 1]
            for graph, spec in streams.items():
                if spec["mode"] != "window":
                    continue
                specs = [StateSpec.from_dict(s) for s in spec["states"]]
                session = _session(folder / f"{graph}.onnx")
                if spec["direction"] == "encoder":
                    out = _run_stream(session, "pcm", "codes", pcm, specs, chunks, config.frame_size, spec.get("ring"))
                    agreement = float((out == codes_ref).mean())
                    worst_agreement = min(worst_agreement, agreement)
                    results[f"{graph}_{chunks}"] = {"codes_agreement": agreement}
                else:
                    out = _run_stream(
                        session, "latent", "pcm", latent.numpy(), specs, chunks, config.frame_size, spec.get("ring")
                    )
                    error = _relative_l2(out, audio_ref)
                    worst_audio = max(worst_audio, error)
                    results[f"{graph}_{chunks}"] = {"audio_relative_l2": error}
        codes_all = np.asarray(codes_ref)
        mask = (np.arange(config.num_levels) % 3 != 1).astype(np.float32)
        embedded = _session(folder / "embed.onnx").run(["latent"], {"codes": codes_all, "level_mask": mask})[0]
        embed_error = _relative_l2(
            embedded, latent_from_codes(tables, codes_all, Levels.parse(np.flatnonzero(mask), config.num_levels))
        )
        results[f"embed_{frames}_frames"] = {"latent_relative_l2": embed_error}
        if embed_error > 1e-5:
            raise ExportError(f"embed.onnx differs from latent_from_codes (relative L2 {embed_error:.2e})")
        if transformers_js:
            tjs = folder / TRANSFORMERS_JS_DIR / "onnx"
            tjs_codes = _session(tjs / "encoder_model.onnx").run(["audio_codes"], {"input_values": pcm})[0]
            prefix = max(1, config.num_levels // 4)
            tjs_audio = _session(tjs / "decoder_model.onnx").run(
                ["audio_values"], {"audio_codes": codes_ref[:, :prefix]}
            )[0]
            with torch.no_grad():
                prefix_ref = model.decode_latent(
                    torch.from_numpy(latent_from_codes(tables, codes_ref, Levels.prefix(prefix, config.num_levels)))
                )[0].numpy()
            results[f"transformers_js_{frames}_frames"] = {
                "codes_agreement": float((tjs_codes == codes_ref).mean()),
                "audio_relative_l2": _relative_l2(tjs_audio, prefix_ref),
            }
            worst_agreement = min(worst_agreement, results[f"transformers_js_{frames}_frames"]["codes_agreement"])
            worst_audio = max(worst_audio, results[f"transformers_js_{frames}_frames"]["audio_relative_l2"])
    results["worst_codes_agreement"] = worst_agreement
    results["worst_audio_relative_l2"] = worst_audio
    if worst_agreement < 0.99 or worst_audio > 1e-4:
        raise ExportError(
            f"the exported graphs do not reproduce the torch model (codes agreement "
            f"{worst_agreement:.4f}, audio relative L2 {worst_audio:.2e})"
        )
    return results


def _variant_errors(folder: Path, variant: str, config: MimiConfig, tables: CodebookTables) -> dict[str, float]:
    """Error of a variant's batch graphs against fp32 on a 4 s synthetic signal."""
    frames = int(VARIANT_SIGNAL_SECONDS * config.frame_rate)
    pcm = _check_signal(config, frames, seed=11)
    codes32 = _session(folder / "encoder.onnx").run(["codes"], {"pcm": pcm})[0]
    codes = _session(folder / graph_file("encoder", variant)).run(["codes"], {"pcm": pcm})[0]
    latent = latent_from_codes(tables, codes32)
    audio32 = _session(folder / "decoder.onnx").run(["pcm"], {"latent": latent})[0]
    audio = _session(folder / graph_file("decoder", variant)).run(["pcm"], {"latent": latent})[0]
    end_to_end = _session(folder / graph_file("decoder", variant)).run(
        ["pcm"], {"latent": latent_from_codes(tables, codes)}
    )[0]
    return {
        "codes_agreement": float((codes == codes32).mean()),
        "level0_agreement": float((codes[:, 0] == codes32[:, 0]).mean()),
        "decoder_audio_relative_l2": _relative_l2(audio, audio32),
        "end_to_end_audio_relative_l2": _relative_l2(end_to_end, audio32),
        "signal_seconds": VARIANT_SIGNAL_SECONDS,
    }
