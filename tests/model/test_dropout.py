import pytest
import torch
import torch.nn.functional as F

from llama_pe.model.dropout import Dropout, attention_with_dropout, keep_mask


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_drop_rate_and_scale(p):
    torch.manual_seed(0)
    keep, scale = keep_mask(torch.Size([1000, 1001]), p)  # an odd count: the last 64-bit draw is partly used
    assert keep.shape == (1000, 1001) and keep.dtype == torch.bool
    assert abs((1 - keep.float().mean().item()) - p) < 2e-3  # 1e6 Bernoulli draws: std 5e-4
    assert scale == pytest.approx(1 / (1 - p), rel=2e-5)
    x = torch.ones(1000, 1001)
    out = Dropout(p).train()(x)
    values = out.unique().tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(scale)
    assert out.mean().item() == pytest.approx(1.0, abs=5e-3)  # the expectation is kept


def test_masks_follow_torch_seed_and_are_not_constant():
    module = Dropout(0.3).train()
    x = torch.ones(64, 64)
    torch.manual_seed(5)
    first = module(x)
    torch.manual_seed(5)
    assert torch.equal(first, module(x))
    assert not torch.equal(first, module(x))
    rows = (first == 0).float().mean(dim=1)
    assert rows.std() > 0  # not the same mask in every row (the 16-bit lanes of one draw are independent)


def test_no_dropout_in_eval_or_at_zero():
    x = torch.randn(4, 8)
    assert torch.equal(Dropout(0.5).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    with pytest.raises(ValueError, match=r"dropout probability must be in \[0, 1\), got 1.0"):
        Dropout(1.0)


def test_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(0)
    x = torch.randn(16, 16, requires_grad=True)
    out = Dropout(0.25).train()(x)
    out.sum().backward()
    kept = out.detach() != 0
    assert torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], 1 / 0.75), rtol=1e-4)
    assert (x.grad[~kept] == 0).all()


@pytest.mark.parametrize("with_mask", [False, True])
def test_attention_without_drops_is_sdpa(with_mask):
    torch.manual_seed(0)
    q = torch.randn(2, 4, 6, 8)
    k, v = torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)  # grouped-query: 2 kv heads for 4 query heads
    causal = torch.zeros(6, 6).masked_fill(torch.ones(6, 6, dtype=torch.bool).triu(1), float("-inf"))
    mask = (causal - torch.rand(4, 6, 6)) if with_mask else None  # a bias per head, as ALiBi's
    got = attention_with_dropout(q, k, v, mask, p=0.0)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_attention_dropout_drops_attention_weights_and_is_causal():
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    v = torch.eye(5)[None, None].expand(1, 2, 5, 5)  # the output is the (dropped) attention weights themselves
    weights = attention_with_dropout(q, k, v, None, p=0.5)
    assert (weights.triu(1) == 0).all()  # no weight on the future
    assert (weights == 0).any() and weights.max() > 1  # some weights dropped, the kept ones scaled by 2
