"""The precision report: may I tokenize my corpus in reduced precision? For the user's weights and audio:

- the distribution, per level, of the nearest-centroid margin (`(d2 - d1) / d1`, see `agreement`) on the exact
  fp32 latent: how many near-ties there are for any rounding change to flip;
- for each reduced-precision path this machine has, against exact fp32 on the CPU (mimistack torch): token
  agreement per level, where disagreements start and their margins, and the SNR of its decoding of the exact
  codes against the exact decoding (at 8 and 32 levels);
- one plain verdict line per path.

Paths (`PRECISION_PATHS`): the fp16-stored and dynamic-int8 ONNX variants on the CPU; on CUDA, fp32 (another
device), TF32 (fp32 with TF32 matmuls and convolutions allowed) and bf16 / fp16 autocast. A path that cannot run
here is listed as skipped, with the reason. Writes `precision.md`, `precision.json` and `precision_margins.png`.

Sits on `agreement`, `plots`, `render`, `scoring`, `codec` and `weights`; used by `cli.evaluate`
(`mimistack precision`).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .._version import __version__
from ..codec import Codec
from ..engine.options import OnnxOptions, TorchOptions
from ..weights import WeightsRef, codebook_tables, load_weights
from . import plots as figures
from .agreement import (
    ReferenceEncoder,
    add_audio_error,
    first_difference_margins,
    nearest_margins,
    quantizer_distances,
    summarize_margins,
    weights_line,
)
from .render import RANDOM_BANNER, markdown_table, prepare_dir, write_report_text
from .scoring import AnalysisError, Progress
from .variants import onnx_variant_dir

logger = logging.getLogger(__name__)

DECODE_LEVELS = (8, 32)
MARGIN_QUANTILES = (0.01, 0.1, 0.5, 0.9)


class PathUnavailable(Exception):
    """A precision path this machine cannot run; the message says why."""


@dataclasses.dataclass(frozen=True)
class PrecisionPath:
    """A reduced-precision way to run the codec: a name, what it is, and how to load it."""

    name: str
    description: str
    load: Callable[[WeightsRef, Path | None], Codec]
    context: Callable[[], Any] | None = None  # entered around every call (TF32 switches)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _torch_path(device: str, dtype: str, tf32: bool = False) -> Callable[[WeightsRef, Path | None], Codec]:
    def load(weights: WeightsRef, onnx_dir: Path | None) -> Codec:
        if device == "cuda" and not _cuda_available():
            raise PathUnavailable("no CUDA device")
        options = TorchOptions(device=device, dtype=dtype, allow_tf32=tf32)  # type: ignore[arg-type]
        return Codec.load(weights, engine=options, chunk_frames=1 << 20)

    return load


def _onnx_path(variant: str) -> Callable[[WeightsRef, Path | None], Codec]:
    def load(weights: WeightsRef, onnx_dir: Path | None) -> Codec:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as error:
            raise PathUnavailable("onnxruntime is not installed: pip install onnxruntime") from error
        folder = onnx_dir if onnx_dir is not None else onnx_variant_dir(weights)
        options = OnnxOptions(onnx_dir=folder, variant=variant)  # type: ignore[arg-type]
        return Codec.load(weights, engine=options, chunk_frames=1 << 20)

    return load


PRECISION_PATHS: tuple[PrecisionPath, ...] = (
    PrecisionPath("onnx-fp16", "ONNX Runtime, fp16-stored weights, CPU", _onnx_path("fp16")),
    PrecisionPath("onnx-int8", "ONNX Runtime, dynamic int8, CPU", _onnx_path("int8")),
    PrecisionPath("cuda-fp32", "mimistack torch, strict fp32 on CUDA (another device)", _torch_path("cuda", "float32")),
    PrecisionPath("cuda-tf32", "mimistack torch, fp32 with TF32 allowed, CUDA", _torch_path("cuda", "float32", True)),
    PrecisionPath("cuda-bf16", "mimistack torch, bfloat16 autocast, CUDA", _torch_path("cuda", "bfloat16")),
    PrecisionPath("cuda-fp16", "mimistack torch, float16 autocast, CUDA", _torch_path("cuda", "float16")),
)
"""Every reduced-precision path `precision` knows, in report order."""


@dataclasses.dataclass
class PathResult:
    """One path against exact fp32: `status` "ran", "skipped" or "failed" (with `reason`)."""

    name: str
    description: str
    status: str = "skipped"
    reason: str = ""
    equal: NDArray[np.int64] | None = None
    frames: int = 0
    differing_levels: list[int] = dataclasses.field(default_factory=list)  # the level of every differing token
    margins: list[float] = dataclasses.field(default_factory=list)  # margins of first differences
    audio_error: dict[int, float] = dataclasses.field(default_factory=dict)
    audio_energy: dict[int, float] = dataclasses.field(default_factory=dict)

    @property
    def agreement(self) -> list[float] | None:
        if self.equal is None or self.frames == 0:
            return None
        return [float(v) / self.frames for v in self.equal]

    def snr_db(self, count: int) -> float | None:
        if count not in self.audio_error:
            return None
        energy, error = self.audio_energy[count], self.audio_error[count]
        if error == 0.0 or energy == 0.0:
            return 200.0
        return min(200.0, 10.0 * float(np.log10(energy / error)))

    def verdict(self) -> str:
        """One plain line: tokens equal overall and at level 0, where flips concentrate, decode SNR."""
        agreement = self.agreement
        if self.status != "ran" or agreement is None:
            return f"{self.name}: not run ({self.reason})"
        text = (
            f"{self.name}: {100 * float(np.mean(agreement)):.1f} % of tokens equal, level 0 {100 * agreement[0]:.1f} %"
        )
        if self.differing_levels:
            low = int(np.percentile(self.differing_levels, 10))
            text += f"; 90 % of the differing tokens are at levels ≥ {low}"
        else:
            text += "; no token differs"
        snr = self.snr_db(max(self.audio_error)) if self.audio_error else None
        if snr is not None:
            text += f"; decoding the same codes: {snr:.1f} dB SNR at {max(self.audio_error)} levels"
        return text + "."


@dataclasses.dataclass(frozen=True)
class PrecisionResult:
    paths: list[PathResult]
    margins: NDArray[np.float64]  # [K, total frames]: nearest-centroid margins on the exact fp32 latent
    weights: WeightsRef
    clips: list[tuple[str, float, int]]
    levels_decoded: tuple[int, ...]
    out_dir: Path
    files: dict[str, Path]

    def get(self, name: str) -> PathResult:
        for item in self.paths:
            if item.name == name:
                return item
        raise KeyError(f"no path named {name!r}")


@contextmanager
def _entered(path: PrecisionPath) -> Iterator[None]:
    if path.context is None:
        yield
        return
    with path.context():
        yield


def run_precision(
    weights: str | os.PathLike[str] | WeightsRef,
    clips: Sequence[tuple[str, NDArray[np.float32]]],
    *,
    out_dir: str | os.PathLike[str],
    paths: Sequence[PrecisionPath] = PRECISION_PATHS,
    skip: Sequence[str] = (),
    onnx_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    plots: bool = True,
    progress: Progress | None = None,
) -> PrecisionResult:
    """Margins on the exact fp32 latent, and every available path of `paths` against exact fp32 on the CPU."""
    if not clips:
        raise AnalysisError("no clips given")
    for name, pcm in clips:
        if pcm.ndim != 1 or pcm.size == 0:
            raise AnalysisError(f"clip {name} must be non-empty mono pcm [N], got shape {pcm.shape}")
    names = [path.name for path in paths]
    unknown = [name for name in skip if name not in names]
    if unknown:
        raise AnalysisError(f"unknown precision path(s) {unknown}; known: {', '.join(names)}")
    folder = prepare_dir(out_dir, force)
    ref = weights if isinstance(weights, WeightsRef) else WeightsRef.resolve(weights)
    loaded = load_weights(ref)
    exact = Codec.load(ref, engine=TorchOptions(device="cpu"), chunk_frames=1 << 20)
    encoder = ReferenceEncoder(loaded.tensors, ref.config)
    tables = codebook_tables(loaded.tensors, ref.config)
    folder_onnx = Path(onnx_dir) if onnx_dir is not None else None
    counts = tuple(sorted({min(count, ref.config.num_levels) for count in DECODE_LEVELS}))
    results = [PathResult(path.name, path.description) for path in paths]
    codecs: dict[str, Codec] = {}
    total = len(paths) + len(clips)
    for done, (path, result) in enumerate(zip(paths, results)):
        if progress is not None:
            progress(done, total, f"loading {path.name}")
        if path.name in skip:
            result.reason = "skipped on request (--skip)"
            continue
        try:
            codecs[path.name] = path.load(ref, folder_onnx)
            result.status = "ran"
        except PathUnavailable as error:
            result.reason = str(error)
        except Exception as error:
            logger.warning("%s could not be loaded: %s", path.name, error)
            result.status, result.reason = "failed", f"{type(error).__name__}: {error}"

    frame_size = ref.config.frame_size
    margin_parts = []
    clip_rows = []
    for index, (name, pcm) in enumerate(clips):
        if progress is not None:
            progress(len(paths) + index, total, name)
        whole = np.zeros(-(-len(pcm) // frame_size) * frame_size, dtype=np.float32)
        whole[: len(pcm)] = pcm
        codes = np.asarray(exact.encode(whole).codes, dtype=np.int64)
        clip_rows.append((name, len(whole) / ref.config.sample_rate, int(codes.shape[1])))
        distances = quantizer_distances(tables, encoder.latent(whole), codes)
        margin_parts.append(nearest_margins(distances))
        exact_pcm = {count: exact.decode_codes(codes, f"0-{count - 1}") for count in counts}
        for path, result in zip(paths, results):
            if result.status != "ran":
                continue
            try:
                with _entered(path):
                    _measure(result, codecs[path.name], whole, codes, exact_pcm, distances)
            except Exception as error:
                logger.warning("%s failed on %s: %s", path.name, name, error)
                result.status, result.reason = "failed", f"on {name}: {type(error).__name__}: {error}"
    if progress is not None:
        progress(total, total, "done")

    report = PrecisionResult(
        paths=results,
        margins=np.concatenate(margin_parts, axis=1),
        weights=ref,
        clips=clip_rows,
        levels_decoded=counts,
        out_dir=folder,
        files={},
    )
    report.files["json"] = write_report_text(
        folder / "precision.json", json.dumps(precision_json(report), indent=2) + "\n"
    )
    report.files["markdown"] = write_report_text(folder / "precision.md", precision_markdown(report))
    if plots:
        title = "Nearest-centroid margin per level" + (" — RANDOM WEIGHTS" if ref.is_random else "")
        figure = figures.margin_distribution(report.margins, title)
        report.files["margins"] = figures.save_png(figure, folder / "precision_margins.png")
    return report


def _measure(
    result: PathResult,
    codec: Codec,
    pcm: NDArray[np.float32],
    codes: NDArray[np.int64],
    exact_pcm: dict[int, NDArray[np.float32]],
    distances: NDArray[np.float32],
) -> None:
    other = np.asarray(codec.encode(pcm).codes, dtype=np.int64)
    if other.shape != codes.shape:
        raise AnalysisError(f"codes of shape {other.shape}, exact fp32 gives {codes.shape}")
    if result.equal is None:
        result.equal = np.zeros(codes.shape[0], dtype=np.int64)
    result.equal += (other == codes).sum(axis=1)
    result.frames += codes.shape[1]
    result.differing_levels += [int(level) for level in np.nonzero(other != codes)[0]]
    result.margins += [item.margin for item in first_difference_margins(distances, codes, other)]
    for count, reference in exact_pcm.items():
        decoded = codec.decode_codes(codes, f"0-{count - 1}")
        add_audio_error(result.audio_error, result.audio_energy, count, reference, decoded)


def _first_line(result: PrecisionResult) -> str:
    return weights_line(result.weights.sha256, result.weights.is_random, str(result.weights.source))


def _margin_rows(margins: NDArray[np.float64]) -> list[dict[str, float]]:
    rows = []
    for level in margins:
        row = {f"p{round(100 * q)}": float(np.quantile(level, q)) for q in MARGIN_QUANTILES}
        row["below_1e-3"] = float((level < 1e-3).mean())
        row["below_1e-2"] = float((level < 1e-2).mean())
        rows.append(row)
    return rows


def precision_json(result: PrecisionResult) -> dict[str, Any]:
    items = []
    for path in result.paths:
        status: dict[str, Any] = {"state": path.status}
        if path.reason:
            status["reason"] = path.reason
        agreement = path.agreement
        items.append(
            {
                "name": path.name,
                "description": path.description,
                "status": status,
                "agreement": agreement,
                "tokens_equal": None if agreement is None else float(np.mean(agreement)),
                "first_difference_margins": summarize_margins(path.margins) if path.status == "ran" else None,
                "decode_snr_db": {str(c): path.snr_db(c) for c in result.levels_decoded} if agreement else None,
                "verdict": path.verdict(),
            }
        )
    return {
        "note": _first_line(result),
        "tool": "mimistack precision",
        "mimistack_version": __version__,
        "date": datetime.date.today().isoformat(),
        "weights": {
            "source": result.weights.source,
            "sha256": result.weights.sha256,
            "random": result.weights.is_random,
        },
        "reference": "mimistack torch, exact fp32, CPU",
        "clips": [{"name": n, "seconds": round(s, 3), "frames": f} for n, s, f in result.clips],
        "margins_per_level": _margin_rows(result.margins),
        "paths": items,
    }


def precision_markdown(result: PrecisionResult) -> str:
    frames = sum(f for _, _, f in result.clips)
    lines = [_first_line(result), "", "# Precision report", ""]
    if result.weights.is_random:
        lines += [
            f"> **{RANDOM_BANNER}**",
            "",
            "Random codebooks are dense in near-ties, so reduced precision flips far more tokens here than it would "
            "with trained weights: run this on your own weights before you trust either.",
            "",
        ]
    lines += [
        f"Reference: mimistack torch, exact fp32 on the CPU. {len(result.clips)} clip(s), {frames} frames. "
        f"mimistack {__version__}, {datetime.date.today().isoformat()}.",
        "",
        "## Verdicts",
        "",
        *[f"- {path.verdict()}" for path in result.paths],
        "",
    ]
    header = ["path", "status", "tokens equal", "level 0", "margin of first differences (median)"]
    header += [f"decode SNR dB @{c}" for c in result.levels_decoded]
    rows = []
    for path in result.paths:
        agreement = path.agreement
        if agreement is None:
            rows.append([path.name, f"{path.status}: {path.reason}", *["–"] * (len(header) - 2)])
            continue
        median = summarize_margins(path.margins)["median"]
        rows.append(
            [
                path.name,
                path.status,
                f"{100 * float(np.mean(agreement)):.2f} %",
                f"{100 * agreement[0]:.2f} %",
                "–" if median is None else f"{median:.2e}",
                *[("–" if (v := path.snr_db(c)) is None else f"{v:.1f}") for c in result.levels_decoded],
            ]
        )
    lines += ["## Paths against exact fp32", "", *markdown_table(header, rows), ""]
    ran = [path for path in result.paths if path.agreement is not None]
    if ran:
        levels = len(ran[0].agreement or [])
        lines += ["## Agreement per level (%)", ""]
        lines += markdown_table(
            ["path", *[str(level) for level in range(levels)]],
            [[path.name, *[f"{100 * v:.1f}" for v in path.agreement or []]] for path in ran],
        )
        lines.append("")
    lines += [
        "## Nearest-centroid margin per level (exact fp32 latent)",
        "",
        "`(d2 - d1) / d1`: the distance to the second-nearest centroid over the nearest's, minus one. A token whose "
        "margin is below the rounding error of a path can flip on that path.",
        "",
    ]
    margin_rows = _margin_rows(result.margins)
    keys = list(margin_rows[0]) if margin_rows else []
    lines += markdown_table(
        ["level", *keys],
        [[str(level), *[f"{row[key]:.2e}" for key in keys]] for level, row in enumerate(margin_rows)],
    )
    lines.append("")
    return "\n".join(lines)
