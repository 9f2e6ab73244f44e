"""Dropout whose masks are cheap to draw on a CPU, and the attention that uses it there.

On a CPU, PyTorch's dropout draws one random number per element from its generator: on the default `small`
model that was a tenth of a training step (torch.profiler: `aten::bernoulli_`, 2.3 ms per call), while the
matrix multiplies around it are fast. Here one 64-bit draw (`randint` over the full int64 range) gives four
16-bit uniforms, and an element is dropped when its uniform falls below round(p * 65536): the drop rate is p to
within 1/131072 (0.1 becomes 0.100006), and kept elements are scaled by the exact inverse of the keep rate, so
the expectation is unchanged. The draws come from torch's CPU generator, so torch.manual_seed and the RNG state
in a checkpoint govern them as they govern nn.Dropout. On a GPU, F.dropout is already fused and fast: it is used
there unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_LEVELS = 1 << 16  # a draw is a 16-bit uniform


def _drop_threshold(p: float) -> int:
    return round(p * _LEVELS)  # drop when (uniform + 32768) < threshold


def keep_mask(shape: torch.Size, p: float) -> tuple[torch.Tensor, float]:
    """A boolean keep mask of `shape` with drop rate round(p * 65536) / 65536, and 1 / keep rate."""
    numel = shape.numel()
    words = (numel + 3) // 4  # four int16 per int64 draw
    draws = torch.randint(-(2**63), 2**63 - 1, (words,), dtype=torch.int64).view(torch.int16)[:numel]
    threshold = _drop_threshold(p)
    keep = draws >= threshold - (_LEVELS // 2)  # int16 spans [-32768, 32767]
    return keep.view(shape), _LEVELS / (_LEVELS - threshold)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    keep, scale = keep_mask(x.shape, p)
    return x * (keep.to(x.dtype) * scale)


class Dropout(nn.Module):
    """nn.Dropout with cheap masks on a CPU (see the module docstring)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def attention_with_dropout(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, p: float
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) with dropout, times v: SDPA's math path, which is the one PyTorch takes on a
    CPU whenever dropout_p > 0, with this module's masks. q (B, H, T, d); k, v (B, H_kv, S, d); mask None: causal.
    """
    groups = q.shape[1] // k.shape[1]
    if groups > 1:  # grouped-query attention: each kv head serves `groups` query heads, as SDPA's enable_gqa
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, H, T, S)
    if mask is None:
        q_len, k_len = scores.shape[-2:]
        future = torch.ones(q_len, k_len, dtype=torch.bool, device=q.device).triu(k_len - q_len + 1)
        scores = scores.masked_fill(future, float("-inf"))
    else:
        scores = scores + mask
    weights = dropout(torch.softmax(scores, dim=-1), p, training=True)
    return weights @ v  # (B, H, T, d)
