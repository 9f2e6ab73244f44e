"""Model hyper-parameters: a frozen ModelArgs and a dict of named sizes, each field overridable from params."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from llama_pe.config import ModelConfig
from llama_pe.errors import ConfigError

# Fields a preset sets and params.yaml may override (model.<field>: null keeps the preset's value).
SIZES: dict[str, dict] = {
    # Tests and CI: trains in seconds.
    "tiny": dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=None, dropout=0.0, tie_embeddings=True),
    # The CPU default: about 3.1M parameters with an 8192 vocabulary; ~0.7 s per 2048-token step on 2 cores.
    "small": dict(dim=192, n_layers=4, n_heads=6, n_kv_heads=2, ffn_hidden=None, dropout=0.1, tie_embeddings=True),
    # A GPU size: about 12.6M parameters with an 8192 vocabulary.
    "base": dict(dim=384, n_layers=6, n_heads=12, n_kv_heads=4, ffn_hidden=None, dropout=0.1, tie_embeddings=True),
    # The original study: d_model 512, 8 layers, 16 query / 8 kv heads, SwiGLU 1536, untied: 33.6M parameters.
    "seed33m": dict(dim=512, n_layers=8, n_heads=16, n_kv_heads=8, ffn_hidden=1536, dropout=0.1, tie_embeddings=False),
}


@dataclass(frozen=True)
class ModelArgs:
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    max_seq_len: int  # the training context; only a learned position table is bound by it
    ffn_hidden: int | None = None  # None: LLaMA's rule, 2/3 of 4*dim rounded up to multiple_of
    multiple_of: int = 64
    dropout: float = 0.0
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    init_std: float = 0.02
    pos: str = "rope"
    rope_theta: float = 10000.0
    alibi_learnable: bool = False
    impl: str = "native"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "max_seq_len", "multiple_of"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name}: expected a positive integer, got {getattr(self, name)}")
        if self.dim % self.n_heads:
            raise ConfigError(f"model.dim: {self.dim} is not divisible by model.n_heads={self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"model.n_heads: {self.n_heads} is not a multiple of model.n_kv_heads={self.n_kv_heads} "
                f"(grouped-query attention shares each kv head among n_heads / n_kv_heads query heads)"
            )
        if self.pos == "rope" and self.head_dim % 2:
            raise ConfigError(
                f"model.pos=rope rotates pairs of dimensions, so the head dimension must be even; "
                f"model.dim / model.n_heads = {self.dim} / {self.n_heads} = {self.head_dim}"
            )
        if self.ffn_hidden is not None and self.ffn_hidden < 1:
            raise ConfigError(f"model.ffn_hidden: expected a positive integer or null, got {self.ffn_hidden}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout: expected a number in [0, 1), got {self.dropout}")
        if self.rope_theta <= 0:
            raise ConfigError(f"model.rope_theta: expected a positive number, got {self.rope_theta}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        hidden = int(2 * 4 * self.dim / 3)  # SwiGLU's three matrices cost what a 4*dim two-matrix MLP does
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    def replace(self, **changes) -> ModelArgs:
        return dataclasses.replace(self, **changes)


def model_args_from_config(cfg: ModelConfig, vocab_size: int, context: int) -> ModelArgs:
    """The preset named by model.size, with every non-null override from params.yaml applied."""
    if cfg.size not in SIZES:
        raise ConfigError(f"model.size: unknown size {cfg.size!r}; valid sizes: {', '.join(SIZES)}")
    sized = dict(SIZES[cfg.size])
    for name in sized:
        override = getattr(cfg, name)
        if override is not None:
            sized[name] = override
    return ModelArgs(
        vocab_size=vocab_size,
        max_seq_len=context,
        pos=cfg.pos,
        rope_theta=cfg.rope_theta,
        alibi_learnable=cfg.alibi_learnable,
        impl=cfg.impl,
        **sized,
    )
