"""Model hyper-parameters: a frozen ModelArgs, the config's Architecture plus what the model needs besides."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from llama_pe.errors import ConfigError
from llama_pe.positions.catalogue import complete_settings, settings_of_every_encoding, validate_encoding
from llama_pe.settings.architecture import SIZES, Architecture
from llama_pe.settings.config import ModelConfig

__all__ = ["SIZES", "ModelArgs", "model_args_from_config"]


@dataclass(frozen=True, kw_only=True)
class ModelArgs(Architecture):
    vocab_size: int
    max_seq_len: int  # the training context; only a bounded encoding (a learned table) is held to it
    pos: str = "rope"
    impl: str = "native"
    # The settings model.pos owns (llama_pe.positions.catalogue), each one it leaves out at its default.
    encoding: Mapping[str, Any] = field(default_factory=dict)
    multiple_of: int = 64
    norm_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("vocab_size", "max_seq_len", "multiple_of"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name}: expected a positive integer, got {getattr(self, name)}")
        own = complete_settings(self.pos, self.encoding)
        validate_encoding(self.pos, own, self.head_dim, self.impl)
        object.__setattr__(self, "encoding", own)  # frozen: the completed settings, as a checkpoint stores them

    @property
    def hidden_dim(self) -> int:
        if self.ffn_hidden is not None:
            return self.ffn_hidden
        hidden = int(2 * 4 * self.dim / 3)  # SwiGLU's three matrices cost what a 4*dim two-matrix MLP does
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    def replace(self, **changes) -> ModelArgs:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any]) -> ModelArgs:
        """The args a checkpoint stores; one written before the encodings' settings were grouped had them flat."""
        saved = dict(saved)
        if "encoding" not in saved:
            flat = {key: saved.pop(key) for key in settings_of_every_encoding() if key in saved}
            own = complete_settings(saved.get("pos", "rope"), {})
            saved["encoding"] = {key: flat.get(key, default) for key, default in own.items()}
        return cls(**saved)


def model_args_from_config(cfg: ModelConfig, vocab_size: int, context: int) -> ModelArgs:
    """The preset named by model.size, with every non-null override from params.yaml applied."""
    return ModelArgs(
        **dataclasses.asdict(cfg.architecture),
        vocab_size=vocab_size,
        max_seq_len=context,
        pos=cfg.pos,
        impl=cfg.impl,
        encoding=cfg.encoding_settings,
    )
