from __future__ import annotations

import pytest
import torch

from llama_pe.model import ModelArgs, build_model

POSITIONS = ["rope", "abs", "learned", "alibi", "abs_rel", "nope", "t5", "fire"]
VOCAB = 256


def tiny_args(**changes) -> ModelArgs:
    base = dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16, dropout=0.0)
    return ModelArgs(**{**base, **changes})


def tiny_model(seed: int = 0, **changes):
    torch.manual_seed(seed)
    return build_model(tiny_args(**changes))


@pytest.fixture(params=POSITIONS)
def pos(request) -> str:
    return request.param
