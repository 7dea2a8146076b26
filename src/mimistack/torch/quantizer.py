"""Split residual vector quantizer of the Mimi reference model.

Sits on `config`; used by `mimi`; `levels.CodebookTables` is its numpy mirror. Keys match Kyutai's checkpoint:
`quantizer.rvq_first|rvq_rest.{input_proj,output_proj}.weight` and
`...vq.layers.N._codebook.{_initialized,cluster_usage,embedding_sum}`.

Level 0 (semantic) and levels 1..K-1 (acoustic residual chain) both quantize the same latent, each branch with its
own 1x1 projections. Nearest centroid by L2 through `torch.cdist`, as the reference does, so that ties and
near-ties resolve identically.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import MimiConfig


def nearest(x: Tensor, embedding: Tensor, augmented: Tensor) -> Tensor:
    """Index of the nearest centroid for each row of x `[N, dim]` -> int64 `[N]`.

    Bit-identical to `torch.cdist(x[None], embedding[None]).argmin(-1)` (its matmul path: `[-2x, |x|^2, 1] @
    [e, 1, |e|^2]^T`, clamped, square-rooted), with the codebook side computed once instead of on every call.
    """
    if x.shape[0] <= 25 and embedding.shape[0] <= 25:  # cdist's direct path: keep it for exactness
        return torch.cdist(x[None], embedding[None], p=2)[0].argmin(dim=-1)
    lhs = torch.cat([x.mul(-2), x.pow(2).sum(-1, keepdim=True), torch.ones_like(x[:, :1])], -1)[None]
    return lhs.matmul(augmented.mT).clamp_min_(0).sqrt_()[0].argmin(dim=-1)


class Codebook(nn.Module):
    def __init__(self, size: int, dim: int, epsilon: float) -> None:
        super().__init__()
        self.epsilon = epsilon
        self.register_buffer("_initialized", torch.tensor([True], dtype=torch.float))
        self.register_buffer("cluster_usage", torch.ones(size))
        self.register_buffer("embedding_sum", torch.zeros(size, dim))

    @property
    def embedding(self) -> Tensor:
        """Centroids `[size, dim]`."""
        usage = cast(Tensor, self.cluster_usage)
        return cast(Tensor, self.embedding_sum) / usage.clamp(min=self.epsilon)[:, None]


class _Layer(nn.Module):
    def __init__(self, size: int, dim: int, epsilon: float) -> None:
        super().__init__()
        self._codebook = Codebook(size, dim, epsilon)


class _LayerList(nn.Module):
    def __init__(self, count: int, size: int, dim: int, epsilon: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_Layer(size, dim, epsilon) for _ in range(count)])


class ResidualVectorQuantizer(nn.Module):
    """One branch: project `[B, dimension, T]` to `[B, codebook_dim, T]`, quantize residually, project back."""

    def __init__(self, count: int, config: MimiConfig) -> None:
        super().__init__()
        self.input_proj = nn.Conv1d(config.dimension, config.codebook_dim, 1, bias=False)
        self.output_proj = nn.Conv1d(config.codebook_dim, config.dimension, 1, bias=False)
        self.vq = _LayerList(count, config.codebook_size, config.codebook_dim, config.codebook_epsilon)
        self._embeddings: list[Tensor] | None = None
        self._augmented: list[Tensor] | None = None

    def embeddings(self) -> list[Tensor]:
        """Centroid tables, computed once per weights (call `refresh()` after loading new weights)."""
        if self._embeddings is None:
            self._embeddings = [cast(Tensor, cast(Any, layer)._codebook.embedding) for layer in self.vq.layers]
        return self._embeddings

    def augmented(self) -> list[Tensor]:
        """Per codebook `[1, size, dim + 2]` = [e, 1, |e|^2], the right-hand side of `torch.cdist`'s matmul path."""
        if self._augmented is None:
            self._augmented = [
                torch.cat([e, torch.ones_like(e[:, :1]), e.pow(2).sum(-1, keepdim=True)], -1)[None].contiguous()
                for e in self.embeddings()
            ]
        return self._augmented

    def refresh(self) -> None:
        self._embeddings = None
        self._augmented = None

    def encode(self, x: Tensor) -> Tensor:
        """latent `[B, dimension, T]` -> codes int64 `[K, B, T]`."""
        residual = self.input_proj(x)
        batch, dim, steps = residual.shape
        out = []
        for embedding, augmented in zip(self.embeddings(), self.augmented()):
            flat = residual.transpose(1, 2).reshape(-1, dim)
            codes = nearest(flat, embedding, augmented)
            quantized = F.embedding(codes, embedding).view(batch, steps, dim).transpose(1, 2)
            residual = residual - quantized
            out.append(codes.view(batch, steps))
        return torch.stack(out)

    def decode(self, codes: Tensor, levels: list[int]) -> Tensor:
        """Sum of the selected levels' centroids, projected: codes `[B, K, T]` -> `[B, dimension, T]`.

        `levels` index this branch's codebooks; an empty list gives zeros.
        """
        embeddings = self.embeddings()
        if not levels:
            batch, _, steps = codes.shape
            return torch.zeros(
                batch, self.output_proj.out_channels, steps, device=codes.device, dtype=embeddings[0].dtype
            )
        quantized: Tensor | None = None
        for level in levels:
            term = F.embedding(codes[:, level], embeddings[level]).transpose(1, 2)
            quantized = term if quantized is None else quantized + term
        out: Tensor = self.output_proj(quantized)
        return out


class SplitResidualVectorQuantizer(nn.Module):
    def __init__(self, config: MimiConfig) -> None:
        super().__init__()
        self.num_semantic = config.num_semantic
        self.rvq_first = ResidualVectorQuantizer(config.num_semantic, config)
        self.rvq_rest = ResidualVectorQuantizer(config.num_acoustic, config)

    def refresh(self) -> None:
        self.rvq_first.refresh()
        self.rvq_rest.refresh()

    def encode(self, x: Tensor) -> Tensor:
        """latent `[B, dimension, T]` -> codes int64 `[B, num_levels, T]` (all levels)."""
        codes = torch.cat([self.rvq_first.encode(x), self.rvq_rest.encode(x)], dim=0)
        return codes.transpose(0, 1)

    def decode(self, codes: Tensor, levels: list[int]) -> Tensor:
        """codes `[B, num_levels, T]` and the selected levels -> latent `[B, dimension, T]`.

        A level that is not selected contributes nothing (its codes are ignored).
        """
        ns = self.num_semantic
        semantic = self.rvq_first.decode(codes[:, :ns], [i for i in levels if i < ns])
        acoustic_levels = [i - ns for i in levels if i >= ns]
        if not acoustic_levels:
            return semantic
        return semantic + self.rvq_rest.decode(codes[:, ns:], acoustic_levels)
