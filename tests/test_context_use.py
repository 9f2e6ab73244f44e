"""The context-use diagnostics can fail: a model that sees nothing before the current token shows no gain from
context and attends at distance 0; a copy out of a model's reach changes nothing; a model that copies shows a large
retrieval gain; a learned table gives null."""

from __future__ import annotations

import contextlib
import types

import numpy as np
import pytest
import torch
from torch import nn

from llama_pe.core.context_use import PROBE_DISTANCES, context_use
from tests.conftest import make_config
from tests.model.conftest import tiny_model

VOCAB, L = 64, 16
CPU, NO_AMP = torch.device("cpu"), contextlib.nullcontext()


@pytest.fixture(scope="module")
def cfg():
    return make_config(train={"context": L}, eval={"contexts": [0.5, 1, 2, 4, 8], "batch_size": 8})


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    # Test text from a few ids only, so that a random span (ids 3 .. VOCAB - 1) seldom shares an id with it.
    return np.random.default_rng(0).integers(3, 8, 1500).astype(np.uint16)


def self_only_model():
    """ALiBi with slopes so steep that every query attends to its own position alone: a bigram model."""
    model = tiny_model(pos="alibi", vocab_size=VOCAB, max_seq_len=L).eval()
    model.positions.slopes.mul_(1e4)
    return model


def test_a_model_that_sees_only_the_current_token_gains_nothing_from_context_and_attends_at_distance_zero(cfg, tokens):
    metrics, curves = context_use(self_only_model(), tokens, cfg, CPU, NO_AMP)
    for multiple in ("2x", "4x", "8x"):
        assert metrics[f"context_gain_at_{multiple}"] == pytest.approx(0.0, abs=1e-5)
    for name, value in metrics.items():
        if name.startswith("copy_gain_"):
            assert value == pytest.approx(0.0, abs=1e-5), name
        if name.startswith("attn_distance_"):
            assert value == pytest.approx(0.0, abs=1e-4), name
    assert {row["distance"] for row in curves["retrieval"]} == {max(4, round(m * L)) for m in PROBE_DISTANCES}
    assert len(curves["loss_by_position"]) == 8 * L
    bands = [metrics[f"band_loss_{band}"] for band in ("0to1x", "1to2x", "2to4x", "4to8x")]
    assert max(bands) - min(bands) < 0.2  # a bigram model's loss does not depend on the position


def test_a_copy_beyond_a_models_reach_changes_nothing_though_its_loss_depends_on_the_text_before_it(cfg, tokens):
    # ALiBi so steep that a query sees its last few tokens only (weights past ~25 tokens underflow to exactly 0): the
    # probe compares the second copy with and without the first at the same positions after the same filler, so a
    # first copy out of reach changes nothing, though the tokens just before each copy change its loss.
    model = tiny_model(pos="alibi", vocab_size=VOCAB, max_seq_len=L).eval()
    model.positions.slopes.mul_(1e3)
    metrics, _ = context_use(model, tokens, cfg, CPU, NO_AMP)
    for multiple in ("2x", "4x", "7x"):
        for kind in ("text", "random"):
            assert metrics[f"copy_gain_{kind}_at_{multiple}"] == pytest.approx(0.0, abs=1e-6), (kind, multiple)


class Copier(nn.Module):
    """Predicts the token that followed the first earlier occurrence of the current token (an induction head)."""

    max_positions = None
    args = types.SimpleNamespace(vocab_size=VOCAB, n_layers=1, pos="copier")

    def forward(self, tokens: torch.Tensor, last: int | None = None):
        logits = torch.zeros(*tokens.shape, VOCAB)
        for b, row in enumerate(tokens.tolist()):
            seen: dict[int, int] = {}
            for t, token in enumerate(row):
                if token in seen:
                    logits[b, t, row[seen[token] + 1]] = 12.0
                seen.setdefault(token, t)
        return (logits if last is None else logits[:, -last:]), None

    def attention_maps(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        return [torch.eye(tokens.shape[1]).expand(tokens.shape[0], 1, -1, -1)]


def test_a_model_that_copies_gets_a_large_retrieval_gain_on_random_spans(cfg, tokens):
    metrics, _ = context_use(Copier(), tokens, cfg, CPU, NO_AMP)
    for multiple in ("0p5x", "1x", "2x", "4x", "7x"):
        assert metrics[f"copy_gain_random_at_{multiple}"] < -2.0, multiple  # ln(64) ≈ 4.2 nats at stake per token


def test_a_learned_table_gives_null_past_its_length_with_the_reason(cfg, tokens):
    model = tiny_model(pos="learned", vocab_size=VOCAB, max_seq_len=L).eval()
    metrics, curves = context_use(model, tokens, cfg, CPU, NO_AMP)
    assert metrics["context_gain_at_2x"] is None and metrics["band_loss_0to1x"] is None
    assert metrics["attn_distance_l0_at_8x"] is None and metrics["attn_distance_l0_at_1x"] is not None
    assert metrics["copy_gain_text_at_0p25x"] is not None and metrics["copy_gain_text_at_1x"] is None
    assert curves["loss_by_position"][0]["reason"] == "model.pos=learned places 16 positions"


def test_hugging_faces_attention_maps_are_the_native_models():
    tokens = torch.randint(0, VOCAB, (2, 12))
    native = tiny_model(pos="rope", vocab_size=VOCAB).eval()
    hf = tiny_model(pos="rope", impl="hf", vocab_size=VOCAB).eval()  # the same init draws
    for ours, theirs in zip(native.attention_maps(tokens), hf.attention_maps(tokens), strict=True):
        assert ours.shape == (2, 4, 12, 12)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours.sum(-1), torch.ones(2, 4, 12))
