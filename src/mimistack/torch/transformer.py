"""Causal sliding-window transformer of the Mimi reference model, with an explicit KV-cache state.

Sits on `config`; used by `mimi`. Keys match Kyutai's checkpoint: `transformer.layers.N.self_attn.in_proj_weight`,
`self_attn.out_proj.weight`, `norm1`, `norm2`, `linear1`, `linear2`, `layer_scale_1.scale`, `layer_scale_2.scale`.

Attention: interleaved RoPE (pairs (x0, x1), (x2, x3), ...), a causal mask limited to `context` steps (in batch
mode too). Streaming state per layer: keys and values of the last `context` steps `[B, H, context, D]`; plus one
`offset` `[1]` (int64) for the whole stack: the absolute position of the next step. Cache slots whose position
would be negative are masked, so the initial state is all zeros.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import MimiConfig
from .conv import State


def apply_rope(q: Tensor, k: Tensor, offset: Tensor, max_period: float) -> tuple[Tensor, Tensor]:
    """Rotate interleaved pairs of q, k `[B, H, T, D]` by position `offset + t` (computed as Kyutai does)."""
    _, _, steps, dim = q.shape
    ds = torch.arange(dim // 2, device=q.device, dtype=torch.float32)
    freqs = torch.exp(ds * (-math.log(max_period) * 2 / dim))
    ts = offset.float().view(-1, 1) + torch.arange(steps, device=q.device, dtype=torch.float32)
    ts = ts.view(-1, 1, steps, 1)
    rotr = torch.cos(freqs * ts)
    roti = torch.sin(freqs * ts)

    def rotate(x: Tensor) -> Tensor:
        pairs = x.view(*x.shape[:-1], dim // 2, 2)
        xr, xi = pairs[..., 0].float(), pairs[..., 1].float()
        out_r = xr * rotr - xi * roti
        out_i = xr * roti + xi * rotr
        return torch.stack([out_r.to(x.dtype), out_i.to(x.dtype)], dim=-1).view(x.shape)

    return rotate(q), rotate(k)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 0.01) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * x


class SelfAttention(nn.Module):
    """Multi-head causal self-attention with a `context`-step window. x `[B, T, C]` -> `[B, T, C]`."""

    def __init__(self, config: MimiConfig) -> None:
        super().__init__()
        dim = config.dimension
        self.num_heads = config.num_heads
        self.context = config.context
        self.max_period = config.max_period
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        nn.init.xavier_uniform_(self.in_proj_weight)
        self.out_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: Tensor, offset: Tensor, cache: State | None, mode: str = "window") -> tuple[Tensor, State]:
        """`mode` says how a cache is kept (see `ProjectedTransformer`); `cache=None` is the start of a stream.

        `offset` is `[1]` (every row at the same position) or `[B]` (each row of a stream pool at its own)."""
        batch, steps, dim = x.shape
        heads = self.num_heads
        qkv = F.linear(x, self.in_proj_weight).view(batch, steps, 3, heads, dim // heads)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # [3, B, H, T, D]
        q, k, v = qkv[0], qkv[1], qkv[2]
        q, k = apply_rope(q, k, offset, self.max_period)
        start = offset.view(-1, 1)  # [B or 1, 1]
        pos_q = start + torch.arange(steps, device=x.device).view(1, -1)  # [B or 1, T]
        if mode == "ring-window":
            if cache is None:
                raise ValueError("cache mode 'ring-window' needs an explicit state (init_state with ring=...)")
            return self._ring_window(q, k, v, cache, start, pos_q)
        if mode == "ring" and cache is not None:
            keys, values, pos_k = self._ring_write(cache, k, v, start)
            new_cache: State = (keys, values)
        else:
            if cache is None:
                keys, values = k, v
                pos_k = torch.arange(steps, device=x.device).view(1, -1)
            else:
                keys = torch.cat([cache[0], k], dim=2)
                values = torch.cat([cache[1], v], dim=2)
                pos_k = start - self.context + torch.arange(self.context + steps, device=x.device).view(1, -1)
            new_cache = self._keep_last(keys, values)
            if mode == "moshi-window":
                # What a ring of `context` slots keeps: keys older than the chunk's last `context` steps are gone.
                pos_k = torch.where(pos_k > start + steps - 1 - self.context, pos_k, -1)
        delta = pos_q.unsqueeze(2) - pos_k.unsqueeze(1)  # [B or 1, T, S]
        mask = ((pos_k.unsqueeze(1) >= 0) & (delta >= 0) & (delta < self.context)).unsqueeze(1)
        out = F.scaled_dot_product_attention(q, keys, values, mask)
        out = out.transpose(1, 2).reshape(batch, steps, dim)
        return self.out_proj(out), new_cache

    def _ring_window(
        self, q: Tensor, k: Tensor, v: Tensor, cache: State, start: Tensor, pos_q: Tensor
    ) -> tuple[Tensor, State]:
        """Batch mode's window over a ring of R >= context + T - 1 slots, written in place of the oldest.

        The cache is `(keys transposed [B, H, D, R], values [B, H, R, D])`: slot (offset + t) % R holds step
        offset + t, so every key a query of this chunk may see (the last `context` steps) is still in the ring, and
        the graph does no concatenation, slicing or transposing of the cache. ONNX Runtime writes a scatter whose
        input and output share a buffer in place, so a state bound that way is never copied.
        """
        batch, heads, steps, head_dim = q.shape
        keys_t, values = cache
        slots = torch.arange(keys_t.shape[3], device=q.device).view(1, -1)
        capacity = slots[:, -1:] + 1  # R as a tensor: the exporter has no remainder by a symbolic int
        index = torch.remainder(start + torch.arange(steps, device=q.device).view(1, -1), capacity)
        index = index.expand(batch, steps)
        keys_t = keys_t.scatter(
            3, index.view(batch, 1, 1, steps).expand(batch, heads, head_dim, steps), k.transpose(2, 3)
        )
        values = values.scatter(2, index.view(batch, 1, steps, 1).expand(batch, heads, steps, head_dim), v)
        last = start + steps - 1  # [B or 1, 1]
        pos_k = last - torch.remainder(last - slots, capacity)  # [B or 1, R]
        delta = pos_q.unsqueeze(2) - pos_k.unsqueeze(1)  # [B or 1, T, R]
        mask = ((pos_k.unsqueeze(1) >= 0) & (delta >= 0) & (delta < self.context)).unsqueeze(1)
        scores = torch.matmul(q, keys_t) * (1.0 / math.sqrt(head_dim))
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        out = torch.matmul(weights, values).transpose(1, 2).reshape(batch, steps, heads * head_dim)
        return self.out_proj(out), (keys_t, values)

    def _ring_write(self, cache: State, k: Tensor, v: Tensor, start: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Kyutai's ring KV cache: slot (offset + t) % context; returns keys, values, slot positions `[B or 1, C]`.

        Slot order and contents are exactly those of moshi's `RingKVCache`, so attention sums in the same order.
        `start` is `[B or 1, 1]`: with one offset per row, each row writes its own slots.
        """
        capacity = self.context
        batch, heads, steps, head_dim = k.shape
        index = (start + torch.arange(steps, device=k.device).view(1, -1)) % capacity  # [B or 1, T]
        if index.shape[0] == 1:
            keys = cache[0].index_copy(2, index[0], k)
            values = cache[1].index_copy(2, index[0], v)
        else:
            scatter = index.view(batch, 1, steps, 1).expand(batch, heads, steps, head_dim)
            keys = cache[0].scatter(2, scatter, k)
            values = cache[1].scatter(2, scatter, v)
        slots = torch.arange(capacity, device=k.device).view(1, -1)
        last = start + steps - 1
        delta = slots - last % capacity
        positions = torch.where(delta <= 0, last + delta, last + delta - capacity)
        positions = torch.where(slots >= start + steps, -1, positions)
        return keys, values, positions

    def _keep_last(self, keys: Tensor, values: Tensor) -> State:
        length = keys.shape[2]
        if length >= self.context:
            return keys[:, :, -self.context :], values[:, :, -self.context :]
        pad = (0, 0, self.context - length, 0)
        return F.pad(keys, pad), F.pad(values, pad)


class TransformerLayer(nn.Module):
    def __init__(self, config: MimiConfig) -> None:
        super().__init__()
        dim = config.dimension
        self.self_attn = SelfAttention(config)
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.linear1 = nn.Linear(dim, config.dim_feedforward, bias=False)
        self.linear2 = nn.Linear(config.dim_feedforward, dim, bias=False)
        self.layer_scale_1 = LayerScale(dim)
        self.layer_scale_2 = LayerScale(dim)

    def forward(self, x: Tensor, offset: Tensor, cache: State | None, mode: str = "window") -> tuple[Tensor, State]:
        update, new_cache = self.self_attn(self.norm1(x), offset, cache, mode)
        x = x + self.layer_scale_1(update)
        x = x + self.layer_scale_2(self.linear2(F.gelu(self.linear1(self.norm2(x)))))
        return x, new_cache


class Transformer(nn.Module):
    def __init__(self, config: MimiConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList([TransformerLayer(config) for _ in range(config.num_layers)])


class ProjectedTransformer(nn.Module):
    """Conv layout in and out: `[B, C, T] -> [B, C, T]`.

    State: `(offset [B] int64, k_0, v_0, k_1, v_1, ...)` with each cache `[B, H, context, D]`: every row has its
    own position, so the rows of a stream pool may be at different points of their streams (a state made
    elsewhere with one shared offset `[1]` still works).

    Cache modes, for a stream fed in chunks:
    - `"window"`: the cache holds the last `context` steps in time order; every query sees exactly the keys that
      batch mode shows it (delta < context). Used to process long inputs in chunks.
    - `"ring"`: Kyutai's ring of `context` slots, bit-identical to moshi's streaming. A chunk of T steps overwrites
      the oldest slots first, so once a stream is longer than `context` steps, the first T-1 queries of a chunk
      see up to T-1 fewer old keys than in batch mode (moshi streaming behaves so too).
    - `"moshi-window"`: the ring's arithmetic with a time-ordered cache (same keys, other summation order): for
      graphs that cannot scatter (ONNX).
    - `"ring-window"`: `"window"`'s attention over a ring of R >= context + T - 1 slots (`init_state(ring=R)`,
      keys stored transposed), so a step writes T slots instead of copying the cache: the ONNX stream graphs.
    """

    def __init__(self, config: MimiConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = Transformer(config)

    def init_state(self, batch_size: int, device: torch.device, dtype: torch.dtype, ring: int | None = None) -> State:
        """The zero state; `ring`: the slot count R of a "ring-window" state (keys stored transposed)."""
        cfg = self.config
        head_dim = cfg.dimension // cfg.num_heads
        if ring is None:
            shapes = [(batch_size, cfg.num_heads, cfg.context, head_dim)] * 2
        else:
            shapes = [(batch_size, cfg.num_heads, head_dim, ring), (batch_size, cfg.num_heads, ring, head_dim)]
        caches = [torch.zeros(shapes[i % 2], device=device, dtype=dtype) for i in range(2 * cfg.num_layers)]
        return (torch.zeros(batch_size, device=device, dtype=torch.long), *caches)

    def forward(self, x: Tensor, state: State | None = None, mode: str = "window") -> tuple[Tensor, State]:
        if mode not in ("window", "ring", "moshi-window", "ring-window"):
            raise ValueError(f"unknown cache mode {mode!r}")
        x = x.transpose(1, 2)
        offset = torch.zeros(x.shape[0], device=x.device, dtype=torch.long) if state is None else state[0]
        new_state: list[Tensor] = [offset + x.shape[1]]
        for index, layer in enumerate(self.transformer.layers):
            cache = None if state is None else (state[1 + 2 * index], state[2 + 2 * index])
            x, (k, v) = layer(x, offset, cache, mode)
            new_state += [k, v]
        return x.transpose(1, 2), tuple(new_state)
