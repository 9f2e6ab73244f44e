"""rope: rotary positions, RoPE (Su et al., arXiv 2104.09864), in the rotate-half layout of Hugging Face's Llama."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llama_pe.errors import ConfigError
from llama_pe.positions.catalogue import Encoding, Setting, check, torch_part

ROPE_THETA = Setting(10000.0, "base of the rotary frequencies")


def rotary_rules(settings: Mapping[str, Any], head_dim: int) -> None:
    check(settings["rope_theta"] > 0, "rope_theta", "a positive number", settings["rope_theta"])
    if head_dim % 2:
        raise ConfigError(
            f"model.pos: rotary positions rotate pairs of dimensions, so the head dimension must be even; "
            f"model.dim / model.n_heads = {head_dim}"
        )


ENCODING = Encoding(
    "rotary positions, RoPE (Su et al., arXiv 2104.09864)",
    "Rotary",
    rank=0,
    rotary=True,
    hf_exportable=True,
    settings={"rope_theta": ROPE_THETA},
    validate=rotary_rules,
)


def _make() -> dict[str, Any]:
    import torch

    from llama_pe.core.model.args import ModelArgs
    from llama_pe.core.model.rope_scaling import RopeScaling, base_frequencies, scaled_frequencies
    from llama_pe.positions.base import PositionEncoding

    def rotate_half(x: torch.Tensor) -> torch.Tensor:
        first, second = x.chunk(2, dim=-1)
        return torch.cat((-second, first), dim=-1)

    class Rotary(PositionEncoding):
        """RoPE in the rotate-half layout that Hugging Face's Llama uses."""

        def __init__(self, args: ModelArgs) -> None:
            super().__init__(args)
            self.theta, self.head_dim = args.encoding["rope_theta"], args.head_dim
            inv_freq = base_frequencies(self.theta, args.head_dim)
            self.register_buffer("inv_freq", inv_freq, persistent=False)  # (head_dim / 2,)
            self.scaling: RopeScaling | None = None  # context extension at evaluation (scaled_rope), never in training

        def rotate(self, q: torch.Tensor, k: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
            inv_freq, attention_factor = self.frequencies(start + k.shape[-2])
            positions = torch.arange(start, start + k.shape[-2], device=q.device, dtype=torch.float32)
            angles = torch.outer(positions, inv_freq.to(q.device))  # (S, head_dim / 2)
            angles = torch.cat((angles, angles), dim=-1)  # (S, head_dim): dims i and i + head_dim/2 form a pair
            cos, sin = (angles.cos() * attention_factor).to(q.dtype), (angles.sin() * attention_factor).to(q.dtype)
            q_cos, q_sin = cos[-q.shape[-2] :], sin[-q.shape[-2] :]  # queries: the last T positions
            return q * q_cos + rotate_half(q) * q_sin, k * cos + rotate_half(k) * sin

        def frequencies(self, seq_len: int) -> tuple[torch.Tensor, float]:
            """The inverse frequencies for a sequence of seq_len positions and the factor on cos and sin."""
            if self.scaling is None:
                return self.inv_freq, 1.0
            return scaled_frequencies(self.theta, self.head_dim, self.scaling, seq_len)

    return {"Rotary": Rotary}


__getattr__ = torch_part(__name__, ENCODING, _make, ("Rotary",))
