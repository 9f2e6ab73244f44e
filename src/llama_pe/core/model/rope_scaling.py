"""RoPE context extension at inference: the training frequencies and their scaling by a registered method.

The methods, their names and what Hugging Face needs of each live in llama_pe/positions/rope_scaling.py (importable
without torch, for config's checks); this module gives them the training frequencies.
"""

from __future__ import annotations

import functools

import torch

from llama_pe.positions.rope_scaling import ROPE_SCALING_METHODS, RopeScaling

__all__ = ["ROPE_SCALING_METHODS", "RopeScaling", "base_frequencies", "scaled_frequencies"]


def base_frequencies(theta: float, head_dim: int) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))  # (head_dim / 2,)


def scaled_frequencies(theta: float, head_dim: int, scaling: RopeScaling, seq_len: int) -> tuple[torch.Tensor, float]:
    """(inverse frequencies (head_dim / 2,), the factor cos and sin are multiplied by) for a sequence of seq_len."""
    base = functools.partial(base_frequencies, head_dim=head_dim)
    return ROPE_SCALING_METHODS[scaling.method].frequencies(base, theta, head_dim, scaling, seq_len)
