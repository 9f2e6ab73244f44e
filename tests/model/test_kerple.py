"""KERPLE's logarithmic kernel: what sets it apart from ALiBi is a learned, logarithmic fall with distance."""

import math

import torch

from llama_pe.positions.kerple import KerpleLog
from tests.model.conftest import tiny_args, tiny_model


def test_bias_is_minus_r1_log_of_one_plus_r2_times_the_distance_per_head():
    kerple = KerpleLog(tiny_args(pos="kerple", n_heads=4, n_kv_heads=2))
    r1, r2 = kerple.kernel()
    bias = kerple.attn_bias(q_len=6, k_len=6, start=0)
    assert bias.shape == (4, 6, 6)
    for head in range(4):
        for i, j in [(5, 0), (5, 4), (3, 1), (2, 2)]:
            expected = -r1[head].item() * math.log(1 + r2[head].item() * (i - j))
            assert math.isclose(bias[head, i, j].item(), expected, rel_tol=1e-5, abs_tol=1e-7)
    # A cached step: the query at absolute position 9 against keys 0..9.
    step = kerple.attn_bias(q_len=1, k_len=10, start=9)[:, 0]
    assert torch.allclose(step[:, 0], -r1 * torch.log1p(9 * r2))


def test_r1_and_r2_start_as_the_papers_draws_and_stay_positive_whatever_the_optimiser_does():
    torch.manual_seed(0)
    r1, r2 = KerpleLog(tiny_args(pos="kerple", n_heads=256, n_kv_heads=1, dim=512)).kernel()
    # The paper's code: r1 ~ U(0, 2), r2 ~ U(0, 1), both floored at 0.01.
    assert r1.min() >= 0.01 and r1.max() <= 2.0 and r2.min() >= 0.01 and r2.max() <= 1.0
    assert abs(r1.mean().item() - 1.0) < 0.15 and abs(r2.mean().item() - 0.5) < 0.08
    kerple = KerpleLog(tiny_args(pos="kerple"))
    with torch.no_grad():
        kerple.r1_free.fill_(-1e4)
        kerple.r2_free.fill_(-1e4)
    r1, r2 = kerple.kernel()
    assert torch.all(r1 >= 0.01) and torch.all(r2 >= 0.01)  # positive by construction, not by clamping in place


def test_the_fall_is_logarithmic_so_far_keys_are_not_silenced_as_alibi_silences_them():
    kerple = KerpleLog(tiny_args(pos="kerple"))
    bias = kerple.attn_bias(q_len=1025, k_len=1025, start=0)[:, -1]  # the last query, at distances 1024 .. 0
    near, far = bias[:, -2], bias[:, 0]  # distance 1 and 1024
    assert torch.all(far < near) and torch.all(near < 0)
    r1, r2 = kerple.kernel()
    # Doubling the distance far away adds about r1 * log 2, not a fixed slope times the distance.
    doubling = bias[:, -513] - bias[:, 0]  # distance 512 against 1024
    assert torch.allclose(doubling, r1 * (torch.log1p(1024 * r2) - torch.log1p(512 * r2)), atol=1e-4)
    assert torch.all(doubling < r1 * math.log(2) + 1e-4)


def test_one_kernel_per_head_is_shared_by_every_layer_and_learns():
    model = tiny_model(pos="kerple", n_layers=3)
    names = [name for name, _ in model.named_parameters() if "positions" in name]
    assert names == ["positions.r1_free", "positions.r2_free"]
    tokens = torch.randint(0, 256, (2, 17))
    _, loss = model(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    assert model.positions.r1_free.grad.abs().sum() > 0 and model.positions.r2_free.grad.abs().sum() > 0
