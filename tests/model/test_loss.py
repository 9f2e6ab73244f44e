import pytest
import torch
import torch.nn.functional as F

from llama_pe.core.model import loss as loss_module
from llama_pe.core.model.loss import linear_cross_entropy


def _inputs(n_tokens: int, dim: int = 16, vocab: int = 50):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n_tokens, dim, generator=generator, requires_grad=True)
    weight = (0.3 * torch.randn(vocab, dim, generator=generator)).requires_grad_()
    targets = torch.randint(0, vocab, (n_tokens,), generator=generator)
    return x, weight, targets


def _loss_and_grads(fn, x, weight, targets, upstream: float = 1.0):
    x.grad = weight.grad = None
    loss = fn(x, weight, targets)
    (upstream * loss).backward()
    return loss.detach(), x.grad.clone(), weight.grad.clone()


@pytest.mark.parametrize("n_tokens", [1, 7, 12, 13])  # one chunk, a partial chunk, exact chunks, a remainder
def test_equals_the_head_then_cross_entropy(monkeypatch, n_tokens):
    monkeypatch.setattr(loss_module, "CHUNK_TOKENS", 4)
    x, weight, targets = _inputs(n_tokens)
    fused = _loss_and_grads(linear_cross_entropy, x, weight, targets, upstream=2.5)
    plain = _loss_and_grads(lambda a, w, t: F.cross_entropy(a @ w.t(), t), x, weight, targets, upstream=2.5)
    for got, want in zip(fused, plain, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_a_repeated_target_and_a_confident_model():
    x, weight, targets = _inputs(6)
    targets[:] = 3
    with torch.no_grad():
        weight[3, 0] = 200 * torch.sign(-x[0, 0])  # the first token's target is very unlikely ...
        per_token = F.cross_entropy(x @ weight.t(), targets, reduction="none")
    assert per_token[0] > 104  # ... so its softmax probability underflows: exp(-104) is below fp32's subnormals
    fused = _loss_and_grads(linear_cross_entropy, x, weight, targets)
    plain = _loss_and_grads(lambda a, w, t: F.cross_entropy(a @ w.t(), t), x, weight, targets)
    for got, want in zip(fused, plain, strict=True):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_under_bf16_autocast_matches_the_plain_path_under_autocast():
    x, weight, targets = _inputs(10, dim=32, vocab=64)

    def plain(a, w, t):
        return F.cross_entropy(F.linear(a, w).float(), t)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = _loss_and_grads(linear_cross_entropy, x, weight, targets)
        reference = _loss_and_grads(plain, x, weight, targets)
    assert fused[1].dtype == torch.float32 and fused[2].dtype == torch.float32  # gradients in the params' dtype
    for got, want in zip(fused, reference, strict=True):
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-3)


def test_without_gradients_it_is_the_plain_loss():
    x, weight, targets = _inputs(9)
    with torch.no_grad():
        assert torch.equal(linear_cross_entropy(x, weight, targets), F.cross_entropy(x @ weight.t(), targets))
