"""alibi: Attention with Linear Biases (Press et al., arXiv 2108.12409): logit -= slope_h * (i - j), per query head."""

from __future__ import annotations

import math
from typing import Any

from llama_pe.positions.catalogue import Encoding, Setting, torch_part

ALIBI_LEARNABLE = Setting(False, "train ALiBi's slopes (as the original study did) instead of the paper's fixed ones")

ENCODING = Encoding(
    "ALiBi, a linear bias by distance (Press et al., arXiv 2108.12409)",
    "ALiBi",
    rank=3,
    biased=True,
    settings={"alibi_learnable": ALIBI_LEARNABLE},
)


def alibi_slopes(n_heads: int) -> list[float]:
    """ALiBi's head slopes exactly as the paper's code (github.com/ofirpress/attention_with_linear_biases)."""

    def power_of_2_slopes(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        return power_of_2_slopes(n_heads)
    # Otherwise: the slopes of the closest smaller power of two, then every other slope of the next one.
    closest = 2 ** math.floor(math.log2(n_heads))
    return power_of_2_slopes(closest) + alibi_slopes(2 * closest)[0::2][: n_heads - closest]


def _make() -> dict[str, Any]:
    import torch
    from torch import nn

    from llama_pe.core.model.args import ModelArgs
    from llama_pe.core.model.flex import ScoreMod
    from llama_pe.positions.base import PositionEncoding

    class ALiBi(PositionEncoding):
        """The ALiBi bias, one slope per query head."""

        def __init__(self, args: ModelArgs) -> None:
            super().__init__(args)
            # One slope per query head: under grouped-query attention heads that share a kv head keep their own.
            slopes = torch.tensor(alibi_slopes(args.n_heads), dtype=torch.float32)
            if args.encoding["alibi_learnable"]:
                self.slopes = nn.Parameter(slopes)
            else:
                self.register_buffer("slopes", slopes, persistent=False)

        def attn_bias(self, q_len: int, k_len: int, start: int) -> torch.Tensor:
            device = self.slopes.device
            q_pos = torch.arange(start, start + q_len, device=device)
            k_pos = torch.arange(k_len, device=device)
            distance = (q_pos[:, None] - k_pos[None, :]).clamp(min=0).float()  # (q_len, k_len); future is masked
            return -self.slopes[:, None, None] * distance  # (n_heads, q_len, k_len)

        def score_mod(self, q_len: int, k_len: int) -> ScoreMod:
            slopes = self.slopes

            def alibi(score, batch, head, q_pos, k_pos):
                return score - slopes[head] * (q_pos - k_pos)  # the future is masked by the caller

            return alibi

    return {"ALiBi": ALiBi}


__getattr__ = torch_part(__name__, ENCODING, _make, ("ALiBi",))
