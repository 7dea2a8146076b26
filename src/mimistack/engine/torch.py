"""The PyTorch engine: `mimistack.torch.MimiModel` behind the `Engine` interface, on CPU or CUDA.

Sits on `weights` and `torch.mimi`; used by `mimistack.codec.Codec`. Needs the `[torch]` extra.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..config import MimiConfig
from ..levels import CodebookTables, Levels
from ..weights import LoadedWeights, codebook_tables
from .base import CacheMode, EngineError

logger = logging.getLogger(__name__)


def _import_torch() -> Any:
    try:
        import torch
    except ImportError as error:
        raise EngineError("the torch engine needs PyTorch: pip install 'mimistack[torch]' "
                          "(or use engine='onnx' with exported graphs)") from error
    return torch


class TorchEngine:
    """Runs the reference model. `device`: "cpu", "cuda", "cuda:1", ...; `dtype`: "float32" (exact) or
    "bfloat16"/"float16" (fast on GPUs; codes then differ from the fp32 reference on some tokens)."""

    name = "torch"

    def __init__(self, weights: LoadedWeights, device: str = "cpu", dtype: str = "float32",
                 num_threads: int | None = None) -> None:
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
        if self.device.type == "cuda" and self.dtype == torch.float32:
            # cuDNN convolutions default to TF32 on recent GPUs; one rounded residual flips a token and every
            # level after it. fp32 here means fp32 (codes equal the CPU's); pick dtype="bfloat16" for speed.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        model = MimiModel(self.config)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.tensors.items()})
        if self.device.type == "cpu":
            from ..torch.conv import StreamingConvTranspose1d

            for module in model.modules():
                if isinstance(module, StreamingConvTranspose1d):
                    module.matmul_for_short_inputs = True
        self.model = model.to(self.device).eval()
        self.tables: CodebookTables = codebook_tables(weights.tensors, self.config)

    def _autocast(self) -> Any:
        torch = self.torch
        if self.dtype == torch.float32:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.dtype)

    def encode(self, pcm: np.ndarray, state: Any | None, mode: CacheMode) -> tuple[np.ndarray, Any]:
        torch = self.torch
        with torch.inference_mode(), self._autocast():
            x = torch.from_numpy(np.ascontiguousarray(pcm, dtype=np.float32)).to(self.device)
            latent, state = self.model.encode_latent(x, state, _mode(mode))
            codes = self.model.quantizer.encode(latent.float())
        return codes.cpu().numpy(), state

    def decode(self, codes: np.ndarray, levels: Levels, state: Any | None,
               mode: CacheMode) -> tuple[np.ndarray, Any]:
        torch = self.torch
        with torch.inference_mode():
            c = torch.from_numpy(np.ascontiguousarray(codes, dtype=np.int64)).to(self.device)
            latent = self.model.latent_from_codes(c, list(levels))
            with self._autocast():
                pcm, state = self.model.decode_latent(latent, state, _mode(mode))
        return pcm.float().cpu().numpy(), state

    def init_encoder_state(self, batch_size: int, mode: CacheMode) -> Any | None:
        if mode == "window":
            return None  # the batch path starts a stream and hands back a window-mode state
        with self.torch.inference_mode():
            return self.model.init_encoder_state(batch_size)

    def init_decoder_state(self, batch_size: int, mode: CacheMode) -> Any | None:
        if mode == "window":
            return None
        with self.torch.inference_mode():
            return self.model.init_decoder_state(batch_size)


def _mode(mode: CacheMode) -> str:
    if mode == "window":
        return "window"
    if mode == "moshi":
        return "ring"
    raise EngineError(f"unknown cache mode {mode!r}; expected 'window' or 'moshi'")
