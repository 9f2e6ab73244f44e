import math

import pytest
import torch

from llama_pe.positions.abs import sinusoids
from llama_pe.positions.alibi import alibi_slopes
from llama_pe.positions.base import build_position_encoding
from llama_pe.positions.catalogue import ENCODINGS
from llama_pe.positions.rope import Rotary
from tests.model.conftest import tiny_args


def paper_slopes(n: int) -> list[float]:
    """The paper's rule: for 2^k heads, a geometric sequence starting at and with ratio 2^(-8/n)."""
    return [2 ** (-8 * (i + 1) / n) for i in range(n)]


@pytest.mark.parametrize("n_heads", [4, 8, 16])
def test_alibi_slopes_for_powers_of_two(n_heads):
    assert alibi_slopes(n_heads) == pytest.approx(paper_slopes(n_heads), rel=1e-12)


@pytest.mark.parametrize(
    ("n_heads", "expected"),
    [
        # The 4-head slopes, then every other slope of the 8-head sequence.
        (6, paper_slopes(4) + paper_slopes(8)[0::2][:2]),
        (12, paper_slopes(8) + paper_slopes(16)[0::2][:4]),
    ],
)
def test_alibi_slopes_for_other_head_counts(n_heads, expected):
    assert alibi_slopes(n_heads) == pytest.approx(expected, rel=1e-12)
    assert alibi_slopes(6)[:2] == pytest.approx([0.25, 0.0625])
    assert alibi_slopes(6)[4:] == pytest.approx([0.5, 0.125])


def test_alibi_bias_belongs_to_query_heads_and_grows_with_distance():
    enc = build_position_encoding(tiny_args(pos="alibi", n_heads=4, n_kv_heads=1))
    bias = enc.attn_bias(q_len=5, k_len=5, start=0)
    assert bias.shape == (4, 5, 5)
    slopes = torch.tensor(alibi_slopes(4))
    assert torch.allclose(bias[:, 4, 1], -3 * slopes)
    assert torch.all(bias.diagonal(dim1=1, dim2=2) == 0)
    # With a cache, the one new query at absolute position 7 sees keys 0..7.
    assert torch.allclose(enc.attn_bias(q_len=1, k_len=8, start=7)[:, 0, 0], -7 * slopes)


def test_learnable_slopes_are_parameters():
    fixed = build_position_encoding(tiny_args(pos="alibi"))
    learnable = build_position_encoding(tiny_args(pos="abs_rel", alibi_learnable=True))
    assert list(fixed.parameters()) == []
    assert [p.numel() for p in learnable.parameters()] == [4]


def test_rope_scores_depend_only_on_the_offset():
    rope = Rotary(tiny_args(pos="rope", dim=64, n_heads=2, n_kv_heads=2))
    torch.manual_seed(0)
    q_vec, k_vec = torch.randn(32), torch.randn(32)

    def score(m: int, n: int) -> float:
        q = q_vec.expand(1, 1, m + 1, 32).clone()  # the same vector at every position 0..m
        k = k_vec.expand(1, 1, m + 1, 32).clone()
        rq, rk = rope.rotate(q, k, start=0)
        return float(rq[0, 0, m] @ rk[0, 0, n])

    for shift in (1, 5, 37):
        assert score(9, 4) == pytest.approx(score(9 + shift, 4 + shift), abs=1e-4)
    assert score(9, 4) != pytest.approx(score(9, 7), abs=1e-3)


def test_rope_with_start_equals_rope_of_the_longer_sequence():
    rope = Rotary(tiny_args(pos="rope"))
    q, k = torch.randn(1, 4, 10, 8), torch.randn(1, 2, 10, 8)
    full_q, full_k = rope.rotate(q, k, start=0)
    tail_q, tail_k = rope.rotate(q[:, :, 6:], k[:, :, 6:], start=6)
    assert torch.allclose(full_q[:, :, 6:], tail_q, atol=1e-6) and torch.allclose(full_k[:, :, 6:], tail_k, atol=1e-6)


def test_sinusoids_match_vaswani():
    table = sinusoids(torch.arange(50), 16)
    pos, i = 17, 3
    assert table[pos, 2 * i] == pytest.approx(math.sin(pos / 10000 ** (2 * i / 16)), abs=1e-5)
    assert table[pos, 2 * i + 1] == pytest.approx(math.cos(pos / 10000 ** (2 * i / 16)), abs=1e-5)


def test_unknown_position_encoding_lists_the_valid_ones():
    valid = ", ".join(ENCODINGS)
    with pytest.raises(ValueError, match=rf"model\.pos: unknown position encoding 'xpos'; valid: {valid}$"):
        build_position_encoding(tiny_args(pos="xpos"))
