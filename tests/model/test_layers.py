import math

import pytest
import torch

from llama_pe.core.model.layers import Attention, FeedForward, RMSNorm
from llama_pe.positions.nope import NoPositions
from tests.model.conftest import tiny_args


def reference_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """Plain multi-head causal attention written out, kv heads repeated for their query groups."""
    batch, seq, _ = x.shape
    q = attn.wq(x).view(batch, seq, attn.n_heads, -1).transpose(1, 2)
    k = attn.wk(x).view(batch, seq, attn.n_kv_heads, -1).transpose(1, 2)
    v = attn.wv(x).view(batch, seq, attn.n_kv_heads, -1).transpose(1, 2)
    group = attn.n_heads // attn.n_kv_heads
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # 1/sqrt(d), not the original study's 1/d
    scores = scores.masked_fill(torch.ones(seq, seq).triu(1).bool(), float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v
    return attn.wo(out.transpose(1, 2).reshape(batch, seq, -1))


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_attention_equals_written_out_multi_head_attention(n_kv_heads):
    args = tiny_args(n_heads=4, n_kv_heads=n_kv_heads, pos="nope")
    torch.manual_seed(0)
    attn = Attention(args, layer=0)
    x = torch.randn(2, 7, args.dim)
    out = attn(x, NoPositions(args), mask=None, start=0)
    assert torch.allclose(out, reference_attention(attn, x), atol=1e-5)


def test_rmsnorm_computes_in_fp32():
    norm = RMSNorm(8)
    x = torch.randn(3, 8).to(torch.bfloat16) * 100
    out = norm(x)
    assert out.dtype == torch.float32  # the fp32 weight promotes, as in LLaMA
    expected = x.float() / x.float().pow(2).mean(-1, keepdim=True).add(1e-5).sqrt()
    assert torch.allclose(out, expected, atol=1e-2)


def test_swiglu_hidden_size_follows_llamas_rule_or_the_explicit_size():
    assert FeedForward(tiny_args(dim=256)).w1.out_features == 704  # 2/3 * 4 * 256 = 682.7, up to 64s
    assert FeedForward(tiny_args(dim=64, ffn_hidden=100)).w1.out_features == 100
