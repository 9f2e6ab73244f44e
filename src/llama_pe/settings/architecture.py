"""A model's shape (Architecture) and the named sizes (SIZES) that params.yaml's model.size picks.

Three types describe one model, each at its own step, and the shape's fields and rules are written once:
- settings.config.ModelConfig is params.yaml's model section as written: a size's name, overrides that may be null,
  every encoding's keys at their defaults but its own. It is what DVC records and a study varies.
- Architecture is the shape that section resolves to, with its rules; a size preset is one.
- core.model.args.ModelArgs is an Architecture (a subclass) plus what only the run knows: the vocabulary (the
  tokenizer's), the training context, model.pos's own settings completed. It is what a checkpoint stores.
One type for all three would carry the nulls and the other encodings' keys into the model, or lose the size's name
from the params a run records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llama_pe.errors import ConfigError


def _require(ok: bool, key: str, expected: str, got: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: expected {expected}, got {got!r}")


@dataclass(frozen=True)
class Architecture:
    """A model's shape: what a size preset sets and a model.<field> override changes, with its rules."""

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_hidden: int | None = None  # None: LLaMA's rule, 2/3 of 4*dim rounded up to a multiple of 64
    dropout: float = 0.0
    tie_embeddings: bool = True

    def __post_init__(self) -> None:
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads"):
            _require(getattr(self, name) >= 1, f"model.{name}", "a positive integer", getattr(self, name))
        if self.dim % self.n_heads:
            raise ConfigError(f"model.dim: {self.dim} is not divisible by model.n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"model.n_heads: {self.n_heads} is not a multiple of model.n_kv_heads={self.n_kv_heads} "
                f"(grouped-query attention shares each kv head among n_heads / n_kv_heads query heads)"
            )
        positive_or_null = self.ffn_hidden is None or self.ffn_hidden >= 1
        _require(positive_or_null, "model.ffn_hidden", "a positive integer or null", self.ffn_hidden)
        _require(0 <= self.dropout < 1, "model.dropout", "a number in [0, 1)", self.dropout)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


# Named model sizes, every field overridable from params (model.<field>: null keeps the preset's).
SIZES: dict[str, Architecture] = {
    # Tests and CI: trains in seconds.
    "tiny": Architecture(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, dropout=0.0),
    # The CPU default: about 3.1M parameters with an 8192 vocabulary; ~0.7 s per 2048-token step on 2 cores.
    "small": Architecture(dim=192, n_layers=4, n_heads=6, n_kv_heads=2, dropout=0.1),
    # A GPU size: about 12.6M parameters with an 8192 vocabulary.
    "base": Architecture(dim=384, n_layers=6, n_heads=12, n_kv_heads=4, dropout=0.1),
    # The original study: d_model 512, 8 layers, 16 query / 8 kv heads, SwiGLU 1536, untied: 33.6M parameters.
    "seed33m": Architecture(
        dim=512, n_layers=8, n_heads=16, n_kv_heads=8, ffn_hidden=1536, dropout=0.1, tie_embeddings=False
    ),
}
