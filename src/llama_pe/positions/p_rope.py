"""p_rope: p-RoPE (Barbero et al., arXiv 2410.06205), rotary positions on the highest-frequency pairs only."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llama_pe.errors import ConfigError
from llama_pe.positions.catalogue import Encoding, Setting, check, torch_part
from llama_pe.positions.rope import ROPE_THETA, rotary_rules


def p_rope_rules(settings: Mapping[str, Any], head_dim: int) -> None:
    rotary_rules(settings, head_dim)
    fraction = settings["rope_fraction"]
    check(0 < fraction <= 1, "rope_fraction", "a fraction in (0, 1] of the frequency pairs (0 is nope)", fraction)
    if head_dim % 2 == 0 and round(fraction * head_dim / 2) < 1:
        raise ConfigError(
            f"model.rope_fraction: {fraction} of the {head_dim // 2} frequency pairs of a {head_dim}-dimensional "
            f"head rotates none; use at least {1 / (head_dim / 2):.3g}"
        )


ENCODING = Encoding(
    "p-RoPE: rotary positions on the highest-frequency fraction of the pairs only (Barbero et al., arXiv 2410.06205)",
    "PartialRotary",
    rank=9,
    rotary=True,
    settings={
        "rope_theta": ROPE_THETA,
        "rope_fraction": Setting(0.75, "the highest-frequency fraction of the pairs that rotates; the rest: none"),
    },
    validate=p_rope_rules,
)


def _make() -> dict[str, Any]:
    import torch

    from llama_pe.core.model.args import ModelArgs
    from llama_pe.positions.rope import Rotary

    class PartialRotary(Rotary):
        """Rotary positions on the highest-frequency fraction model.rope_fraction of the pairs; the lowest
        frequencies are set to zero, so those dimensions carry no position and are free for semantic matching.
        RoPE scaling applies as to rope, to the frequencies that rotate."""

        def __init__(self, args: ModelArgs) -> None:
            super().__init__(args)
            pairs = args.head_dim // 2
            rotating = round(args.encoding["rope_fraction"] * pairs)  # the frequencies fall with the index
            self.register_buffer("rotates", torch.arange(pairs) < rotating, persistent=False)  # (head_dim / 2,)

        def frequencies(self, seq_len: int) -> tuple[torch.Tensor, float]:
            inv_freq, attention_factor = super().frequencies(seq_len)
            return inv_freq * self.rotates.to(inv_freq.device), attention_factor

    return {"PartialRotary": PartialRotary}


__getattr__ = torch_part(__name__, ENCODING, _make, ("PartialRotary",))
