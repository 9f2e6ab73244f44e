"""RoPE context extension at inference, a registry: each method's name, its frequencies and what HF needs of it.

The frequencies of a rotary model stretched past its training length, each method as Hugging Face's
`modeling_rope_utils` computes it (so a native model and LlamaForCausalLM with the same `rope_parameters` give the
same logits):
- linear: position interpolation (Chen et al., arXiv 2306.15595): every frequency divided by the factor.
- ntk: static NTK-aware scaling (bloc97): the base raised by alpha = factor, theta' = theta * alpha^(d / (d - 2)),
  so the lowest frequency is interpolated by about the factor and the highest is kept. Hugging Face has no rope type
  for it: its LlamaConfig gets the raised base as a plain rope_theta.
- dynamic: NTK-aware scaling that grows with the sequence (emozilla; Hugging Face's "dynamic"): alpha =
  factor * seq_len / original - (factor - 1), so at the window's full length (seq_len = factor * original) it is
  factor^2 - factor + 1 (3 at 2x, 13 at 4x, 57 at 8x), far more than ntk's alpha = factor; the training frequencies
  up to the training length.
- yarn: YaRN (Peng et al., arXiv 2309.00071): high frequencies kept, low ones interpolated, a linear ramp between,
  and the attention logits sharpened by (0.1 ln factor + 1)^2 through cos and sin.

A new method is one frequency function and one ROPE_SCALING_METHODS entry; config's checks, the evaluate stage's
metrics, the figures and the HF adapter read the registry. Importing this module loads no torch (config checks
eval.rope_scaling against it in the first stage): a method gets the training frequencies as a function of theta
(model/rope_scaling.py's base_frequencies) and imports torch only when it runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

    BaseFrequencies = Callable[[float], Tensor]  # theta -> the training inverse frequencies (head_dim / 2,)

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


def linear(base: BaseFrequencies, theta: float, head_dim: int, scaling: RopeScaling, seq_len: int):
    return base(theta) / scaling.factor, 1.0


def ntk_alpha_base(theta: float, head_dim: int, alpha: float) -> float:
    """The base that NTK-aware scaling by alpha gives: the lowest frequency stretched by about alpha."""
    return theta * alpha ** (head_dim / (head_dim - 2))


def ntk(base: BaseFrequencies, theta: float, head_dim: int, scaling: RopeScaling, seq_len: int):
    return base(ntk_alpha_base(theta, head_dim, scaling.factor)), 1.0


def dynamic(base: BaseFrequencies, theta: float, head_dim: int, scaling: RopeScaling, seq_len: int):
    if seq_len <= scaling.original_context:  # HF keeps the training frequencies up to the training length
        return base(theta), 1.0
    grown = scaling.factor * seq_len / scaling.original_context - (scaling.factor - 1)
    return base(ntk_alpha_base(theta, head_dim, grown)), 1.0


def yarn(base: BaseFrequencies, theta: float, head_dim: int, scaling: RopeScaling, seq_len: int):
    import torch

    def correction_dim(rotations: float) -> float:  # the dimension whose wavelength fits `rotations` in the context
        return head_dim * math.log(scaling.original_context / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(correction_dim(YARN_BETA_FAST)), 0)
    high = min(math.ceil(correction_dim(YARN_BETA_SLOW)), head_dim - 1)
    if low == high:
        high += 0.001  # HF's guard against a zero-width ramp
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: the dimension extrapolates (high frequency), 0: it is interpolated
    extrapolated = base(theta)
    inv_freq = extrapolated / scaling.factor * (1 - keep) + extrapolated * keep
    attention_factor = 0.1 * math.log(scaling.factor) + 1.0 if scaling.factor > 1 else 1.0
    return inv_freq, attention_factor


def hf_by_rope_type(theta: float, head_dim: int, scaling: RopeScaling) -> dict:
    """Hugging Face's rope_parameters for a method it implements under the same name."""
    return {"rope_type": scaling.method, "rope_theta": theta, "factor": scaling.factor}


def hf_yarn(theta: float, head_dim: int, scaling: RopeScaling) -> dict:
    # Hugging Face reads yarn's training length from original_max_position_embeddings, not max_position_embeddings.
    return {**hf_by_rope_type(theta, head_dim, scaling), "original_max_position_embeddings": scaling.original_context}


def hf_ntk(theta: float, head_dim: int, scaling: RopeScaling) -> dict:
    return {"rope_type": "default", "rope_theta": ntk_alpha_base(theta, head_dim, scaling.factor)}


@dataclass(frozen=True)
class RopeScalingMethod:
    # (base, theta, head_dim, scaling, seq_len) -> (inverse frequencies (head_dim / 2,), the factor cos and sin
    # are multiplied by) for a sequence of seq_len
    frequencies: Callable[[BaseFrequencies, float, int, RopeScaling, int], tuple[Tensor, float]]
    # (theta, head_dim, scaling) -> LlamaConfig.rope_parameters that make Hugging Face's Llama compute the same
    hf_parameters: Callable[[float, int, RopeScaling], dict] = hf_by_rope_type


# The order is the metrics', the figures' and the DVC plot's (dvc.yaml's "rope scaling", checked by the tests).
ROPE_SCALING_METHODS: dict[str, RopeScalingMethod] = {
    "linear": RopeScalingMethod(linear),
    "ntk": RopeScalingMethod(ntk, hf_parameters=hf_ntk),
    "dynamic": RopeScalingMethod(dynamic),
    "yarn": RopeScalingMethod(yarn, hf_parameters=hf_yarn),
}
