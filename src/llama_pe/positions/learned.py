"""learned: learned absolute position embeddings, as GPT-2; a table of train.context rows that cannot extrapolate."""

from __future__ import annotations

from typing import Any

from llama_pe.positions.catalogue import Encoding, torch_part

ENCODING = Encoding(
    "learned absolute positions, a table of train.context rows, as GPT-2", "Learned", rank=2, bounded=True
)


def _make() -> dict[str, Any]:
    import torch
    from torch import nn

    from llama_pe.core.model.args import ModelArgs
    from llama_pe.positions.base import PositionEncoding

    class Learned(PositionEncoding):
        """A learned table of train.context positions added to the token embeddings."""

        def __init__(self, args: ModelArgs) -> None:
            super().__init__(args)
            self.table = nn.Embedding(args.max_seq_len, args.dim)

        def embed(self, x: torch.Tensor, start: int) -> torch.Tensor:
            self.check_length(start + x.shape[1])
            return x + self.table(torch.arange(start, start + x.shape[1], device=x.device))

    return {"Learned": Learned}


__getattr__ = torch_part(__name__, ENCODING, _make, ("Learned",))
