"""The catalogue of position encodings: each one's name, what it is, its own params keys and their rules.

This is the only list of encodings. Config checks model.pos and the encodings' keys against it in the first stage,
before torch loads; the model (model/position.py) builds the class an entry names, and the evaluate stage, the HF
export, the study and the tests ask an entry's capabilities instead of its name:
- rotary: rotates queries and keys, so RoPE scaling (eval.rope_scaling) applies; its class is a Rotary.
- bounded: a learned table of train.context positions; it cannot place a longer sequence.
- biased: adds a bias to the attention logits; its class must give that bias to FlexAttention too (score_mod).
- hf_exportable: Hugging Face's LlamaForCausalLM computes exactly this encoding (model.impl=hf, export-hf).

A new encoding is one class in model/position.py and one ENCODINGS entry here, with its keys in params.yaml.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from llama_pe.errors import ConfigError

__all__ = [
    "ENCODINGS",
    "Encoding",
    "Setting",
    "check_encoding_settings",
    "complete_settings",
    "encoding",
    "hf_encoding",
    "settings_of_every_encoding",
    "validate_encoding",
]


@dataclass(frozen=True)
class Setting:
    """A key of params.yaml's model section that belongs to one or more encodings."""

    default: bool | int | float  # the value that means "not used": any other value needs an encoding that owns it
    help: str


def _yaml(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else repr(value)  # as params.yaml spells it


def _check(ok: bool, key: str, expected: str, got: Any) -> None:
    if not ok:
        raise ConfigError(f"model.{key}: expected {expected}, got {got!r}")


def _no_rules(settings: Mapping[str, Any], head_dim: int) -> None:
    pass


@dataclass(frozen=True)
class Encoding:
    summary: str  # what it is, with its paper: for messages and the docs
    implementation: str  # the class's name in llama_pe.model.position
    rotary: bool = False
    bounded: bool = False
    biased: bool = False
    hf_exportable: bool = False
    settings: Mapping[str, Setting] = field(default_factory=dict)  # its own keys of model:, shared ones included
    # (its own settings, the head dimension) -> None; raises ConfigError naming the key for a value it cannot take
    validate: Callable[[Mapping[str, Any], int], None] = _no_rules


ROPE_THETA = Setting(10000.0, "base of the rotary frequencies")
ALIBI_LEARNABLE = Setting(False, "train ALiBi's slopes (as the original study did) instead of the paper's fixed ones")


def _rotary_rules(settings: Mapping[str, Any], head_dim: int) -> None:
    _check(settings["rope_theta"] > 0, "rope_theta", "a positive number", settings["rope_theta"])
    if head_dim % 2:
        raise ConfigError(
            f"model.pos: rotary positions rotate pairs of dimensions, so the head dimension must be even; "
            f"model.dim / model.n_heads = {head_dim}"
        )


def _p_rope_rules(settings: Mapping[str, Any], head_dim: int) -> None:
    _rotary_rules(settings, head_dim)
    fraction = settings["rope_fraction"]
    _check(0 < fraction <= 1, "rope_fraction", "a fraction in (0, 1] of the frequency pairs (0 is nope)", fraction)
    if head_dim % 2 == 0 and round(fraction * head_dim / 2) < 1:
        raise ConfigError(
            f"model.rope_fraction: {fraction} of the {head_dim // 2} frequency pairs of a {head_dim}-dimensional "
            f"head rotates none; use at least {1 / (head_dim / 2):.3g}"
        )


def _t5_rules(settings: Mapping[str, Any], head_dim: int) -> None:
    # T5's buckets: the first half exact distances, the second log-spaced from there to t5_max_distance.
    buckets, max_distance = settings["t5_buckets"], settings["t5_max_distance"]
    _check(buckets >= 4, "t5_buckets", "an integer of at least 4 (half exact distances, half log-spaced)", buckets)
    _check(
        max_distance > buckets // 2,
        "t5_max_distance",
        f"more than half of model.t5_buckets ({buckets // 2}), where the log-spaced buckets start",
        max_distance,
    )


# The order is the docs', the tests' and the messages'. rope is the reference the report compares the others with.
ENCODINGS: dict[str, Encoding] = {
    "rope": Encoding(
        "rotary positions, RoPE (Su et al., arXiv 2104.09864)",
        "Rotary",
        rotary=True,
        hf_exportable=True,
        settings={"rope_theta": ROPE_THETA},
        validate=_rotary_rules,
    ),
    "abs": Encoding("fixed sinusoidal absolute positions added to the embeddings (arXiv 1706.03762)", "Sinusoidal"),
    "learned": Encoding("learned absolute positions, a table of train.context rows, as GPT-2", "Learned", bounded=True),
    "alibi": Encoding(
        "ALiBi, a linear bias by distance (Press et al., arXiv 2108.12409)",
        "ALiBi",
        biased=True,
        settings={"alibi_learnable": ALIBI_LEARNABLE},
    ),
    "abs_rel": Encoding(
        "sinusoidal absolute positions plus the ALiBi bias (the original study's absolute + relative)",
        "AbsoluteRelative",
        biased=True,
        settings={"alibi_learnable": ALIBI_LEARNABLE},
    ),
    "nope": Encoding(
        "no positions: the causal mask is the only order (Kazemnejad et al., arXiv 2305.19466)", "NoPositions"
    ),
    "t5": Encoding(
        "T5's learned bias per distance bucket (arXiv 1910.10683)",
        "T5Bias",
        biased=True,
        settings={
            "t5_buckets": Setting(32, "distance buckets per head, half exact, half log-spaced ..."),
            "t5_max_distance": Setting(128, "... up to this distance; farther shares the last bucket"),
        },
        validate=_t5_rules,
    ),
    "fire": Encoding(
        "FIRE, a learned function of the normalised distance (Li et al., arXiv 2310.04418)", "FIRE", biased=True
    ),
    "kerple": Encoding(
        "KERPLE's logarithmic kernel, -r1 log(1 + r2 |i - j|), learned per head (Chi et al., arXiv 2205.09921)",
        "KerpleLog",
        biased=True,
    ),
    "p_rope": Encoding(
        "p-RoPE: rotary positions on the highest-frequency fraction of the pairs only (Barbero et al., arXiv "
        "2410.06205)",
        "PartialRotary",
        rotary=True,
        settings={
            "rope_theta": ROPE_THETA,
            "rope_fraction": Setting(0.75, "the highest-frequency fraction of the pairs that rotates; the rest: none"),
        },
        validate=_p_rope_rules,
    ),
}


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
                raise ImportError(f"ENCODINGS[{name!r}] declares model.{key} anew; share the other entry's Setting")
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
