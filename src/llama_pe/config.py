"""Typed, frozen configs built strictly from params.yaml: unknown, missing or mistyped keys raise ConfigError."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from llama_pe.errors import ConfigError

__all__ = ["Config", "ConfigError", "load_config"]

# Token files are uint16 memmaps (as in nanoGPT), so no id may exceed 65,535.
MAX_VOCAB_SIZE = 65_535

SplitMode = Literal["contiguous", "random_chunks"]
TokenizerModelType = Literal["bpe", "unigram", "char", "word"]


@dataclass(frozen=True)
class DataConfig:
    url: str
    sha256: str
    split: SplitMode
    val_fraction: float
    test_fraction: float
    chunk_tokens: int
    split_seed: int

    def __post_init__(self) -> None:
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256.lower()):
            raise ConfigError(f"data.sha256: expected 64 hexadecimal digits, got {self.sha256!r}")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise ConfigError(f"data.{name}: expected a fraction strictly between 0 and 1, got {value}")
        if self.val_fraction + self.test_fraction >= 1:
            raise ConfigError(
                f"data.val_fraction + data.test_fraction: expected a sum below 1 so that training text remains, "
                f"got {self.val_fraction} + {self.test_fraction} = {self.val_fraction + self.test_fraction:g}"
            )
        if self.chunk_tokens < 1:
            raise ConfigError(f"data.chunk_tokens: expected a positive integer, got {self.chunk_tokens}")

    @property
    def train_fraction(self) -> float:
        # Rounded so that 1 - 0.05 - 0.05 cuts where nanoGPT's int(n * 0.9) does, not one character early.
        return round(1.0 - self.val_fraction - self.test_fraction, 12)


@dataclass(frozen=True)
class TokenizerConfig:
    model_type: TokenizerModelType
    vocab_size: int
    character_coverage: float
    byte_fallback: bool

    def __post_init__(self) -> None:
        if not 1 <= self.vocab_size <= MAX_VOCAB_SIZE:
            raise ConfigError(
                f"tokenizer.vocab_size: expected 1..{MAX_VOCAB_SIZE} (token files are uint16), got {self.vocab_size}"
            )
        if not 0 < self.character_coverage <= 1:
            raise ConfigError(
                f"tokenizer.character_coverage: expected a number in (0, 1], got {self.character_coverage}"
            )


@dataclass(frozen=True)
class ModelConfig:
    impl: Literal["native", "hf"]
    size: str  # a key of llama_pe.model.args.SIZES
    pos: str  # a key of llama_pe.model.position.POSITION_ENCODINGS
    rope_theta: float
    alibi_learnable: bool
    # Overrides of the size preset; null keeps the preset's value.
    dim: int | None
    n_layers: int | None
    n_heads: int | None
    n_kv_heads: int | None
    ffn_hidden: int | None
    dropout: float | None
    tie_embeddings: bool | None


@dataclass(frozen=True)
class TrainConfig:
    seed: int
    device: Literal["auto", "cpu", "cuda", "mps"]
    precision: Literal["auto", "fp32", "bf16", "fp16"]
    compile: bool
    context: int
    batch_size: int
    grad_accum: int
    max_steps: int | None
    max_tokens: int | None
    lr: float
    min_lr: float
    warmup_steps: int
    weight_decay: float
    beta1: float
    beta2: float
    grad_clip: float
    eval_interval: int
    eval_windows: int | None
    eval_batch_size: int
    patience: int | None

    def __post_init__(self) -> None:
        for name in ("context", "batch_size", "grad_accum", "eval_interval", "eval_batch_size"):
            _require(getattr(self, name) > 0, f"train.{name}", "a positive integer", getattr(self, name))
        _require(self.lr > 0, "train.lr", "a positive number", self.lr)
        _require(0 <= self.min_lr <= self.lr, "train.min_lr", f"a number in [0, train.lr={self.lr}]", self.min_lr)
        _require(self.warmup_steps >= 0, "train.warmup_steps", "0 or more", self.warmup_steps)
        _require(self.weight_decay >= 0, "train.weight_decay", "0 or more", self.weight_decay)
        _require(0 <= self.beta1 < 1, "train.beta1", "a number in [0, 1)", self.beta1)
        _require(0 <= self.beta2 < 1, "train.beta2", "a number in [0, 1)", self.beta2)
        _require(self.grad_clip >= 0, "train.grad_clip", "0 (off) or a positive number", self.grad_clip)
        _require(
            (self.max_steps is None) != (self.max_tokens is None),
            "train.max_steps / train.max_tokens",
            "exactly one budget (set the other to null)",
            (self.max_steps, self.max_tokens),
        )
        for name in ("max_steps", "max_tokens", "eval_windows", "patience"):
            value = getattr(self, name)
            _require(value is None or value > 0, f"train.{name}", "a positive integer or null", value)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.grad_accum * self.context

    @property
    def total_steps(self) -> int:
        if self.max_steps is not None:
            return self.max_steps
        return -(-self.max_tokens // self.tokens_per_step)  # ceil: the budget is at least max_tokens


def _require(ok: bool, key: str, expected: str, got: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: expected {expected}, got {got!r}")


@dataclass(frozen=True)
class EvalConfig:
    contexts: tuple[float, ...]  # multiples of train.context for the extrapolation curve
    stride: int  # sliding-window mode: each window scores only its last `stride` tokens
    batch_size: int
    sample_prompts: tuple[str, ...]
    sample_tokens: int
    temperature: float
    top_k: int | None
    seed: int

    def __post_init__(self) -> None:
        _require(len(self.contexts) > 0, "eval.contexts", "a non-empty list of multiples of train.context", [])
        for multiple in self.contexts:
            _require(multiple > 0, "eval.contexts", "positive multiples of train.context", list(self.contexts))
        _require(self.stride > 0, "eval.stride", "a positive number of tokens", self.stride)
        _require(self.batch_size > 0, "eval.batch_size", "a positive integer", self.batch_size)
        _require(self.sample_tokens >= 0, "eval.sample_tokens", "0 or more", self.sample_tokens)
        _require(self.temperature >= 0, "eval.temperature", "0 (greedy) or more", self.temperature)
        _require(self.top_k is None or self.top_k > 0, "eval.top_k", "a positive integer or null", self.top_k)
        _require(all(self.sample_prompts), "eval.sample_prompts", "non-empty strings", list(self.sample_prompts))


@dataclass(frozen=True)
class Config:
    data: DataConfig
    tokenizer: TokenizerConfig
    model: ModelConfig
    train: TrainConfig
    eval: EvalConfig

    def __post_init__(self) -> None:
        shortest = min(self.eval_contexts)
        _require(self.eval.stride <= shortest, "eval.stride",
                 f"at most the shortest evaluation context, {shortest} tokens", self.eval.stride)  # fmt: skip

    @property
    def eval_contexts(self) -> tuple[int, ...]:
        """The extrapolation contexts in tokens: eval.contexts times train.context, at least one token."""
        return tuple(max(1, round(multiple * self.train.context)) for multiple in self.eval.contexts)


def load_config(path: str | Path = "params.yaml") -> Config:
    """Read params.yaml into a Config; every problem is reported as a ConfigError naming the key."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return config_from_dict(raw)


def config_from_dict(raw: Any) -> Config:
    return _build_dataclass(Config, raw, "")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _build_dataclass(cls: type, raw: Any, where: str) -> Any:
    if raw is None and not any(_is_required(f) for f in dataclasses.fields(cls)):
        raw = {}  # an empty YAML section (`eval:`) reads as None
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'params'}: expected a mapping of settings, got {raw!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in known:
            valid = ", ".join(known) or "none"
            raise ConfigError(f"{_join(where, str(key))}: unknown setting; valid keys here: {valid}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, spec in known.items():
        key = _join(where, name)
        if name not in raw:
            if _is_required(spec):
                raise ConfigError(f"{key}: missing required setting")
            continue
        values[name] = _convert(hints[name], raw[name], key)
    return cls(**values)


def _is_required(spec: dataclasses.Field) -> bool:
    return spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING


def _convert(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build_dataclass(hint, value, key)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        (inner,) = [option for option in options if option is not type(None)]
        return _convert(inner, value, key)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{key}: expected one of {', '.join(map(str, choices))}; got {value!r}")
        return value
    if origin is tuple:
        (inner, _ellipsis) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_convert(inner, item, f"{key}[{i}]") for i, item in enumerate(value))
    # bool is a subclass of int in Python, so it is checked first and excluded from the numbers.
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{key}: config field has an unsupported type {hint!r}")  # a bug here, not user input
