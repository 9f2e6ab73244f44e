"""fire: FIRE (Li et al., arXiv 2310.04418), a learned function of the normalised distance."""

from __future__ import annotations

from typing import Any

from llama_pe.positions.catalogue import Encoding, torch_part

ENCODING = Encoding(
    "FIRE, a learned function of the normalised distance (Li et al., arXiv 2310.04418)", "FIRE", rank=7, biased=True
)

FIRE_WIDTH = 32  # the paper's MLP: one hidden layer of 32 units


def _make() -> dict[str, Any]:
    import torch
    from torch import nn

    from llama_pe.core.model.args import ModelArgs
    from llama_pe.core.model.flex import ScoreMod
    from llama_pe.positions.base import PositionEncoding

    class FIRE(PositionEncoding):
        """bias_h(i, j) = f(psi(i - j) / psi(max(i, L)))_h with psi(x) = log(c x + 1), f a small MLP shared by every
        layer (one output per head), c and the threshold L learned.

        Normalising by the query's position keeps the MLP's input in [0, 1] at any length ("progressive
        interpolation"). L starts at train.context, so past the training length the input stays within what training
        saw (the paper's 512 suits its 2048-token training). The code follows the paper's listing (its appendix).
        """

        def __init__(self, args: ModelArgs) -> None:
            super().__init__(args)
            self.mlp = nn.Sequential(nn.Linear(1, FIRE_WIDTH), nn.ReLU(), nn.Linear(FIRE_WIDTH, args.n_heads))
            self.c = nn.Parameter(torch.tensor(0.1))  # the paper's init
            self.register_buffer("initial_threshold", torch.tensor(float(args.max_seq_len)), persistent=False)
            self.threshold_scale = nn.Parameter(torch.tensor(1.0))  # L = |threshold_scale * initial_threshold|

        def attn_bias(self, q_len: int, k_len: int, start: int) -> torch.Tensor:
            device = self.c.device
            q_pos = torch.arange(start, start + q_len, device=device, dtype=torch.float32)
            k_pos = torch.arange(k_len, device=device, dtype=torch.float32)
            distance = (q_pos[:, None] - k_pos[None, :]).clamp(min=0)  # (q_len, k_len); the future is masked
            threshold = (self.threshold_scale * self.initial_threshold).abs()
            normaliser = torch.log(torch.abs(self.c * torch.maximum(q_pos, threshold)) + 1) + 1e-6  # (q_len,)
            normalised = torch.log(torch.abs(self.c * distance) + 1) / normaliser[:, None]
            return self.mlp(normalised[..., None]).permute(2, 0, 1)  # (n_heads, q_len, k_len)

        def score_mod(self, q_len: int, k_len: int) -> ScoreMod:
            # An MLP per score is no work for a kernel: the (n_heads, q_len, k_len) table is made once and read there.
            bias, offset = self.attn_bias(q_len, k_len, start=k_len - q_len), k_len - q_len

            def fire(score, batch, head, q_pos, k_pos):
                return score + bias[head, q_pos - offset, k_pos]

            return fire

    return {"FIRE": FIRE}


__getattr__ = torch_part(__name__, ENCODING, _make, ("FIRE",))
