"""RoPE context extension at inference: the frequencies of a rotary model stretched past its training length.

Three methods, each as Hugging Face's `modeling_rope_utils` computes it (so a native model and LlamaForCausalLM
with the same `rope_parameters` give the same logits):
- linear: position interpolation (Chen et al., arXiv 2306.15595): every frequency divided by the factor.
- dynamic: NTK-aware scaling that grows with the sequence (bloc97 and emozilla): the base raised as the sequence
  passes the training length, the training frequencies below it.
- yarn: YaRN (Peng et al., arXiv 2309.00071): high frequencies kept, low ones interpolated, a linear ramp between,
  and the attention logits sharpened by (0.1 ln factor + 1)^2 through cos and sin.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass

import torch

from llama_pe.config import RopeScalingName

ROPE_SCALING_METHODS: tuple[str, ...] = typing.get_args(RopeScalingName)  # config declares them, for its checks
YARN_BETA_FAST, YARN_BETA_SLOW = 32.0, 1.0  # the paper's (and HF's) defaults for the ramp's ends, in rotations


@dataclass(frozen=True)
class RopeScaling:
    method: str
    factor: float  # the evaluation context over the training context
    original_context: int  # train.context

    def __post_init__(self) -> None:
        if self.method not in ROPE_SCALING_METHODS:
            raise ValueError(f"unknown RoPE scaling method {self.method!r}; valid: {', '.join(ROPE_SCALING_METHODS)}")
        if self.factor < 1:
            raise ValueError(f"RoPE scaling factor must be at least 1, got {self.factor}")


def base_frequencies(theta: float, head_dim: int) -> torch.Tensor:
    return 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))  # (head_dim / 2,)


def scaled_frequencies(theta: float, head_dim: int, scaling: RopeScaling, seq_len: int) -> tuple[torch.Tensor, float]:
    """(inverse frequencies (head_dim / 2,), the factor cos and sin are multiplied by) for a sequence of seq_len."""
    if scaling.method == "linear":
        return base_frequencies(theta, head_dim) / scaling.factor, 1.0
    if scaling.method == "dynamic":
        if seq_len <= scaling.original_context:  # HF keeps the training frequencies up to the training length
            return base_frequencies(theta, head_dim), 1.0
        grown = scaling.factor * seq_len / scaling.original_context - (scaling.factor - 1)
        return base_frequencies(theta * grown ** (head_dim / (head_dim - 2)), head_dim), 1.0
    return _yarn(theta, head_dim, scaling)


def _yarn(theta: float, head_dim: int, scaling: RopeScaling) -> tuple[torch.Tensor, float]:
    def correction_dim(rotations: float) -> float:  # the dimension whose wavelength fits `rotations` in the context
        return head_dim * math.log(scaling.original_context / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(correction_dim(YARN_BETA_FAST)), 0)
    high = min(math.ceil(correction_dim(YARN_BETA_SLOW)), head_dim - 1)
    if low == high:
        high += 0.001  # HF's guard against a zero-width ramp
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: the dimension extrapolates (high frequency), 0: it is interpolated
    extrapolated = base_frequencies(theta, head_dim)
    inv_freq = extrapolated / scaling.factor * (1 - keep) + extrapolated * keep
    attention_factor = 0.1 * math.log(scaling.factor) + 1.0 if scaling.factor > 1 else 1.0
    return inv_freq, attention_factor
