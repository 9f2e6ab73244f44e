"""The pieces of a LLaMA block: RMSNorm, SwiGLU feed-forward and grouped-query attention through SDPA."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from llama_pe.core.model.args import ModelArgs
from llama_pe.core.model.flex import biased_causal_attention, wants_flex
from llama_pe.positions.base import PositionEncoding


class RMSNorm(nn.Module):
    """Root-mean-square norm (arXiv 1910.07467), computed in fp32 whatever the activations' dtype."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * normed.type_as(x)


class FeedForward(nn.Module):
    """SwiGLU (arXiv 2002.05202): w2(silu(w1 x) * w3 x)."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.w1 = nn.Linear(args.dim, args.hidden_dim, bias=False)
        self.w2 = nn.Linear(args.hidden_dim, args.dim, bias=False)
        self.w3 = nn.Linear(args.dim, args.hidden_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class KVCache:
    """Keys and values of every layer seen so far, for incremental decoding."""

    def __init__(self, n_layers: int) -> None:
        self.layers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layers

    @property
    def length(self) -> int:
        first = self.layers[0]
        return 0 if first is None else first[0].shape[-2]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        previous = self.layers[layer]
        if previous is not None:
            k = torch.cat((previous[0], k), dim=-2)  # (B, n_kv_heads, cached + T, head_dim)
            v = torch.cat((previous[1], v), dim=-2)
        self.layers[layer] = (k, v)
        return k, v


def attention_probabilities(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(head_dim) + mask), (B, n_heads, T, S), written out as SDPA computes it; mask None is
    the causal mask of the last T of S positions."""
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # each kv head serves its group of query heads
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])  # (B, n_heads, T, S)
    if mask is None:
        t, s = scores.shape[-2:]
        future = torch.arange(s, device=q.device)[None, :] > torch.arange(s - t, s, device=q.device)[:, None]
        mask = torch.zeros(t, s, device=q.device).masked_fill(future, float("-inf"))
    return torch.softmax(scores + mask.float(), dim=-1)


class Attention(nn.Module):
    """Grouped-query causal self-attention; logits scaled by 1/sqrt(head_dim) inside SDPA."""

    def __init__(self, args: ModelArgs, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
        self.wq = nn.Linear(args.dim, args.n_heads * args.head_dim, bias=False)
        self.wk = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wv = nn.Linear(args.dim, args.n_kv_heads * args.head_dim, bias=False)
        self.wo = nn.Linear(args.n_heads * args.head_dim, args.dim, bias=False)
        self.dropout = args.dropout
        # Diagnostics (core.context_use): called with this layer's exact attention probabilities, which the fused
        # kernels never form; None in training and evaluation.
        self.probe: Callable[[int, torch.Tensor], None] | None = None

    def forward(
        self,
        x: torch.Tensor,
        positions: PositionEncoding,
        mask: torch.Tensor | None,
        start: int,
        cache: KVCache | None = None,
        queries: int | None = None,
    ) -> torch.Tensor:
        """queries: attend from the last `queries` positions only (keys and values cover all): (B, queries, dim)."""
        batch, seq, _ = x.shape
        # (B, T, heads * head_dim) -> (B, heads, T, head_dim)
        q = self.wq(x if queries is None else x[:, -queries:]).view(batch, -1, self.n_heads, self.head_dim)
        q = q.transpose(1, 2)
        k = self.wk(x).view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(batch, seq, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = positions.rotate(q, k, start)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        if mask is not None and mask.dtype != q.dtype:
            mask = mask.to(q.dtype)  # SDPA wants a float mask in the dtype of the queries (bf16 under autocast)
        if self.probe is not None:
            self.probe(self.layer, attention_probabilities(q, k, mask))
        dropout_active = self.training and self.dropout > 0
        if wants_flex(q.device, positions.spec.biased, dropout_active, cached=cache is not None):
            score_mod = positions.score_mod(q.shape[-2], k.shape[-2])
            out = biased_causal_attention(q, k, v, score_mod)  # the bias inside a fused kernel, not in memory
        else:
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                is_causal=mask is None,  # no bias, no cache, every query: the fused causal kernel
                dropout_p=self.dropout if self.training else 0.0,
                enable_gqa=self.n_kv_heads != self.n_heads,  # each kv head serves n_heads / n_kv_heads query heads
            )
        return self.wo(out.transpose(1, 2).reshape(batch, q.shape[-2], -1))  # (B, T or queries, dim)
