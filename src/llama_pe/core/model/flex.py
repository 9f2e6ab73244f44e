"""FlexAttention (arXiv 2412.05496) for the encodings that bias the attention logits, on a GPU.

SDPA takes a bias only as an (n_heads, T, S) tensor in memory, which its memory-efficient kernel reads for every
batch row; FlexAttention computes the bias inside its fused kernel from the encoding's `score_mod`, so ALiBi,
abs_rel, t5 and fire get a kernel as fused as the causal one the unbiased encodings use. FlexAttention has no
dropout, so training with attention dropout keeps SDPA (its memory-efficient kernel, which has dropout), and so
does decoding with a KV cache (each new length would compile anew). Outside torch.compile the kernel is compiled
here once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch.nn.attention.flex_attention import flex_attention

# Devices where biased attention goes through FlexAttention. Its CPU path runs eagerly without a backward pass,
# slower than SDPA's CPU kernel, so only CUDA; tests add "cpu" to check the math against SDPA's.
FLEX_DEVICES: tuple[str, ...] = ("cuda",)

ScoreMod = Callable[..., torch.Tensor]  # (score, batch, head, q_idx, kv_idx) -> score


def wants_flex(device: torch.device, biased: bool, dropout_active: bool, cached: bool) -> bool:
    return biased and device.type in FLEX_DEVICES and not dropout_active and not cached


@functools.cache
def _compiled_flex_attention() -> Callable[..., torch.Tensor]:
    return torch.compile(flex_attention, dynamic=False)


def biased_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, score_mod: ScoreMod) -> torch.Tensor:
    """Causal attention with score_mod's bias; q (B, H, T, d) are the last T of the S key positions of k, v."""
    offset = torch.tensor(k.shape[-2] - q.shape[-2], device=q.device)  # a tensor: no recompile per offset

    def causal_and_biased(score, batch, head, q_idx, kv_idx):
        biased = score_mod(score, batch, head, q_idx + offset, kv_idx)  # absolute query position
        return torch.where(q_idx + offset >= kv_idx, biased, -float("inf"))

    eager = torch.compiler.is_compiling() or q.device.type != "cuda"  # inside torch.compile: inductor fuses it
    attend = flex_attention if eager else _compiled_flex_attention()
    return attend(q, k, v, score_mod=causal_and_biased, enable_gqa=q.shape[1] != k.shape[1])
