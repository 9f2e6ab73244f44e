"""t5: T5's relative position bias (arXiv 1910.10683), a learned scalar per head and distance bucket."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llama_pe.positions.catalogue import Encoding, Setting, check, torch_part


def t5_rules(settings: Mapping[str, Any], head_dim: int) -> None:
    # T5's buckets: the first half exact distances, the second log-spaced from there to t5_max_distance.
    buckets, max_distance = settings["t5_buckets"], settings["t5_max_distance"]
    check(buckets >= 4, "t5_buckets", "an integer of at least 4 (half exact distances, half log-spaced)", buckets)
    check(
        max_distance > buckets // 2,
        "t5_max_distance",
        f"more than half of model.t5_buckets ({buckets // 2}), where the log-spaced buckets start",
        max_distance,
    )


ENCODING = Encoding(
    "T5's learned bias per distance bucket (arXiv 1910.10683)",
    "T5Bias",
    rank=6,
    biased=True,
    settings={
        "t5_buckets": Setting(32, "distance buckets per head, half exact, half log-spaced ..."),
        "t5_max_distance": Setting(128, "... up to this distance; farther shares the last bucket"),
    },
    validate=t5_rules,
)


def _make() -> dict[str, Any]:
    import math

    import torch
    from torch import nn

    from llama_pe.core.model.args import ModelArgs
    from llama_pe.core.model.flex import ScoreMod
    from llama_pe.positions.base import PositionEncoding

    def t5_buckets(distance: torch.Tensor, n_buckets: int, max_distance: int) -> torch.Tensor:
        """T5's causal relative-position buckets (Hugging Face's T5Attention._relative_position_bucket with
        bidirectional=False): distances below n_buckets / 2 get a bucket each, longer ones log-spaced buckets up to
        max_distance, and everything past it the last bucket."""
        exact = n_buckets // 2
        distance = distance.clamp(min=0)  # the future, masked anyway, shares distance 0's bucket
        scaled = torch.log(distance.clamp(min=exact).float() / exact) / math.log(max_distance / exact)
        log_spaced = (exact + (scaled * (n_buckets - exact)).to(torch.long)).clamp(max=n_buckets - 1)
        return torch.where(distance < exact, distance, log_spaced)

    class T5Bias(PositionEncoding):
        """The bias table, shared by every layer as in T5."""

        def __init__(self, args: ModelArgs) -> None:
            super().__init__(args)
            self.n_buckets, self.max_distance = args.encoding["t5_buckets"], args.encoding["t5_max_distance"]
            self.table = nn.Embedding(self.n_buckets, args.n_heads)  # initialised as the other tables (init_std)

        def attn_bias(self, q_len: int, k_len: int, start: int) -> torch.Tensor:
            device = self.table.weight.device
            q_pos = torch.arange(start, start + q_len, device=device)
            k_pos = torch.arange(k_len, device=device)
            buckets = t5_buckets(q_pos[:, None] - k_pos[None, :], self.n_buckets, self.max_distance)  # (q_len, k_len)
            return self.table(buckets).permute(2, 0, 1)  # (n_heads, q_len, k_len)

        def score_mod(self, q_len: int, k_len: int) -> ScoreMod:
            table, n_buckets, max_distance = self.table.weight, self.n_buckets, self.max_distance

            def t5(score, batch, head, q_pos, k_pos):
                return score + table[t5_buckets(q_pos - k_pos, n_buckets, max_distance), head]

            return t5

    return {"T5Bias": T5Bias, "t5_buckets": t5_buckets}


__getattr__ = torch_part(__name__, ENCODING, _make, ("T5Bias", "t5_buckets"))
