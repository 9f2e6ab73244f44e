"""nope: no positions; the causal mask is the only source of order (Kazemnejad et al., arXiv 2305.19466)."""

from __future__ import annotations

from typing import Any

from llama_pe.positions.catalogue import Encoding, torch_part

ENCODING = Encoding(
    "no positions: the causal mask is the only order (Kazemnejad et al., arXiv 2305.19466)", "NoPositions", rank=5
)


def _make() -> dict[str, Any]:
    from llama_pe.positions.base import PositionEncoding

    class NoPositions(PositionEncoding):
        """NoPE: every method is the interface's no-op."""

    return {"NoPositions": NoPositions}


__getattr__ = torch_part(__name__, ENCODING, _make, ("NoPositions",))
