"""kerple: KERPLE's logarithmic kernel (Chi et al., arXiv 2205.09921): bias_h(i, j) = -r1_h log(1 + r2_h |i - j|)."""

from __future__ import annotations

from typing import Any

from llama_pe.positions.catalogue import Encoding, torch_part

ENCODING = Encoding(
    "KERPLE's logarithmic kernel, -r1 log(1 + r2 |i - j|), learned per head (Chi et al., arXiv 2205.09921)",
    "KerpleLog",
    rank=8,
    biased=True,
)


def _make() -> dict[str, Any]:
    import torch
    import torch.nn.functional as F
    from torch import nn

    from llama_pe.core.model.args import ModelArgs
    from llama_pe.core.model.flex import ScoreMod
    from llama_pe.positions.base import PositionEncoding

    def softplus_inverse(y: torch.Tensor) -> torch.Tensor:
        return y + torch.log(-torch.expm1(-y))  # log(exp(y) - 1), without overflow for large y

    class KerpleLog(PositionEncoding):
        """r1 and r2 are learned per query head and shared by every layer, as the paper's code
        (github.com/chijames/KERPLE, ParallelKerpleLog, one module handed to every layer) has them; it draws
        r1 ~ U(0, 2) and r2 ~ U(0, 1) and clamps both to at least 0.01 in place. Here they are positive by
        construction instead: each is 0.01 + softplus of a free parameter, which starts where the paper's draws put
        them.
        """

        EPS = 1e-2  # the paper's floor on r1 and r2

        def __init__(self, args: ModelArgs) -> None:
            super().__init__(args)
            r1 = (torch.rand(args.n_heads) * 2).clamp(min=2 * self.EPS)  # (n_heads,), the paper's init
            r2 = torch.rand(args.n_heads).clamp(min=2 * self.EPS)
            self.r1_free = nn.Parameter(softplus_inverse(r1 - self.EPS))
            self.r2_free = nn.Parameter(softplus_inverse(r2 - self.EPS))

        def kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
            """(r1, r2), each (n_heads,) and above 0.01."""
            return self.EPS + F.softplus(self.r1_free), self.EPS + F.softplus(self.r2_free)

        def attn_bias(self, q_len: int, k_len: int, start: int) -> torch.Tensor:
            r1, r2 = self.kernel()
            q_pos = torch.arange(start, start + q_len, device=r1.device)
            k_pos = torch.arange(k_len, device=r1.device)
            distance = (q_pos[:, None] - k_pos[None, :]).clamp(min=0).float()  # (q_len, k_len); future is masked
            return -r1[:, None, None] * torch.log1p(r2[:, None, None] * distance)  # (n_heads, q_len, k_len)

        def score_mod(self, q_len: int, k_len: int) -> ScoreMod:
            r1, r2 = self.kernel()

            def kerple(score, batch, head, q_pos, k_pos):
                return score - r1[head] * torch.log1p(r2[head] * (q_pos - k_pos))  # the future is masked

            return kerple

    return {"KerpleLog": KerpleLog}


__getattr__ = torch_part(__name__, ENCODING, _make, ("KerpleLog",))
