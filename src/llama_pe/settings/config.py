"""Typed, frozen configs built strictly from params.yaml: unknown, missing or mistyped keys raise ConfigError."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from llama_pe.errors import ConfigError
from llama_pe.positions.catalogue import check_encoding_settings, encoding, settings_of_every_encoding
from llama_pe.positions.rope_scaling import ROPE_SCALING_METHODS
from llama_pe.settings.architecture import SIZES, Architecture, _require
from llama_pe.settings.yaml12 import YAMLError, load_yaml

__all__ = ["Config", "ConfigError", "load_config"]

# Token files are uint16 memmaps (as in nanoGPT), so no id may exceed 65,535.
MAX_VOCAB_SIZE = 65_535

SplitMode = Literal["contiguous", "random_chunks"]
TokenizerModelType = Literal["bpe", "unigram", "char"]
# SentencePiece model types that are refused, with the reason a user reads.
REFUSED_TOKENIZER_TYPES = {
    "word": "SentencePiece's word model does not give back the text it encodes (decode(encode(text)) != text: a "
    "word without a piece of its own is spelt in bytes, and the space before it comes back as ▁), and this project "
    "needs a lossless tokenizer",
}
RopeScalingName = Literal[tuple(ROPE_SCALING_METHODS)]  # the registry's names, for the checks of eval.rope_scaling


@dataclass(frozen=True)
class DataConfig:
    url: str
    sha256: str
    split: SplitMode
    val_fraction: float
    test_fraction: float
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

    @property
    def train_fraction(self) -> float:
        # Rounded so that 1 - 0.05 - 0.05 cuts where nanoGPT's int(n * 0.9) does, not one character early.
        return round(1.0 - self.val_fraction - self.test_fraction, 12)


@dataclass(frozen=True)
class TokenizerConfig:
    model_type: str  # a TokenizerModelType, read as a string so that a refused type can be told why
    vocab_size: int
    character_coverage: float
    byte_fallback: bool

    def __post_init__(self) -> None:
        valid = typing.get_args(TokenizerModelType)
        if self.model_type in REFUSED_TOKENIZER_TYPES:
            raise ConfigError(
                f"tokenizer.model_type: {self.model_type} is refused: {REFUSED_TOKENIZER_TYPES[self.model_type]}; "
                f"use {', '.join(valid[:-1])} or {valid[-1]}"
            )
        if self.model_type not in valid:
            raise ConfigError(f"tokenizer.model_type: expected one of {', '.join(valid)}; got {self.model_type!r}")
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
    size: str  # a key of SIZES
    pos: str  # a key of llama_pe.positions.catalogue.ENCODINGS
    overrides: Mapping[str, Any]  # model.<Architecture field>; null keeps the preset's value
    encoding_values: Mapping[str, Any]  # every encoding's own keys (model.rope_theta, ...), as params.yaml sets them

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise ConfigError(f"model.size: unknown size {self.size!r}; valid sizes: {', '.join(SIZES)}")
        self.encoding_settings  # noqa: B018 (checks the encoding's keys, and the architecture before them)

    @property
    def architecture(self) -> Architecture:
        """The preset that model.size names, with every non-null override applied (and checked)."""
        changes = {name: value for name, value in self.overrides.items() if value is not None}
        return dataclasses.replace(SIZES[self.size], **changes)

    @property
    def encoding_settings(self) -> dict[str, Any]:
        """The keys that model.pos owns, checked by its rules (a key it does not use must keep its default)."""
        return check_encoding_settings(self.pos, self.encoding_values, self.architecture.head_dim, self.impl)

    def params(self) -> dict[str, Any]:
        """The section as params.yaml spells it: model.pos, model.dim, model.rope_theta, ..."""
        return {"impl": self.impl, "size": self.size, "pos": self.pos, **self.encoding_values, **self.overrides}

    @classmethod
    def from_params(cls, raw: Any, where: str) -> ModelConfig:
        """Strictly, as every section: each of params.yaml's model keys is required and typed."""
        settings = settings_of_every_encoding()
        shape = typing.get_type_hints(Architecture)
        hints: dict[str, Any] = {"impl": Literal["native", "hf"], "size": str, "pos": str}
        hints |= {name: type(setting.default) for name, setting in settings.items()}
        hints |= {spec.name: shape[spec.name] | None for spec in dataclasses.fields(Architecture)}
        values = _read_section(hints, raw, where)
        encoding(values["pos"])  # an unknown name: the error that lists the valid ones
        return cls(
            impl=values["impl"],
            size=values["size"],
            pos=values["pos"],
            overrides={spec.name: values[spec.name] for spec in dataclasses.fields(Architecture)},
            encoding_values={name: values[name] for name in settings},
        )


@dataclass(frozen=True)
class TrainConfig:
    seed: int
    device: Literal["auto", "cpu", "cuda", "mps"]
    precision: Literal["auto", "fp32", "bf16", "fp16"]
    compile: bool
    nproc: int
    context: int
    batch_size: int
    grad_accum: int
    max_steps: int | None
    max_tokens: int | None
    lr: float
    pos_lr_scale: float  # the position encoding's own parameters learn at pos_lr_scale * the scheduled lr
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
        for name in ("nproc", "context", "batch_size", "grad_accum", "eval_interval", "eval_batch_size"):
            _require(getattr(self, name) > 0, f"train.{name}", "a positive integer", getattr(self, name))
        _require(
            self.batch_size % self.nproc == 0,
            "train.batch_size",
            f"a multiple of train.nproc={self.nproc} (the global batch is split evenly between the processes)",
            self.batch_size,
        )
        _require(self.lr > 0, "train.lr", "a positive number", self.lr)
        _require(self.pos_lr_scale > 0, "train.pos_lr_scale", "a positive number (1: train.lr)", self.pos_lr_scale)
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


@dataclass(frozen=True)
class EvalConfig:
    contexts: tuple[float, ...]  # multiples of train.context for the extrapolation curve
    stride: int | None  # sliding-window mode: each window scores only its last `stride` tokens; None follows
    batch_size: int
    sample_prompts: tuple[str, ...]
    sample_tokens: int
    temperature: float
    top_k: int | None
    seed: int
    rope_scaling: tuple[RopeScalingName, ...]  # RoPE context extension methods scored past train.context

    def __post_init__(self) -> None:
        _require(
            len(set(self.rope_scaling)) == len(self.rope_scaling),
            "eval.rope_scaling",
            "each method once",
            list(self.rope_scaling),
        )
        _require(len(self.contexts) > 0, "eval.contexts", "a non-empty list of multiples of train.context", [])
        for multiple in self.contexts:
            _require(multiple > 0, "eval.contexts", "positive multiples of train.context", list(self.contexts))
        _require(
            self.stride is None or self.stride > 0, "eval.stride", "a positive number of tokens or null", self.stride
        )
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
        if self.eval.stride is not None:
            _require(
                self.eval.stride <= shortest,
                "eval.stride",
                f"at most the shortest evaluation context, {shortest} tokens (or null to follow train.context)",
                self.eval.stride,
            )

    @property
    def eval_contexts(self) -> tuple[int, ...]:
        """The extrapolation contexts in tokens: eval.contexts times train.context, at least one token."""
        return tuple(max(1, round(multiple * self.train.context)) for multiple in self.eval.contexts)

    @property
    def eval_stride(self) -> int:
        """eval.stride, or when null half the training context, kept within the shortest evaluation context."""
        if self.eval.stride is not None:
            return self.eval.stride
        return max(1, min(self.train.context // 2, min(self.eval_contexts)))

    @property
    def chunk_tokens(self) -> int | None:
        """data.split=random_chunks: tokens per chunk, one training or evaluation sample each (inputs + 1 target)."""
        return self.train.context + 1 if self.data.split == "random_chunks" else None

    def check_split_lengths(self, split_tokens: dict[str, int]) -> None:
        """The checks that need the data: the training and evaluation contexts against the token counts."""
        for name, n_tokens in split_tokens.items():
            if n_tokens < self.train.context + 1:
                raise ConfigError(
                    f"train.context: {self.train.context} tokens do not fit the {name} split, which has {n_tokens} "
                    f"tokens; use a context of at most {n_tokens - 1}"
                )
        if self.chunk_tokens is not None:
            return  # evaluation contexts past one chunk are recorded as null, not scored (see llama_pe.core.evaluate)
        longest = max(self.eval_contexts)
        for name in ("val", "test"):
            if longest + 1 > split_tokens[name]:
                raise ConfigError(
                    f"eval.contexts: the longest evaluation context, {longest} tokens "
                    f"({max(self.eval.contexts):g} × train.context={self.train.context}), is longer than the {name} "
                    f"split ({split_tokens[name]} tokens); use smaller multiples or a shorter train.context"
                )


def load_config(path: str | Path = "params.yaml") -> Config:
    """Read params.yaml into a Config; every problem is reported as a ConfigError naming the key."""
    path = Path(path)
    try:
        raw = load_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return config_from_dict(raw)


def config_from_dict(raw: Any) -> Config:
    return _build_dataclass(Config, raw, "")


def flat_params(params: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """params.yaml's settings by dotted key ("model.pos": "rope"); a list is one value."""
    flat: dict[str, Any] = {}
    for name, value in params.items():
        if isinstance(value, dict):
            flat.update(flat_params(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _build_dataclass(cls: type, raw: Any, where: str) -> Any:
    if hasattr(cls, "from_params"):
        return cls.from_params(raw, where)
    fields = dataclasses.fields(cls)
    if raw is None and not any(_is_required(f) for f in fields):
        raw = {}  # an empty YAML section (`eval:`) reads as None
    hints = typing.get_type_hints(cls)
    optional = {f.name for f in fields if not _is_required(f)}
    return cls(**_read_section({f.name: hints[f.name] for f in fields}, raw, where, optional))


def _read_section(hints: dict[str, Any], raw: Any, where: str, optional: set[str] = frozenset()) -> dict[str, Any]:
    """The settings of one section, each converted to its type hint; unknown keys and missing required ones raise."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'params'}: expected a mapping of settings, got {raw!r}")
    for key in raw:
        if key not in hints:
            valid = ", ".join(hints) or "none"
            raise ConfigError(f"{_join(where, str(key))}: unknown setting; valid keys here: {valid}")
    values = {}
    for name, hint in hints.items():
        key = _join(where, name)
        if name not in raw:
            if name not in optional:
                raise ConfigError(f"{key}: missing required setting")
            continue
        values[name] = _convert(hint, raw[name], key)
    return values


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
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{key}: config field has an unsupported type {hint!r}")  # a bug here, not user input
