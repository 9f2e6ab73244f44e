"""Model hyper-parameters: a frozen ModelArgs and a dict of named sizes, each field overridable from params."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from llama_pe.config import SIZES, ModelConfig, check_architecture
from llama_pe.errors import ConfigError

__all__ = ["SIZES", "ModelArgs", "model_args_from_config"]


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
    t5_buckets: int = 32
    t5_max_distance: int = 128
    impl: str = "native"

    def __post_init__(self) -> None:
        _positive = ("vocab_size", "max_seq_len", "multiple_of")
        for name in _positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name}: expected a positive integer, got {getattr(self, name)}")
        check_architecture(
            dim=self.dim,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads,
            ffn_hidden=self.ffn_hidden,
            dropout=self.dropout,
            tie_embeddings=self.tie_embeddings,
            pos=self.pos,
            impl=self.impl,
            rope_theta=self.rope_theta,
            alibi_learnable=self.alibi_learnable,
            t5_buckets=self.t5_buckets,
            t5_max_distance=self.t5_max_distance,
        )

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
    sized = cfg.sized()
    return ModelArgs(
        vocab_size=vocab_size,
        max_seq_len=context,
        pos=cfg.pos,
        rope_theta=cfg.rope_theta,
        alibi_learnable=cfg.alibi_learnable,
        t5_buckets=cfg.t5_buckets,
        t5_max_distance=cfg.t5_max_distance,
        impl=cfg.impl,
        **sized,
    )
