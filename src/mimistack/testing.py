"""Random checkpoints in the exact official layout, for tests, demos and benchmarks without the real weights.

Sits on `config`, `weights` and `torch.mimi`; used by tests, `bench/`, and `--weights random`.

Why not just initialise a model randomly: a fresh model's codebooks are zero (every code would be 0, so a parity
test would prove nothing). Here each level's centroids are drawn around the residual that level actually sees on
a synthetic signal, so every level uses many distinct codes, on speech too. Audio decoded with such weights is
meaningless.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ._files import atomic_path
from .config import MimiConfig
from .weights import CONFIG_METADATA_KEY, NOTE_METADATA_KEY, RANDOM_NOTE, Layout, to_transformers_layout


def synthetic_signal(seconds: float, sample_rate: int = 24_000, seed: int = 0) -> np.ndarray:
    """Speech-like test audio: voiced harmonics with a moving pitch, noise bursts, silence. float32 `[N]`."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    pitch = 110 + 60 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 6)) + 40 * rng.uniform()
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * 2.3 * t + rng.uniform(0, 6)), 0, None) ** 0.5
    noise = rng.standard_normal(n) * (np.sin(2 * np.pi * 1.1 * t) > 0.6)
    return (0.25 * voiced * envelope + 0.05 * noise).astype(np.float32)


def random_state_dict(config: MimiConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights for `config` in the kyutai layout, with data-fitted codebooks (see module docstring)."""
    import torch

    from .torch.mimi import MimiModel

    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = MimiModel(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("layer_scale_1.scale") or name.endswith("layer_scale_2.scale"):
                param.copy_(0.05 + 0.25 * torch.rand(param.shape, generator=generator))
            elif "norm" in name and name.endswith(".weight"):
                param.copy_(1 + 0.1 * torch.randn(param.shape, generator=generator))
            elif "norm" in name and name.endswith(".bias"):
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))
        _fit_codebooks(model, config, generator, seed)
    return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in model.state_dict().items()}


SPREAD = 0.3


def _fit_codebooks(model: Any, config: MimiConfig, generator: Any, seed: int) -> None:
    import torch

    frames_wanted = 512
    batch = 8
    seconds = frames_wanted / batch / config.frame_rate
    rng = np.random.default_rng(seed)
    signals = [synthetic_signal(seconds, config.sample_rate, seed + i) for i in range(batch - 1)]
    # Louder and quieter, noisier material too, so that codebooks cover latents of audio unlike the fit data.
    signals.append((rng.standard_normal(len(signals[0])) * 0.1).astype(np.float32))
    pcm = np.stack(signals) * rng.uniform(0.3, 3.0, size=(batch, 1)).astype(np.float32)
    length = pcm.shape[1] - pcm.shape[1] % config.frame_size
    x = torch.from_numpy(pcm[:, None, :length])
    latent, _ = model.encode_latent(x)
    for branch in (model.quantizer.rvq_first, model.quantizer.rvq_rest):
        residual = branch.input_proj(latent).transpose(1, 2).reshape(-1, config.codebook_dim)
        for layer in branch.vq.layers:
            codebook = layer._codebook
            # Centroids: the residual's mean plus Gaussian spread at a fraction of its size. Nearest-centroid
            # search then depends on each frame's residual direction, so codes vary on any audio.
            mean = residual.mean(dim=0, keepdim=True)
            rms = (residual - mean).pow(2).mean().sqrt()
            centroids = mean + SPREAD * rms * torch.randn(
                config.codebook_size, config.codebook_dim, generator=generator
            )
            usage = 0.5 + torch.rand(config.codebook_size, generator=generator) * 4
            codebook.cluster_usage.copy_(usage)
            codebook.embedding_sum.copy_(centroids * usage[:, None])
            codebook._initialized.fill_(1.0)
            distances = torch.cdist(residual[None], codebook.embedding[None])[0]
            residual = residual - codebook.embedding[distances.argmin(-1)]
    model.quantizer.refresh()


def write_random_checkpoint(
    path: str | os.PathLike[str],
    config: Literal["official", "tiny"] | MimiConfig = "official",
    layout: Layout = "kyutai",
    seed: int = 0,
) -> Path:
    """Write random weights in the exact layout and shapes of the official files, as safetensors.

    `layout="kyutai"` mirrors `tokenizer-e351c8d8-checkpoint125.safetensors` (318 tensors for the official config);
    `layout="transformers"` mirrors `kyutai/mimi` `model.safetensors` (q/k permuted). Non-official configs are
    recorded in the file's metadata so that loaders can rebuild them.
    """
    from safetensors.numpy import save_file

    cfg = config if isinstance(config, MimiConfig) else MimiConfig.named(config)
    tensors = random_state_dict(cfg, seed)
    if layout == "transformers":
        tensors = to_transformers_layout(tensors, cfg)
    elif layout != "kyutai":
        raise ValueError(f"layout must be 'kyutai' or 'transformers', got {layout!r}")
    metadata = {"format": "pt", NOTE_METADATA_KEY: f"{RANDOM_NOTE} (seed {seed}), not a trained model"}
    if not cfg.is_official:
        metadata[CONFIG_METADATA_KEY] = json.dumps(cfg.to_dict())
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target, force=True) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp), metadata=metadata)
    return target
