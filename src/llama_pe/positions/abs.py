"""abs: fixed sinusoidal absolute positions added to the token embeddings (Vaswani et al., arXiv 1706.03762)."""

from __future__ import annotations

from typing import Any

from llama_pe.positions.catalogue import Encoding, torch_part

ENCODING = Encoding(
    "fixed sinusoidal absolute positions added to the embeddings (arXiv 1706.03762)", "Sinusoidal", rank=1
)


def _make() -> dict[str, Any]:
    import math

    import torch

    from llama_pe.core.model.args import ModelArgs
    from llama_pe.positions.base import PositionEncoding

    def sinusoids(positions: torch.Tensor, dim: int) -> torch.Tensor:
        """Vaswani et al.'s table: sin on even, cos on odd dimensions, wavelengths from 2*pi to 10000*2*pi."""
        freqs = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # (ceil(dim/2),)
        angles = torch.outer(positions.float(), freqs)  # (T, ceil(dim/2))
        table = torch.zeros(positions.numel(), dim)
        table[:, 0::2] = angles.sin()
        table[:, 1::2] = angles.cos()[:, : dim // 2]
        return table  # (T, dim)

    class Sinusoidal(PositionEncoding):
        """Fixed sinusoidal absolute positions added to the token embeddings."""

        def __init__(self, args: ModelArgs) -> None:
            super().__init__(args)
            self.dim = args.dim
            # Scaled to the RMS of the embedding init (init_std), like the learned table, so that at init position
            # neither drowns the token signal (an unscaled table is 35x larger than 0.02-std embeddings).
            self.scale = args.init_std * math.sqrt(2.0)

        def embed(self, x: torch.Tensor, start: int) -> torch.Tensor:
            positions = torch.arange(start, start + x.shape[1], device=x.device)
            return x + (self.scale * sinusoids(positions, self.dim)).to(device=x.device, dtype=x.dtype)

    return {"Sinusoidal": Sinusoidal, "sinusoids": sinusoids}


__getattr__ = torch_part(__name__, ENCODING, _make, ("Sinusoidal", "sinusoids"))
