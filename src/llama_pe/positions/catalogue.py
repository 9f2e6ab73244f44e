"""The catalogue of position encodings, found in this package: one file per encoding, named as model.pos names it.

An encoding's file holds its entry (`ENCODING`: what it is, with its paper, its params keys and their rules) and its
class. The entry is read without torch: config checks model.pos and the encodings' keys in the first stage, before
torch loads. The class is made on first use (`torch_part`), when the model builds it or a test imports it. The
model, the evaluate stage, the HF export, the study and the tests ask an entry's capabilities, never its name:
- rotary: rotates queries and keys, so RoPE scaling (eval.rope_scaling) applies; its class is a Rotary.
- bounded: a learned table of train.context positions; it cannot place a longer sequence.
- biased: adds a bias to the attention logits; its class must give that bias to FlexAttention too (score_mod).
- hf_exportable: Hugging Face's LlamaForCausalLM computes exactly this encoding (model.impl=hf, export-hf).

A new encoding is one file here and its keys in params.yaml (docs/model.md); nothing registers it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from llama_pe.errors import ConfigError

__all__ = [
    "ENCODINGS",
    "Encoding",
    "Setting",
    "check",
    "check_encoding_settings",
    "complete_settings",
    "encoding",
    "hf_encoding",
    "settings_of_every_encoding",
    "torch_part",
    "validate_encoding",
]

PACKAGE = "llama_pe.positions"
NOT_ENCODINGS = frozenset({"base", "catalogue", "rope_scaling"})  # the package's other modules


@dataclass(frozen=True)
class Setting:
    """A key of params.yaml's model section that belongs to one or more encodings."""

    default: bool | int | float  # the value that means "not used": any other value needs an encoding that owns it
    help: str


def _yaml(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value)  # as params.yaml spells it


def check(ok: bool, key: str, expected: str, got: Any) -> None:
    """An error naming model.`key`, what it expects and what it got, unless `ok`."""
    if not ok:
        raise ConfigError(f"model.{key}: expected {expected}, got {got!r}")


def _no_rules(settings: Mapping[str, Any], head_dim: int) -> None:
    pass


@dataclass(frozen=True)
class Encoding:
    summary: str  # what it is, with its paper: for messages and the docs
    implementation: str  # the class's name in the encoding's file
    rank: int = 100  # where it stands in the docs', the tests' and the messages' order (then by name)
    rotary: bool = False
    bounded: bool = False
    biased: bool = False
    hf_exportable: bool = False
    settings: Mapping[str, Setting] = field(default_factory=dict)  # its own keys of model:, shared ones included
    # (its own settings, the head dimension) -> None; raises ConfigError naming the key for a value it cannot take
    validate: Callable[[Mapping[str, Any], int], None] = _no_rules


def torch_part(module: str, entry: Encoding, make: Callable[[], dict[str, Any]], names: tuple[str, ...]):
    """An encoding file's module __getattr__ (PEP 562): the names that need torch, made by `make` on first use.

    So `from llama_pe.positions.alibi import ALiBi` works as for any module, while reading the file's ENCODING
    imports no torch. The class learns its name and entry when it is made, however it is reached (the model's
    build checks it against the entry: llama_pe.positions.base). Only `names` call `make`: a probe for any other
    attribute is an AttributeError, as usual.
    """
    made: dict[str, Any] = {}

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        if not made:
            made.update(make())
            cls = made[entry.implementation]
            cls.name, cls.spec = module.rsplit(".", 1)[1], entry  # what PositionEncoding reads of its entry
        return made[name]

    return __getattr__


def _discover() -> dict[str, Encoding]:
    package = importlib.import_module(PACKAGE)
    found = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.name in NOT_ENCODINGS or info.name.startswith("_"):
            continue
        entry = getattr(importlib.import_module(f"{PACKAGE}.{info.name}"), "ENCODING", None)
        if not isinstance(entry, Encoding):
            raise ImportError(f"{PACKAGE}.{info.name} is no encoding: it defines no ENCODING = Encoding(...)")
        found[info.name] = entry
    return dict(sorted(found.items(), key=lambda item: (item[1].rank, item[0])))


# The order is the docs', the tests' and the messages'. rope is the reference the report compares the others with.
ENCODINGS: dict[str, Encoding] = _discover()


def encoding(name: str, key: str = "model.pos") -> Encoding:
    """The entry of `name`; an error naming `key` and listing the valid names for any other."""
    if name not in ENCODINGS:
        raise ConfigError(f"{key}: unknown position encoding {name!r}; valid: {', '.join(ENCODINGS)}")
    return ENCODINGS[name]


def settings_of_every_encoding() -> dict[str, Setting]:
    """Every encoding's keys of the model section, each once (a key that two encodings share is one setting)."""
    merged: dict[str, Setting] = {}
    for name, entry in ENCODINGS.items():
        for key, setting in entry.settings.items():
            if merged.setdefault(key, setting) is not setting:
                raise ImportError(f"{PACKAGE}.{name} declares model.{key} anew; import the other file's Setting")
    return merged


def hf_encoding() -> str:
    """The encoding that Hugging Face's LlamaForCausalLM computes, which model.impl=hf trains."""
    (name,) = [name for name, entry in ENCODINGS.items() if entry.hf_exportable]
    return name


def check_encoding_settings(pos: str, values: Mapping[str, Any], head_dim: int, impl: str) -> dict[str, Any]:
    """The settings model.pos owns out of every encoding's `values`, after its rules; an error for a key that is set
    (not at its default) but that model.pos does not use."""
    entry = encoding(pos)
    for key, setting in settings_of_every_encoding().items():
        if key not in entry.settings and values[key] != setting.default:
            owners = [name for name, other in ENCODINGS.items() if key in other.settings]
            users = f"{owners[0]} uses it" if len(owners) == 1 else f"{', '.join(owners)} use it"
            raise ConfigError(
                f"model.{key}: {_yaml(values[key])} has no meaning for model.pos={pos} (only {users}); "
                f"set it back to {_yaml(setting.default)}"
            )
    own = {key: values[key] for key in entry.settings}
    validate_encoding(pos, own, head_dim, impl)
    return own


def complete_settings(pos: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """model.pos's own settings: `given`, and each key it leaves out at its default; an error for a key not its own."""
    entry = encoding(pos)
    for key in given:
        if key not in entry.settings:
            valid = ", ".join(entry.settings) or "none"
            raise ConfigError(f"model.{key}: not a setting of model.pos={pos} (its settings: {valid})")
    return {key: given.get(key, setting.default) for key, setting in entry.settings.items()}


def validate_encoding(pos: str, own: Mapping[str, Any], head_dim: int, impl: str) -> None:
    """The encoding's own rules, and model.impl=hf's: Hugging Face's Llama computes one encoding only."""
    entry = encoding(pos)
    entry.validate(own, head_dim)
    if impl == "hf" and not entry.hf_exportable:
        raise ConfigError(
            f"model.impl=hf supports model.pos={hf_encoding()} only (LlamaForCausalLM has rotary positions); "
            f"got model.pos={pos}. Use model.impl=native for {pos}."
        )
