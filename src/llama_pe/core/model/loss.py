"""The output head and the cross-entropy in one pass over the vocabulary, a chunk of tokens at a time.

A small model spends much of a training step on its head: with an 8192-token vocabulary and dim 192 the logits
of a 2048-token batch are 64 MiB, which F.cross_entropy writes, reads back for log_softmax, saves, and meets
again in the backward pass as a zero-filled gradient of the same size. Here each chunk's logits are turned into
their gradient (softmax minus the one-hot target) as soon as they are made, while they are still in cache, and
the head's two backward matrix multiplies run right away; the backward pass only scales what was kept. The same
idea as Liger Kernel's fused linear cross-entropy (arXiv 2410.10989), in plain PyTorch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK_TOKENS = 256  # 256 x 8192 fp32 logits are 8 MiB: GEMMs as fast as one big one, logits still in cache


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, compute_dtype: torch.dtype):
        n_tokens = x.shape[0]
        w = weight.to(compute_dtype)
        grad_x = torch.empty_like(x)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        with torch.autocast(x.device.type, enabled=False):  # dtypes are chosen here, not by autocast
            for begin in range(0, n_tokens, CHUNK_TOKENS):
                xc = x[begin : begin + CHUNK_TOKENS].to(compute_dtype)  # (C, dim)
                tc = targets[begin : begin + CHUNK_TOKENS, None]  # (C, 1)
                logits = (xc @ w.t()).float()  # (C, vocab), fp32
                probs = torch.softmax(logits, dim=-1)  # one pass fewer than log_softmax then exp
                total += _token_losses(logits, probs, tc).sum()
                grad_logits = probs.scatter_add_(1, tc, torch.full_like(probs[:, :1], -1))  # softmax - one-hot
                grad_logits = grad_logits.to(compute_dtype)
                grad_x[begin : begin + CHUNK_TOKENS] = grad_logits @ w  # (C, dim)
                if compute_dtype == torch.float32:
                    grad_weight.addmm_(grad_logits.t(), xc)  # (vocab, dim)
                else:  # the product in the low precision, the sum over chunks in fp32
                    grad_weight += (grad_logits.t() @ xc).float()
        ctx.save_for_backward(grad_x, grad_weight.to(weight.dtype))
        ctx.n_tokens = n_tokens
        return total / n_tokens

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):
        grad_x, grad_weight = ctx.saved_tensors
        scale = grad_loss / ctx.n_tokens  # the mean over tokens
        return grad_x * scale.to(grad_x.dtype), grad_weight * scale.to(grad_weight.dtype), None, None


def _token_losses(logits: torch.Tensor, probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-log p(target) per token; where p underflowed to 0 (a loss past ~87 nats), logsumexp - logit instead."""
    target_probs = probs.gather(1, targets)  # (C, 1)
    losses = -torch.log(target_probs)
    underflow = target_probs == 0
    if torch.compiler.is_compiling() or underflow.any():  # compiled: no data-dependent branch, inductor fuses it
        exact = torch.logsumexp(logits, dim=-1, keepdim=True) - logits.gather(1, targets)
        losses = torch.where(underflow, exact, losses)
    return losses


def linear_cross_entropy(x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (x @ weight.T) against targets, for x (N, dim), weight (vocab, dim), targets (N,).

    Equal to F.cross_entropy(F.linear(x, weight), targets) up to float rounding, without holding the logits. The
    gradients are computed in the forward pass, so this pays only when a backward pass follows: without one,
    the plain path is taken. Under autocast the matrix multiplies run in its dtype and the softmax in fp32.
    """
    if not torch.is_grad_enabled() or not (x.requires_grad or weight.requires_grad):
        return F.cross_entropy(F.linear(x, weight).float(), targets)
    device = x.device.type
    compute_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
    return _LinearCrossEntropy.apply(x, weight, targets, compute_dtype)
