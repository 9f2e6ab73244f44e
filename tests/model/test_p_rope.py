"""p-RoPE: the highest-frequency fraction of the rotary pairs rotates; the others carry no position at all."""

import pytest
import torch

from llama_pe.core.model.rope_scaling import RopeScaling
from llama_pe.positions.p_rope import PartialRotary
from llama_pe.positions.rope import Rotary
from llama_pe.positions.rope_scaling import ROPE_SCALING_METHODS
from tests.model.conftest import tiny_args, tiny_model

HEAD_DIM = 32  # 16 pairs


def _rotate_at(encoding, vector: torch.Tensor, position: int) -> torch.Tensor:
    x = vector.expand(1, 1, position + 1, HEAD_DIM).clone()
    rotated, _ = encoding.rotate(x, x, start=0)
    return rotated[0, 0, position]


def _args(fraction: float):
    return tiny_args(pos="p_rope", dim=64, n_heads=2, n_kv_heads=2, rope_fraction=fraction)


def test_the_lowest_frequencies_do_not_rotate_and_the_highest_rotate_as_rope():
    p_rope = PartialRotary(_args(0.75))
    rope = Rotary(tiny_args(pos="rope", dim=64, n_heads=2, n_kv_heads=2))
    torch.manual_seed(0)
    vector = torch.randn(HEAD_DIM)
    rotating = torch.zeros(HEAD_DIM // 2, dtype=torch.bool)
    rotating[:12] = True  # 0.75 of 16 pairs, the highest frequencies (index 0 is the fastest)
    dims = torch.cat((rotating, rotating))  # rotate-half layout: pair i is dimensions i and i + 16
    for position in (1, 7, 300):
        p_rotated, rope_rotated = _rotate_at(p_rope, vector, position), _rotate_at(rope, vector, position)
        assert torch.equal(p_rotated[~dims], vector[~dims])  # no position in the low-frequency dimensions
        torch.testing.assert_close(p_rotated[dims], rope_rotated[dims])


def test_scores_on_the_non_rotating_dimensions_are_the_same_at_every_distance():
    p_rope = PartialRotary(_args(0.5))
    torch.manual_seed(1)
    q, k = torch.randn(HEAD_DIM), torch.randn(HEAD_DIM)
    low = torch.zeros(HEAD_DIM, dtype=torch.bool)
    low[8:16] = low[24:32] = True  # the 8 slowest pairs
    scores = [(_rotate_at(p_rope, q, m)[low] @ _rotate_at(p_rope, k, 0)[low]).item() for m in (0, 5, 50, 500)]
    assert scores == pytest.approx([scores[0]] * 4, abs=1e-5)


def test_a_fraction_of_one_is_rope():
    tokens = torch.randint(0, 256, (2, 20))
    p_rope, rope = tiny_model(pos="p_rope", rope_fraction=1.0).eval(), tiny_model(pos="rope").eval()
    rope.load_state_dict(p_rope.state_dict())
    assert torch.equal(p_rope(tokens)[0], rope(tokens)[0])


def test_rope_scaling_applies_by_capability_and_keeps_the_zero_frequencies():
    model = tiny_model(pos="p_rope", dim=64, n_heads=2, n_kv_heads=2).eval()
    tokens = torch.randint(0, 256, (1, 64))
    plain, _ = model(tokens)
    for method in ROPE_SCALING_METHODS:
        with model.scaled_rope(RopeScaling(method, factor=4.0, original_context=16)):
            inv_freq, _ = model.positions.frequencies(64)
            scaled, _ = model(tokens)
        assert torch.all(inv_freq[12:] == 0) and torch.all(inv_freq[:12] > 0), method
        assert not torch.allclose(scaled, plain), method  # the rotating frequencies were stretched
