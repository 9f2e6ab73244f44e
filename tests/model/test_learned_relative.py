"""T5's bucketed bias and FIRE, checked against hand-computed values (their causality, cache equivalence, init,
regularisation and FlexAttention path are checked with every other encoding in the shared tests)."""

import math

import pytest
import torch
from torch import nn
from transformers.models.t5.modeling_t5 import T5Attention

from llama_pe.positions.fire import FIRE
from llama_pe.positions.t5 import T5Bias, t5_buckets
from tests.model.conftest import tiny_args, tiny_model


def test_t5_buckets_by_hand():
    # 8 buckets up to distance 20: distances 0-3 exact, then 4 + floor(log(d / 4) / log(20 / 4) * 4), at most 7.
    by_hand = [0, 1, 2, 3, 4, 4, 5, 5, 5, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7]
    distances = torch.arange(len(by_hand))
    assert t5_buckets(distances, n_buckets=8, max_distance=20).tolist() == by_hand
    assert t5_buckets(torch.tensor([1000, -3]), 8, 20).tolist() == [7, 0]  # far: the last bucket; the future: 0


@pytest.mark.parametrize(("n_buckets", "max_distance"), [(32, 128), (8, 20), (16, 40)])
def test_t5_buckets_are_hugging_faces_causal_buckets(n_buckets, max_distance):
    distance = torch.arange(0, 600)
    theirs = T5Attention._relative_position_bucket(
        -distance, bidirectional=False, num_buckets=n_buckets, max_distance=max_distance
    )
    assert torch.equal(t5_buckets(distance, n_buckets, max_distance), theirs)


def test_t5_bias_reads_one_learned_scalar_per_head_and_bucket_in_every_layer():
    t5 = T5Bias(tiny_args(pos="t5", t5_buckets=8, t5_max_distance=20))
    with torch.no_grad():
        t5.table.weight.copy_(torch.arange(8 * 4, dtype=torch.float32).view(8, 4))  # value = 4 * bucket + head
    bias = t5.attn_bias(q_len=3, k_len=12, start=9)  # queries at positions 9-11 (a KV cache of 9)
    assert bias.shape == (4, 3, 12)
    assert bias[2, 0, 0] == 4 * 6 + 2  # distance 9: bucket 6, head 2
    assert bias[1, 2, 11] == 4 * 0 + 1 and bias[3, 2, 7] == 4 * 4 + 3  # distances 0 and 4
    model = tiny_model(pos="t5")
    assert sum(p.numel() for p in model.positions.parameters()) == 32 * 4  # one table, shared by the layers


def test_fire_bias_at_known_inputs():
    fire = FIRE(tiny_args(pos="fire", max_seq_len=4))
    with torch.no_grad():
        fire.c.fill_(1.0)  # psi(x) = log(x + 1)
        fire.mlp = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 4))  # f(x)_h = (h + 1) * x, by hand
        fire.mlp[0].weight.fill_(1.0), fire.mlp[0].bias.zero_()
        fire.mlp[2].weight.copy_(torch.arange(1.0, 5.0)[:, None]), fire.mlp[2].bias.zero_()
    bias = fire.attn_bias(q_len=9, k_len=9, start=0)  # (heads, i, j); L = train.context = 4
    assert bias[0, 2, 0].item() == pytest.approx(math.log(3) / math.log(5), rel=1e-5)  # i = 2 < L: normalised by L
    assert bias[0, 8, 2].item() == pytest.approx(math.log(7) / math.log(9), rel=1e-5)  # i = 8 > L: by i itself
    assert bias[3, 8, 2].item() == pytest.approx(4 * math.log(7) / math.log(9), rel=1e-5)
    assert bias[1, 5, 5].item() == 0.0  # distance 0
    assert bias[:, 8].max() <= 4 * 1.0 + 1e-6  # progressive interpolation: the MLP's input never passes 1
    cached = fire.attn_bias(q_len=2, k_len=9, start=7)  # the last two queries, as with a KV cache of 7
    torch.testing.assert_close(cached, bias[:, 7:9])
    with torch.no_grad():
        fire.threshold_scale.fill_(4.0)  # L = 16: now every position up to 8 is normalised by L
    assert fire.attn_bias(9, 9, 0)[0, 8, 2].item() == pytest.approx(math.log(7) / math.log(17), rel=1e-5)


def test_learned_relative_parameters_are_not_weight_decayed():
    from llama_pe.core.optimizer import make_optimizer
    from tests.conftest import make_config

    cfg = make_config().train
    for pos in ("t5", "fire"):
        model = tiny_model(pos=pos)
        decayed = {id(p) for p in make_optimizer(model, cfg, torch.device("cpu")).param_groups[0]["params"]}
        assert not any(id(p) in decayed for p in model.positions.parameters())
        assert id(model.layers[0].attention.wq.weight) in decayed
