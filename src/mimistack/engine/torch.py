"""The PyTorch engine: `mimistack.torch.MimiModel` behind the `Engine` interface, on CPU or CUDA.

Sits on `weights` and `torch.mimi`; used by `mimistack.codec.Codec`. Needs the `[torch]` extra.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..config import MimiConfig
from ..levels import CodebookTables, Levels
from ..weights import LoadedWeights, codebook_tables
from .base import CacheMode, Direction, Engine, EngineError, check_cache_mode

logger = logging.getLogger(__name__)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as error:
        raise EngineError(
            "the torch engine needs PyTorch: pip install 'mimistack[torch]' (or use engine='onnx' with exported graphs)"
        ) from error
    return torch


class TorchEngine(Engine):
    """Runs the reference model. `device`: "cpu", "cuda", "cuda:1", ...; `dtype`: "float32" (exact) or
    "bfloat16"/"float16" (fast on GPUs; codes then differ from the fp32 reference on some tokens).

    `fast=True` adds `torch.fast.FastMimi` for whole inputs of at most `fast_max_frames` frames (channels-last
    SEANet, polyphase transposed convolutions, weights cast to `dtype`, quantizer in strict fp32; `compile=True`
    also runs `torch.compile` on it). Batch calls use it through `encode_whole`/`decode_whole`; streaming and
    longer inputs keep the exact chunked path. Meant for GPU corpus work: see BENCHMARKS.md for its speed and
    how often its codes differ from fp32's.
    """

    name = "torch"

    def __init__(
        self,
        weights: LoadedWeights,
        device: str = "cpu",
        dtype: str = "float32",
        num_threads: int | None = None,
        *,
        fast: bool = False,
        compile: bool = False,
        fast_max_frames: int = 1500,
        allow_tf32: bool = False,
    ) -> None:
        torch = _import_torch()
        from ..torch.mimi import MimiModel

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineError(f"device {device!r} requested but CUDA is not available in this PyTorch build")
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self.torch = torch
        self.config: MimiConfig = weights.config
        self.weights_sha256 = weights.sha256
        self.device = torch.device(device)
        self.dtype = getattr(torch, dtype, None)
        if not isinstance(self.dtype, torch.dtype):
            raise EngineError(f"unknown dtype {dtype!r}")
        # cuDNN convolutions default to TF32 on recent GPUs; one rounded residual flips a token and every level
        # after it. fp32 here means fp32 (as close to the CPU as other kernels allow: 99 % of tokens on random
        # weights, only near-ties differ): TF32 is switched off during this engine's calls
        # only (the process-wide settings of other code are left alone). Pick dtype="bfloat16" for speed.
        # `allow_tf32=True` turns TF32 on around this engine's calls instead (for speed, or `mimistack precision`).
        self._strict = self.device.type == "cuda" and self.dtype == torch.float32 and not allow_tf32
        self._tf32 = self.device.type == "cuda" and self.dtype == torch.float32 and allow_tf32
        model = MimiModel(self.config)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.tensors.items()})
        if self.device.type == "cpu":
            from ..torch.conv import StreamingConvTranspose1d

            for module in model.modules():
                if isinstance(module, StreamingConvTranspose1d):
                    module.matmul_for_short_inputs = True
        self.model = model.to(self.device).eval()
        self.tables: CodebookTables = codebook_tables(weights.tensors, self.config)
        self.fast: Any | None = None
        self._lent: Any | None = None  # the page-locked buffer host_buffer handed out last
        self.whole_max_frames = 0
        if fast:
            from ..torch.fast import FastMimi

            if fast_max_frames <= 0:
                raise EngineError(f"fast_max_frames must be positive, got {fast_max_frames}")
            self.fast = FastMimi(self.model, self.dtype, channels_last=True, compile=compile).eval()
            self.whole_max_frames = fast_max_frames
        elif compile:
            raise EngineError("compile=True needs fast=True (it compiles the fast whole-input path)")

    def _autocast(self) -> Any:
        torch = self.torch
        if self.dtype == torch.float32:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _precision(self) -> Any:
        """Strict fp32 (no TF32) around a call on CUDA with dtype float32, TF32 when allowed; nothing otherwise."""
        if self._tf32:
            return _tf32_on(self.torch)
        if not self._strict:
            return contextlib.nullcontext()
        from ..torch.fast import strict_fp32

        return strict_fp32()

    def encode(self, pcm: np.ndarray, state: Any | None, mode: CacheMode) -> tuple[np.ndarray, Any]:
        torch = self.torch
        with torch.inference_mode(), self._precision(), self._autocast():
            x = torch.from_numpy(np.ascontiguousarray(pcm, dtype=np.float32)).to(self.device)
            latent, state = self.model.encode_latent(x, state, _mode(mode))
            codes = self.model.quantizer.encode(latent.float())
        return codes.cpu().numpy(), state

    def decode(self, codes: np.ndarray, levels: Levels, state: Any | None, mode: CacheMode) -> tuple[np.ndarray, Any]:
        torch = self.torch
        with torch.inference_mode(), self._precision():
            c = torch.from_numpy(np.ascontiguousarray(codes, dtype=np.int64)).to(self.device)
            latent = self.model.latent_from_codes(c, list(levels))
            with self._autocast():
                pcm, state = self.model.decode_latent(latent, state, _mode(mode))
        out: np.ndarray = pcm.float().cpu().numpy()
        return out, state

    def latent_from_codes(self, codes: np.ndarray, levels: Levels) -> np.ndarray:
        """The model's own latent sum (the one `decode` uses), as float32 numpy."""
        torch = self.torch
        with torch.inference_mode(), self._precision():
            c = torch.from_numpy(np.ascontiguousarray(codes, dtype=np.int64)).to(self.device)
            latent: np.ndarray = self.model.latent_from_codes(c, list(levels)).float().cpu().numpy()
        return latent

    def decode_latent(self, latent: np.ndarray, state: Any | None, mode: CacheMode) -> tuple[np.ndarray, Any]:
        torch = self.torch
        with torch.inference_mode(), self._precision():
            x = torch.from_numpy(np.ascontiguousarray(latent, dtype=np.float32)).to(self.device)
            with self._autocast():
                pcm, state = self.model.decode_latent(x, state, _mode(mode))
        return pcm.float().cpu().numpy(), state

    # -- stream pools: a state is a tuple of tensors, each with the batch on dim 0 ----------------------------
    supports_pools = True

    def pool_state(self, direction: Direction, batch_size: int, mode: CacheMode) -> Any:
        check_cache_mode(mode)
        init = self.model.init_encoder_state if direction == "encoder" else self.model.init_decoder_state
        with self.torch.inference_mode():
            return init(batch_size)

    def _rows(self, rows: Sequence[int]) -> Any:
        return self.torch.as_tensor(list(rows), dtype=self.torch.long, device=self.device)

    def take_rows(self, state: Any, rows: Sequence[int]) -> Any:
        index = self._rows(rows)
        with self.torch.inference_mode():
            return tuple(tensor.index_select(0, index) for tensor in state)

    def join_rows(self, states: Sequence[Any]) -> Any:
        torch = self.torch
        with torch.inference_mode():
            return tuple(torch.cat(parts, dim=0) for parts in zip(*states, strict=True))

    def put_rows(self, state: Any, rows: Sequence[int], part: Any) -> Any:
        index = self._rows(rows)
        with self.torch.inference_mode():
            for tensor, replacement in zip(state, part, strict=True):
                tensor.index_copy_(0, index, replacement)
        return state

    def encode_whole(self, pcm: np.ndarray) -> np.ndarray:
        """The fast path (fast=True only): pcm `[B, 1, N*frame_size]`, N <= whole_max_frames -> codes int64."""
        torch = self.torch
        if self.fast is None:
            raise EngineError("encode_whole needs the engine loaded with fast=True")
        with torch.inference_mode():
            x = self._upload(np.ascontiguousarray(pcm, dtype=np.float32))
            with self._precision(), _cudnn_benchmark(torch, self.device.type == "cuda"):
                codes: np.ndarray = self.fast.encode(x).cpu().numpy()
                return codes

    def decode_whole(self, codes: np.ndarray, levels: Levels) -> np.ndarray:
        """The fast path (fast=True only): codes `[B, num_levels, N]` -> pcm float32 `[B, 1, N*frame_size]`."""
        torch = self.torch
        if self.fast is None:
            raise EngineError("decode_whole needs the engine loaded with fast=True")
        with torch.inference_mode():
            c = self._upload(np.ascontiguousarray(codes, dtype=np.int64))
            with self._precision(), _cudnn_benchmark(torch, self.device.type == "cuda"):
                pcm = self.fast.decode(c, list(levels))
            if self.device.type != "cuda":
                out: np.ndarray = pcm.numpy()
                return out
            # Page-locked destination (PyTorch's caching host allocator reuses it once the array is freed): the
            # copy runs at full PCIe speed and the returned array is a view of it, not another copy.
            host = torch.empty(pcm.shape, dtype=pcm.dtype, pin_memory=True)
            host.copy_(pcm, non_blocking=True)
            torch.cuda.current_stream(self.device).synchronize()
            pinned: np.ndarray = host.numpy()
            return pinned

    def host_buffer(self, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 array for the next `encode_whole` input: page-locked memory (from PyTorch's caching host
        allocator, so no fresh pages to fault in) on CUDA with the fast path, which is then sent without a copy."""
        torch = self.torch
        if self.fast is None or self.device.type != "cuda":
            return np.empty(shape, dtype=np.float32)
        self._lent = torch.empty(shape, dtype=torch.float32, pin_memory=True)
        lent: np.ndarray = self._lent.numpy()
        return lent

    def _upload(self, array: np.ndarray) -> Any:
        """numpy -> device tensor; on CUDA through a page-locked staging buffer (a multi-threaded host copy, then
        a DMA at full PCIe speed instead of the driver's pageable path), or straight from `host_buffer`'s."""
        torch = self.torch
        source = torch.from_numpy(array)
        if self.device.type != "cuda":
            return source.to(self.device)
        lent, self._lent = getattr(self, "_lent", None), None
        if lent is not None and lent.data_ptr() == source.data_ptr() and lent.shape == source.shape:
            return lent.to(self.device, non_blocking=True)
        staging = torch.empty(source.shape, dtype=source.dtype, pin_memory=True)
        staging.copy_(source)
        return staging.to(self.device, non_blocking=True)

    def init_encoder_state(self, batch_size: int, mode: CacheMode) -> Any | None:
        if check_cache_mode(mode) == "window":
            return None  # the batch path starts a stream and hands back a window-mode state
        with self.torch.inference_mode():
            return self.model.init_encoder_state(batch_size)

    def init_decoder_state(self, batch_size: int, mode: CacheMode) -> Any | None:
        if check_cache_mode(mode) == "window":
            return None
        with self.torch.inference_mode():
            return self.model.init_decoder_state(batch_size)


@contextlib.contextmanager
def _tf32_on(torch: Any) -> Any:
    """TF32 matmuls and convolutions during a call; the process-wide settings are restored afterwards."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@contextlib.contextmanager
def _cudnn_benchmark(torch: Any, enabled: bool) -> Any:
    """cuDNN autotuning during the fast path's calls (one shape per batch: it picks the fastest kernels)."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled or saved
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def _mode(mode: CacheMode) -> str:
    if mode == "window":
        return "window"
    if mode == "moshi":
        return "ring"
    raise EngineError(f"unknown cache mode {mode!r}; expected 'window' or 'moshi'")
