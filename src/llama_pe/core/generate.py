"""Sampling from a model, with a KV cache that is right for every position encoding."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn


def generate(
    model: nn.Module,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    use_cache: bool = True,
) -> list[int]:
    """Continue prompt_ids by max_new_tokens tokens; temperature 0 is greedy. Returns only the new tokens."""
    return list(stream_tokens(model, prompt_ids, max_new_tokens, temperature, top_k, seed, use_cache))


def stream_tokens(
    model: nn.Module,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    use_cache: bool = True,
) -> Iterator[int]:
    """The new tokens of generate(), each as soon as it is sampled."""
    if len(prompt_ids) == 0:
        raise ValueError("generate: the prompt must hold at least one token")
    if temperature < 0 or (top_k is not None and top_k < 1):
        raise ValueError(f"generate: expected temperature >= 0 and top_k >= 1 or None, got {temperature}, {top_k}")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    window = model.max_positions  # None: the encoding places any position
    tokens = list(prompt_ids)
    cache = model.new_cache() if use_cache else None
    pending = tokens  # tokens the cache has not seen yet
    was_training = model.training
    model.eval()
    try:
        for _ in range(max_new_tokens):
            with torch.no_grad():
                if cache is None:
                    pending = tokens[-window:] if window else tokens
                elif window and cache.length + len(pending) > window:
                    # A learned table is full: start again on the last `window` tokens, as the uncached path does.
                    cache, pending = model.new_cache(), tokens[-window:]
                logits, _ = model(torch.tensor([pending], device=device), cache=cache, last=1)  # the next token only
                tokens.append(_sample(logits[0, -1].float(), temperature, top_k, generator))
            pending = tokens[-1:]
            yield tokens[-1]
    finally:
        model.train(was_training)


def _sample(logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator) -> int:
    if temperature == 0:
        return int(logits.argmax())
    logits = logits / temperature
    if top_k is not None and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator))
