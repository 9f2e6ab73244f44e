from __future__ import annotations

import pytest
import torch

from llama_pe.core.model import ModelArgs, build_model
from llama_pe.positions.catalogue import ENCODINGS, settings_of_every_encoding

VOCAB = 256
# Subsets of the catalogue by capability, for the property tests that hold for some encodings only.
UNBOUNDED = [name for name, entry in ENCODINGS.items() if not entry.bounded]
BIASED = [name for name, entry in ENCODINGS.items() if entry.biased]


def tiny_args(**changes) -> ModelArgs:
    """A tiny model's args; an encoding's own settings (rope_theta=500.0) may be given like the other fields."""
    settings = {key: changes.pop(key) for key in list(changes) if key in settings_of_every_encoding()}
    base = dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16, dropout=0.0)
    return ModelArgs(**{**base, **changes}, encoding=settings)


def tiny_model(seed: int = 0, **changes):
    torch.manual_seed(seed)
    return build_model(tiny_args(**changes))


def learnable(pos: str) -> dict[str, bool]:
    """The settings that make an encoding's fixed parameters trainable (ALiBi's slopes), for tests of gradients."""
    return {key: True for key, setting in ENCODINGS[pos].settings.items() if key.endswith("_learnable")}


@pytest.fixture(params=list(ENCODINGS))
def pos(request) -> str:
    return request.param
