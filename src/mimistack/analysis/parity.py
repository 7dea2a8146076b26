"""The parity matrix: every Mimi implementation installed, on the same weights and clips, against one reference.

For each implementation and level: the token agreement with the reference, where disagreements start (the first
differing level of each frame) and how near a tie each first difference was (`agreement` module), and the
relative L2 / SNR of its decoding of the *reference's* codes against the reference's decoding, at 8 and 32
levels (so the decoder is compared on equal input). Writes `parity.md`, `parity.json` and `parity_heatmap.png`.

Implementations (`IMPLEMENTATIONS`): moshi batch (the default reference) and streaming, transformers' `MimiModel`
(loaded from the same tensors under its own key names, q/k rows permuted for rotate-half RoPE), rustymimi,
mimistack torch exact / fast / moshi-mode streaming on the CPU and exact / fast on CUDA, the ONNX variants (fp32,
fp16, int8) and the browser engine. One that is not installed, cannot run these weights or has no device is
listed as skipped, with the reason and the install command.

Sits on `agreement` (the comparisons), `plots` (the heatmap), `render` (tables, banner, files), `codec`,
`weights` and `audio`; used by `cli.evaluate` (`mimistack parity`). Third-party packages are imported when their
implementation is loaded.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from .._files import atomic_path
from .._version import __version__
from ..config import MimiConfig
from ..weights import LoadedWeights, WeightsRef, codebook_tables, load_weights, to_transformers_layout
from . import plots as figures
from .agreement import (
    ReferenceEncoder,
    add_audio_error,
    first_difference_margins,
    first_differences,
    quantizer_distances,
    summarize_margins,
    weights_line,
)
from .render import RANDOM_BANNER, markdown_table, prepare_dir, write_report_text
from .scoring import AnalysisError, Progress
from .variants import onnx_variant_dir

logger = logging.getLogger(__name__)

DECODE_LEVELS = (8, 32)
DEFAULT_REFERENCE = "moshi-batch"
FALLBACK_REFERENCE = "mimistack-torch"


class Runner(Protocol):
    """One loaded implementation: whole-frame pcm `[N * 1920]` -> codes int64 `[K, N]`; codes of the first `k`
    levels `[k, N]` -> pcm `[N * 1920]`."""

    def encode(self, pcm: NDArray[np.float32]) -> NDArray[np.int64]: ...

    def decode(self, codes: NDArray[np.int64]) -> NDArray[np.float32]: ...


class SkipImplementation(Exception):
    """An implementation that cannot run here; the message says why."""


@dataclasses.dataclass
class ParitySetup:
    """What every implementation loads from: the weights (resolved once), their tensors, devices, ONNX folder."""

    weights: WeightsRef
    loaded: LoadedWeights
    onnx_dir: Path | None
    scratch: Path
    stack: ExitStack | None = None
    """Where an implementation registers what must be closed after the run (a browser, a server)."""
    _kyutai_file: Path | None = None

    @property
    def config(self) -> MimiConfig:
        return self.weights.config

    def onnx_folder(self) -> Path:
        """The exported graphs with every variant: `onnx_dir` when given, else `variants.onnx_variant_dir`."""
        if self.onnx_dir is None:
            self.onnx_dir = onnx_variant_dir(self.weights)
        return self.onnx_dir

    def require_official(self, what: str) -> None:
        if self.config != MimiConfig.official():
            raise SkipImplementation(f"{what} only builds the official kyutai/mimi architecture; these weights differ")

    def kyutai_file(self) -> Path:
        """The weights as a file in Kyutai's key layout (moshi and rustymimi read only that): the file itself, or a
        converted copy in the scratch folder."""
        if self.loaded.layout == "kyutai":
            return self.weights.path
        if self._kyutai_file is None:
            from safetensors.numpy import save_file

            target = self.scratch / "kyutai-layout.safetensors"
            with atomic_path(target, force=True) as tmp:
                save_file(self.loaded.tensors, str(tmp))
            self._kyutai_file = target
        return self._kyutai_file


@dataclasses.dataclass(frozen=True)
class Implementation:
    """A named implementation: how to load it, and the command that installs it when it is missing."""

    name: str
    description: str
    install: str
    load: Callable[[ParitySetup], Runner]


def _import(module: str, install: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise SkipImplementation(f"{module.split('.')[0]} is not installed ({error}); install: {install}") from error


def _torch() -> Any:
    return _import("torch", "pip install 'mimistack[torch]'")


# -- third-party implementations ----------------------------------------------------------------------------------
_MOSHI_INSTALL = "pip install --no-deps moshi==0.2.13 && pip install sphn einops sentencepiece"
_TRANSFORMERS_INSTALL = "pip install --no-deps transformers && pip install regex"
_RUSTYMIMI_INSTALL = "pip install rustymimi"


class _MoshiRunner:
    def __init__(self, model: Any, torch: Any, streaming: bool, frame_size: int) -> None:
        self.model, self.torch, self.streaming, self.frame_size = model, torch, streaming, frame_size

    def encode(self, pcm: NDArray[np.float32]) -> NDArray[np.int64]:
        torch, x = self.torch, self.torch.from_numpy(np.ascontiguousarray(pcm))[None, None]
        with torch.no_grad():
            if not self.streaming:
                return np.asarray(self.model.encode(x).numpy()[0], dtype=np.int64)
            with self.model.streaming(1):
                parts = [
                    self.model.encode(x[..., i : i + self.frame_size]) for i in range(0, x.shape[-1], self.frame_size)
                ]
        return np.asarray(torch.cat(parts, -1).numpy()[0], dtype=np.int64)

    def decode(self, codes: NDArray[np.int64]) -> NDArray[np.float32]:
        torch, c = self.torch, self.torch.from_numpy(np.ascontiguousarray(codes, dtype=np.int64))[None]
        with torch.no_grad():
            if not self.streaming:
                return np.asarray(self.model.decode(c).numpy()[0, 0], dtype=np.float32)
            with self.model.streaming(1):
                parts = [self.model.decode(c[..., i : i + 1]) for i in range(c.shape[-1])]
        return np.asarray(torch.cat(parts, -1).numpy()[0, 0], dtype=np.float32)


def _moshi_loader(streaming: bool) -> Callable[[ParitySetup], Runner]:
    def load(setup: ParitySetup) -> Runner:
        setup.require_official("moshi")
        torch = _torch()
        loaders = _import("moshi.models.loaders", _MOSHI_INSTALL)
        model = loaders.get_mimi(str(setup.kyutai_file()), device="cpu", num_codebooks=setup.config.num_levels)
        return _MoshiRunner(model.eval(), torch, streaming, setup.config.frame_size)

    return load


# transformers 5 nests the SEANet and transformer stacks of `MimiModel` one module deeper than the checkpoint
# names of `kyutai/mimi` (which transformers renames when it loads a file); a state dict for load_state_dict needs
# the module's own names.
_TRANSFORMERS_NESTING = (
    ("encoder.layers.", "encoder.encoder_seanet.layers."),
    ("encoder_transformer.", "encoder.encoder_transformer."),
    ("downsample.", "encoder.downsample."),
    ("decoder.layers.", "decoder.decoder_seanet.layers."),
    ("decoder_transformer.", "decoder.decoder_transformer."),
    ("upsample.", "decoder.upsample."),
)


def transformers_state_dict(
    tensors: dict[str, NDArray[np.float32]], config: MimiConfig, names: set[str]
) -> dict[str, Any]:
    """Our (Kyutai-layout) tensors under the key names of an installed transformers `MimiModel` whose
    `state_dict()` keys are `names`: `weights.to_transformers_layout` (q/k/v split, q and k rows permuted for
    rotate-half RoPE), then the nesting of transformers 5 where the model has it. Every key must land."""
    out = {}
    for name, value in to_transformers_layout(tensors, config).items():
        if name not in names:
            for old, new in _TRANSFORMERS_NESTING:
                if name.startswith(old) and new + name[len(old) :] in names:
                    name = new + name[len(old) :]
                    break
        out[name] = value
    missing, unexpected = sorted(names - set(out)), sorted(set(out) - names)
    if missing or unexpected:
        raise SkipImplementation(
            f"this transformers version names Mimi's tensors differently (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    return out


class _TransformersRunner:
    def __init__(self, model: Any, torch: Any) -> None:
        self.model, self.torch = model, torch

    def encode(self, pcm: NDArray[np.float32]) -> NDArray[np.int64]:
        x = self.torch.from_numpy(np.ascontiguousarray(pcm))[None, None]
        with self.torch.no_grad():
            codes = self.model.encode(x, num_quantizers=self.model.config.num_quantizers).audio_codes
        return np.asarray(codes.numpy()[0], dtype=np.int64)

    def decode(self, codes: NDArray[np.int64]) -> NDArray[np.float32]:
        c = self.torch.from_numpy(np.ascontiguousarray(codes, dtype=np.int64))[None]
        with self.torch.no_grad():
            return np.asarray(self.model.decode(c).audio_values.numpy()[0, 0], dtype=np.float32)


def _load_transformers(setup: ParitySetup) -> Runner:
    setup.require_official("transformers' MimiModel (as loaded here)")
    torch = _torch()
    module = _import("transformers", _TRANSFORMERS_INSTALL)
    model = module.MimiModel(module.MimiConfig()).eval()
    state = transformers_state_dict(setup.loaded.tensors, setup.config, set(model.state_dict()))
    model.load_state_dict({name: torch.from_numpy(value) for name, value in state.items()}, strict=True)
    return _TransformersRunner(model, torch)


class _RustyMimiRunner:
    def __init__(self, module: Any, path: Path, num_levels: int) -> None:
        self.module, self.path, self.num_levels = module, path, num_levels
        self._tokenizers: dict[int, Any] = {}

    def _tokenizer(self, count: int) -> Any:
        # rustymimi decodes exactly the number of codebooks it was made with.
        if count not in self._tokenizers:
            self._tokenizers[count] = self.module.Tokenizer(str(self.path), num_codebooks=count)
        return self._tokenizers[count]

    def encode(self, pcm: NDArray[np.float32]) -> NDArray[np.int64]:
        codes = self._tokenizer(self.num_levels).encode(np.ascontiguousarray(pcm, dtype=np.float32)[None, None])
        return np.asarray(codes[0], dtype=np.int64)

    def decode(self, codes: NDArray[np.int64]) -> NDArray[np.float32]:
        pcm = self._tokenizer(codes.shape[0]).decode(np.ascontiguousarray(codes, dtype=np.uint32)[None])
        return np.asarray(pcm[0, 0], dtype=np.float32)


def _load_rustymimi(setup: ParitySetup) -> Runner:
    setup.require_official("rustymimi")
    module = _import("rustymimi", _RUSTYMIMI_INSTALL)
    return _RustyMimiRunner(module, setup.kyutai_file(), setup.config.num_levels)


# -- mimistack ---------------------------------------------------------------------------------------------------
class CodecRunner:
    """A `Codec` (any engine) as a parity implementation; `streaming`: one frame per call in moshi cache mode."""

    def __init__(self, codec: Any, streaming: bool = False) -> None:
        self.codec, self.streaming = codec, streaming

    def encode(self, pcm: NDArray[np.float32]) -> NDArray[np.int64]:
        if not self.streaming:
            return np.asarray(self.codec.encode(pcm).codes, dtype=np.int64)
        encoder, size = self.codec.stream_encoder(mode="moshi"), self.codec.frame_size
        parts = [encoder.push(pcm[i : i + size]) for i in range(0, len(pcm), size)]
        return np.asarray(np.concatenate(parts, -1), dtype=np.int64)

    def decode(self, codes: NDArray[np.int64]) -> NDArray[np.float32]:
        count = codes.shape[0]
        full = np.zeros((self.codec.num_levels, codes.shape[1]), dtype=np.int64)
        full[:count] = codes
        levels = f"0-{count - 1}"
        if not self.streaming:
            return np.asarray(self.codec.decode_codes(full, levels), dtype=np.float32)
        decoder = self.codec.stream_decoder(levels, mode="moshi")
        return np.concatenate([decoder.push(full[:, i : i + 1]) for i in range(full.shape[1])]).astype(np.float32)


def _codec_loader(device: str, fast: bool = False, streaming: bool = False) -> Callable[[ParitySetup], Runner]:
    def load(setup: ParitySetup) -> Runner:
        torch = _torch()
        if device == "cuda" and not torch.cuda.is_available():
            raise SkipImplementation("no CUDA device in this PyTorch build or machine")
        from ..codec import Codec
        from ..engine.options import TorchOptions

        codec = Codec.load(setup.weights, engine=TorchOptions(device=device, fast=fast), chunk_frames=1 << 20)
        return CodecRunner(codec, streaming)

    return load


def _onnx_loader(variant: str) -> Callable[[ParitySetup], Runner]:
    def load(setup: ParitySetup) -> Runner:
        _import("onnxruntime", "pip install onnxruntime")
        from ..codec import Codec
        from ..engine.options import OnnxOptions

        options = OnnxOptions(onnx_dir=setup.onnx_folder(), variant=variant)  # type: ignore[arg-type]
        return CodecRunner(Codec.load(setup.weights, engine=options, chunk_frames=1 << 20))

    return load


def _browser(setup: ParitySetup) -> Runner:
    from .browser import BrowserRunner, missing_pieces

    missing = missing_pieces()
    if missing:
        raise SkipImplementation("the browser engine needs " + ", ".join(missing))
    _import("onnx", "pip install 'mimistack[export]' (to write the page's model bundle)")
    runner = BrowserRunner(setup.onnx_folder(), setup.scratch)
    if setup.stack is not None:
        setup.stack.callback(runner.close)
    return runner


_TORCH_INSTALL = "pip install 'mimistack[torch]'"
_ONNX_INSTALL = "pip install onnxruntime (the export needs 'mimistack[export]' once)"
IMPLEMENTATIONS: tuple[Implementation, ...] = (
    Implementation("moshi-batch", "Kyutai's moshi, one pass", _MOSHI_INSTALL, _moshi_loader(False)),
    Implementation("moshi-stream", "moshi, streaming one frame per call", _MOSHI_INSTALL, _moshi_loader(True)),
    Implementation("transformers", "transformers MimiModel, own key names", _TRANSFORMERS_INSTALL, _load_transformers),
    Implementation("rustymimi", "Kyutai's Rust implementation (candle)", _RUSTYMIMI_INSTALL, _load_rustymimi),
    Implementation("mimistack-torch", "mimistack torch, exact, CPU", _TORCH_INSTALL, _codec_loader("cpu")),
    Implementation(
        "mimistack-torch-fast", "mimistack torch, fast path, CPU", _TORCH_INSTALL, _codec_loader("cpu", True)
    ),
    Implementation(
        "mimistack-torch-stream",
        "mimistack torch, moshi-mode streaming",
        _TORCH_INSTALL,
        _codec_loader("cpu", False, True),
    ),
    Implementation("mimistack-torch-cuda", "mimistack torch, exact, CUDA", _TORCH_INSTALL, _codec_loader("cuda")),
    Implementation(
        "mimistack-torch-fast-cuda", "mimistack torch, fast path, CUDA", _TORCH_INSTALL, _codec_loader("cuda", True)
    ),
    Implementation("onnx-fp32", "ONNX Runtime, fp32 graphs", _ONNX_INSTALL, _onnx_loader("fp32")),
    Implementation("onnx-fp16", "ONNX Runtime, fp16-stored weights", _ONNX_INSTALL, _onnx_loader("fp16")),
    Implementation("onnx-int8", "ONNX Runtime, dynamic int8", _ONNX_INSTALL, _onnx_loader("int8")),
    Implementation(
        "browser",
        "the web page's engine: onnxruntime-web in Chromium, exact bundle",
        "apt-get install chromium; npm ci --prefix web && npm run build --prefix web (a source checkout)",
        _browser,
    ),
)
"""Every implementation `parity` knows, in report order."""


# -- the run -------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ImplementationResult:
    """What one implementation did: `status` "ran", "skipped" or "failed" (with `reason`), and its measures."""

    name: str
    description: str
    install: str
    status: str = "skipped"
    reason: str = ""
    equal: NDArray[np.int64] | None = None  # tokens equal to the reference's, per level
    frames: int = 0
    first_level: NDArray[np.int64] | None = None  # frames whose first difference is at each level
    margins: list[float] = dataclasses.field(default_factory=list)
    margin_levels: list[int] = dataclasses.field(default_factory=list)
    audio_error: dict[int, float] = dataclasses.field(default_factory=dict)  # squared error sums per level count
    audio_energy: dict[int, float] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0

    @property
    def agreement(self) -> list[float] | None:
        if self.equal is None or self.frames == 0:
            return None
        return [float(v) / self.frames for v in self.equal]

    def rel_l2(self, count: int) -> float | None:
        if count not in self.audio_error:
            return None
        energy = self.audio_energy[count]
        return float(np.sqrt(self.audio_error[count] / energy)) if energy > 0 else 0.0

    def snr_db(self, count: int) -> float | None:
        value = self.rel_l2(count)
        if value is None:
            return None
        return 200.0 if value == 0.0 else min(200.0, -20.0 * float(np.log10(value)))


@dataclasses.dataclass(frozen=True)
class ParityResult:
    """The matrix: `implementations` in report order, the `reference` they were held to, the weights, the clips."""

    implementations: list[ImplementationResult]
    reference: str
    weights: WeightsRef
    clips: list[tuple[str, float, int]]  # name, seconds, frames
    levels_decoded: tuple[int, ...]
    out_dir: Path
    files: dict[str, Path]

    def get(self, name: str) -> ImplementationResult:
        for item in self.implementations:
            if item.name == name:
                return item
        raise KeyError(f"no implementation named {name!r}")


def _whole_frames(pcm: NDArray[np.float32], frame_size: int) -> NDArray[np.float32]:
    frames = -(-len(pcm) // frame_size)
    out = np.zeros(frames * frame_size, dtype=np.float32)
    out[: len(pcm)] = pcm
    return out


def run_parity(
    weights: str | os.PathLike[str] | WeightsRef,
    clips: Sequence[tuple[str, NDArray[np.float32]]],
    *,
    out_dir: str | os.PathLike[str],
    implementations: Sequence[Implementation] = IMPLEMENTATIONS,
    extra: Sequence[Implementation] = (),
    skip: Sequence[str] = (),
    reference: str | None = None,
    onnx_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    plots: bool = True,
    progress: Progress | None = None,
) -> ParityResult:
    """Run every implementation on `clips` (name, float32 pcm at 24 kHz) with `weights`, hold each to `reference`
    (default: moshi batch, or mimistack torch when moshi cannot run these weights) and write the report.

    `extra`: more implementations (a perturbed model in the tests); `skip`: names to list as skipped."""
    if not clips:
        raise AnalysisError("no clips given")
    for name, pcm in clips:
        if pcm.ndim != 1 or pcm.size == 0:
            raise AnalysisError(f"clip {name} must be non-empty mono pcm [N], got shape {pcm.shape}")
    candidates = [*implementations, *extra]
    names = [item.name for item in candidates]
    unknown = [name for name in [*skip, *([reference] if reference else [])] if name not in names]
    if unknown:
        raise AnalysisError(f"unknown implementation(s) {unknown}; known: {', '.join(names)}")
    if reference is not None and reference in skip:
        raise AnalysisError(f"the reference {reference} cannot be skipped")
    folder = prepare_dir(out_dir, force)
    ref = weights if isinstance(weights, WeightsRef) else WeightsRef.resolve(weights)
    loaded = load_weights(ref)
    frame_size = ref.config.frame_size
    signals = [(name, _whole_frames(pcm, frame_size)) for name, pcm in clips]
    results = {item.name: ImplementationResult(item.name, item.description, item.install) for item in candidates}
    counts = tuple(sorted({min(count, ref.config.num_levels) for count in DECODE_LEVELS}))

    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mimistack-parity-")))
        setup = ParitySetup(ref, loaded, Path(onnx_dir) if onnx_dir is not None else None, scratch, stack)
        runners: dict[str, Runner] = {}
        for done, item in enumerate(candidates):
            if progress is not None:
                progress(done, len(candidates) + len(signals), f"loading {item.name}")
            result = results[item.name]
            if item.name in skip:
                result.reason = "skipped on request (--skip)"
                continue
            try:
                with _timed(result):
                    runners[item.name] = item.load(setup)
                result.status = "ran"
            except SkipImplementation as error:
                result.reason = str(error)
            except Exception as error:  # a broken third-party install must not sink the whole matrix
                logger.warning("%s could not be loaded: %s", item.name, error)
                result.status, result.reason = "failed", f"{type(error).__name__}: {error}"
        chosen = reference or (DEFAULT_REFERENCE if DEFAULT_REFERENCE in runners else FALLBACK_REFERENCE)
        if chosen not in runners:
            raise AnalysisError(f"the reference {chosen} cannot run: {results[chosen].reason}")
        encoder = ReferenceEncoder(loaded.tensors, ref.config)
        tables = codebook_tables(loaded.tensors, ref.config)
        clip_rows = []
        for index, (name, pcm) in enumerate(signals):
            if progress is not None:
                progress(len(candidates) + index, len(candidates) + len(signals), name)
            ref_codes = runners[chosen].encode(pcm)
            clip_rows.append((name, len(pcm) / ref.config.sample_rate, int(ref_codes.shape[1])))
            distances = quantizer_distances(tables, encoder.latent(pcm), ref_codes)
            ref_pcm = {count: runners[chosen].decode(ref_codes[:count]) for count in counts}
            for item_name, runner in runners.items():
                result = results[item_name]
                if result.status != "ran":
                    continue
                try:
                    with _timed(result):
                        _measure(result, runner, pcm, ref_codes, ref_pcm, distances)
                except Exception as error:
                    logger.warning("%s failed on %s: %s", item_name, name, error)
                    result.status, result.reason = "failed", f"on {name}: {type(error).__name__}: {error}"
        if progress is not None:
            progress(len(candidates) + len(signals), len(candidates) + len(signals), "done")

    report = ParityResult(
        implementations=[results[name] for name in names],
        reference=chosen,
        weights=ref,
        clips=clip_rows,
        levels_decoded=counts,
        out_dir=folder,
        files={},
    )
    report.files["json"] = write_report_text(folder / "parity.json", json.dumps(parity_json(report), indent=2) + "\n")
    report.files["markdown"] = write_report_text(folder / "parity.md", parity_markdown(report))
    if plots:
        ran = [item for item in report.implementations if item.agreement is not None]
        matrix = np.array([item.agreement for item in ran], dtype=np.float64).reshape(len(ran), -1)
        title = "Token agreement with " + chosen + (" — RANDOM WEIGHTS" if ref.is_random else "")
        figure = figures.agreement_heatmap([item.name for item in ran], matrix, title)
        report.files["heatmap"] = figures.save_png(figure, folder / "parity_heatmap.png")
    return report


@contextmanager
def _timed(result: ImplementationResult) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        result.seconds += time.perf_counter() - start


def _measure(
    result: ImplementationResult,
    runner: Runner,
    pcm: NDArray[np.float32],
    ref_codes: NDArray[np.int64],
    ref_pcm: dict[int, NDArray[np.float32]],
    distances: NDArray[np.float32],
) -> None:
    codes = runner.encode(pcm)
    if codes.shape != ref_codes.shape:
        raise AnalysisError(f"codes of shape {codes.shape}, the reference's are {ref_codes.shape}")
    levels = ref_codes.shape[0]
    if result.equal is None:
        result.equal = np.zeros(levels, dtype=np.int64)
        result.first_level = np.zeros(levels, dtype=np.int64)
    result.equal += (codes == ref_codes).sum(axis=1)
    result.frames += codes.shape[1]
    first = first_differences(ref_codes, codes)
    assert result.first_level is not None
    result.first_level += np.bincount(first[first >= 0], minlength=levels)
    for difference in first_difference_margins(distances, ref_codes, codes):
        result.margins.append(difference.margin)
        result.margin_levels.append(difference.level)
    for count, reference in ref_pcm.items():
        decoded = runner.decode(ref_codes[:count])
        add_audio_error(result.audio_error, result.audio_energy, count, reference, decoded)


# -- the report ----------------------------------------------------------------------------------------------------
def _first_line(result: ParityResult) -> str:
    return weights_line(result.weights.sha256, result.weights.is_random, str(result.weights.source))


def parity_json(result: ParityResult) -> dict[str, Any]:
    """The `parity.json` document."""
    items = []
    for item in result.implementations:
        status: dict[str, Any] = {"state": item.status}
        if item.reason:
            status["reason"] = item.reason
        if item.status != "ran":
            status["install"] = item.install
        agreement = item.agreement
        first = item.first_level
        items.append(
            {
                "name": item.name,
                "description": item.description,
                "status": status,
                "agreement": agreement,
                "tokens_equal": None if agreement is None else float(np.mean(agreement)),
                "first_difference": None
                if first is None
                else {
                    "frames": item.frames,
                    "frames_identical": int(item.frames - first.sum()),
                    "per_level": [int(v) for v in first],
                },
                "first_difference_margins": summarize_margins(item.margins) if item.status == "ran" else None,
                "audio_rel_l2": {str(c): item.rel_l2(c) for c in result.levels_decoded} if agreement else None,
                "audio_snr_db": {str(c): item.snr_db(c) for c in result.levels_decoded} if agreement else None,
                "seconds": round(item.seconds, 3),
            }
        )
    return {
        "note": _first_line(result),
        "tool": "mimistack parity",
        "mimistack_version": __version__,
        "date": datetime.date.today().isoformat(),
        "weights": {
            "source": result.weights.source,
            "sha256": result.weights.sha256,
            "random": result.weights.is_random,
        },
        "reference": result.reference,
        "clips": [{"name": n, "seconds": round(s, 3), "frames": f} for n, s, f in result.clips],
        "levels_decoded": list(result.levels_decoded),
        "implementations": items,
    }


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f} %"


def _db(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def parity_markdown(result: ParityResult) -> str:
    """The `parity.md` report; its first line names the weights' sha256 and says when they are random."""
    frames = sum(f for _, _, f in result.clips)
    lines = [
        _first_line(result),
        "",
        "# Parity matrix",
        "",
    ]
    if result.weights.is_random:
        lines += [f"> **{RANDOM_BANNER}**", ""]
    lines += [
        f"Reference: **{result.reference}**. {len(result.clips)} clip(s), {frames} frames. mimistack {__version__}, "
        f"{datetime.date.today().isoformat()}. Decodings compare each implementation's decoding of the reference's "
        "codes with the reference's own.",
        "",
    ]
    counts = result.levels_decoded
    header = [
        "implementation",
        "status",
        "tokens equal",
        "level 0",
        "first differing level (median)",
        "margin of first differences (median)",
        *[f"rel L2 @{c}" for c in counts],
        *[f"SNR dB @{c}" for c in counts],
    ]
    rows = []
    for item in result.implementations:
        agreement = item.agreement
        if item.status != "ran" or agreement is None:
            rows.append([item.name, f"{item.status}: {item.reason}", *["–"] * (len(header) - 2)])
            continue
        margins = summarize_margins(item.margins)
        median_level = "none" if not item.margin_levels else f"{np.median(item.margin_levels):.0f}"
        rows.append(
            [
                item.name,
                "ran",
                _pct(float(np.mean(agreement))),
                _pct(agreement[0]),
                median_level,
                "–" if margins["median"] is None else f"{margins['median']:.2e}",
                *[("–" if (v := item.rel_l2(c)) is None else f"{v:.2e}") for c in counts],
                *[_db(item.snr_db(c)) for c in counts],
            ]
        )
    lines += [*markdown_table(header, rows), ""]
    ran = [item for item in result.implementations if item.agreement is not None]
    if ran:
        levels = len(ran[0].agreement or [])
        lines += ["## Agreement per level (%)", ""]
        per_level_header = ["implementation", *[str(level) for level in range(levels)]]
        per_level = [[item.name, *[f"{100 * v:.1f}" for v in item.agreement or []]] for item in ran]
        lines += [*markdown_table(per_level_header, per_level), ""]
    skipped = [item for item in result.implementations if item.status != "ran"]
    if skipped:
        lines += ["## Not run", ""]
        lines += [f"- **{item.name}** ({item.status}): {item.reason}. Install: `{item.install}`" for item in skipped]
        lines.append("")
    lines += [
        "Margins: at a frame's first differing level, `|d(other) - d(reference)| / d(reference)` of the two tokens' "
        "distances to the reference's fp32 residual; near 0 means a near-tie that float rounding can flip.",
        "",
    ]
    return "\n".join(lines)
