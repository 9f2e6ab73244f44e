"""What every encoding's class is: one small interface, and the build of the class that model.pos names.

Each encoding may add to the token embeddings (`embed`), rotate queries and keys (`rotate`) and add a bias to
the attention logits (`attn_bias`); all three are no-ops by default, so attention never asks which one it has.
Positions are absolute: `start` is the position of the first token, which is the KV-cache length when decoding.

A class is checked against its entry when it is first built (a rotary entry is a Rotary, a biased one gives its
bias to FlexAttention too), so a class that is not what its entry says fails on any machine.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from llama_pe.errors import ConfigError, ContextLengthError
from llama_pe.positions.catalogue import PACKAGE, Encoding, encoding
from llama_pe.positions.rope_scaling import RopeScaling

if TYPE_CHECKING:  # the model's modules import this one
    from llama_pe.core.model.args import ModelArgs
    from llama_pe.core.model.flex import ScoreMod


class PositionEncoding(nn.Module):
    # Set when the class is first built, from its file's ENCODING: the encoding's name and what it is.
    name: str
    spec: Encoding

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        # Longest sequence the encoding can place: train.context for a bounded one (a learned table), else any.
        self.max_positions: int | None = args.max_seq_len if self.spec.bounded else None

    def embed(self, x: torch.Tensor, start: int) -> torch.Tensor:  # x: (B, T, dim)
        return x

    def rotate(self, q: torch.Tensor, k: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        # k: (B, n_kv_heads, S, head_dim) at positions start .. start + S - 1; q: (B, n_heads, T, head_dim) at the
        # last T of them (T = S but when a model wants the last layer's outputs at a few positions only)
        return q, k

    def attn_bias(self, q_len: int, k_len: int, start: int) -> torch.Tensor | None:
        return None  # else (n_heads, q_len, k_len), added to the logits before the softmax

    def score_mod(self, q_len: int, k_len: int) -> ScoreMod | None:
        """attn_bias as FlexAttention's score_mod(score, batch, head, q_pos, k_pos), for its fused kernel on a GPU;
        q_pos and k_pos are absolute positions, the queries being the last q_len of the k_len keys."""
        return None

    def check_length(self, end: int) -> None:
        if self.max_positions is not None and end > self.max_positions:
            raise ContextLengthError(
                f"model.pos={self.name}: position {end - 1} is past the {self.max_positions} positions it can place "
                f"(train.context; {self.spec.summary}), so it cannot extrapolate to {end} tokens"
            )


@contextlib.contextmanager
def scaled_rope(positions: PositionEncoding, scaling: RopeScaling) -> Iterator[None]:
    """Evaluate a rotary model with its frequencies stretched by `scaling` (positions/rope_scaling.py) inside."""
    if not positions.spec.rotary:
        raise ConfigError(
            f"eval.rope_scaling: {scaling.method} scales rotary positions; model.pos={positions.name} has none"
        )
    positions.scaling = scaling
    try:
        yield
    finally:
        positions.scaling = None


def checked_class(name: str, entry: Encoding, cls: object) -> type[PositionEncoding]:
    """`cls`, the class `name`'s file names, once it is checked to be what the entry says. A rotary class is one
    with `frequencies` (rope's Rotary and its subclasses): scaled_rope hands it the scaling those read."""
    if not (isinstance(cls, type) and issubclass(cls, PositionEncoding)):
        raise TypeError(f"{PACKAGE}.{name} names {entry.implementation!r}, which is no PositionEncoding there")
    rotary = callable(getattr(cls, "frequencies", None))
    if entry.rotary != rotary:
        has_or_not = "has" if rotary else "has no"
        raise TypeError(
            f"{PACKAGE}.{name}: ENCODING.rotary is {entry.rotary}, but {cls.__name__} {has_or_not} rotary "
            f"frequencies: RoPE scaling would treat it wrongly"
        )
    overrides = [getattr(cls, method) is not getattr(PositionEncoding, method) for method in ("attn_bias", "score_mod")]
    if entry.biased and not all(overrides):
        raise TypeError(
            f"{PACKAGE}.{name} is biased, so {cls.__name__} must define both attn_bias and score_mod "
            f"(FlexAttention adds the bias through score_mod on a GPU)"
        )
    if not entry.biased and any(overrides):
        raise TypeError(f"{cls.__name__} adds an attention bias, so {PACKAGE}.{name} must say biased=True")
    if cls.__dict__.get("name", name) != name:
        raise TypeError(f"{cls.__name__} is the class of two encodings, {cls.name!r} and {name!r}")
    cls.name, cls.spec = name, entry
    return cls


@functools.cache
def position_class(name: str) -> type[PositionEncoding]:
    """The class of encoding `name`, from its file, checked against its entry."""
    entry = encoding(name)
    return checked_class(name, entry, getattr(importlib.import_module(f"{PACKAGE}.{name}"), entry.implementation))


def build_position_encoding(args: ModelArgs) -> PositionEncoding:
    return position_class(args.pos)(args)
