"""abs_rel: sinusoidal absolute positions plus the ALiBi bias, the original study's "absolute + relative"."""

from __future__ import annotations

import dataclasses
from typing import Any

from llama_pe.positions import alibi
from llama_pe.positions.catalogue import torch_part

# alibi's entry (its bias, its key model.alibi_learnable), as another encoding.
ENCODING = dataclasses.replace(
    alibi.ENCODING,
    summary="sinusoidal absolute positions plus the ALiBi bias (the original study's absolute + relative)",
    implementation="AbsoluteRelative",
    rank=4,
)


def _make() -> dict[str, Any]:
    import torch

    from llama_pe.core.model.args import ModelArgs
    from llama_pe.core.model.flex import ScoreMod
    from llama_pe.positions.abs import Sinusoidal
    from llama_pe.positions.alibi import ALiBi
    from llama_pe.positions.base import PositionEncoding

    class AbsoluteRelative(PositionEncoding):
        """abs's embedding and alibi's bias, each computed by its own class."""

        def __init__(self, args: ModelArgs) -> None:
            super().__init__(args)
            self.absolute = Sinusoidal(args)
            self.relative = ALiBi(args)

        def embed(self, x: torch.Tensor, start: int) -> torch.Tensor:
            return self.absolute.embed(x, start)

        def attn_bias(self, q_len: int, k_len: int, start: int) -> torch.Tensor:
            return self.relative.attn_bias(q_len, k_len, start)

        def score_mod(self, q_len: int, k_len: int) -> ScoreMod:
            return self.relative.score_mod(q_len, k_len)

    return {"AbsoluteRelative": AbsoluteRelative}


__getattr__ = torch_part(__name__, ENCODING, _make, ("AbsoluteRelative",))
