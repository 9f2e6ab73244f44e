"""Batches of token windows: random training windows from a seeded generator that resumes, and the fixed windows
that validation scores at every evaluation."""

from __future__ import annotations

import numpy as np
import torch

from llama_pe.core.distributed import ONE_PROCESS, Ranks


class BatchSampler:
    """Random windows of context + 1 tokens from one split, drawn from a seeded generator that resumes.

    chunk_tokens (data.split=random_chunks): the split is a file of shuffled chunks of context + 1 tokens, and
    each window is one whole chunk, so that no sample runs into the unrelated chunk after it.
    ranks: with several processes each draws the same global batch and keeps its own contiguous share of it.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        context: int,
        batch_size: int,
        seed: int,
        chunk_tokens: int | None = None,
        ranks: Ranks = ONE_PROCESS,
    ) -> None:
        self.tokens, self.context, self.batch_size, self.chunk_tokens = tokens, context, batch_size, chunk_tokens
        self.generator = torch.Generator().manual_seed(seed)
        share = batch_size // ranks.world_size
        self.rows = slice(ranks.rank * share, (ranks.rank + 1) * share)

    def next(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.chunk_tokens is None:
            starts = torch.randint(len(self.tokens) - self.context, (self.batch_size,), generator=self.generator)
        else:
            n_chunks = len(self.tokens) // self.chunk_tokens
            starts = torch.randint(n_chunks, (self.batch_size,), generator=self.generator) * self.chunk_tokens
        starts = starts[self.rows]  # every rank drew the whole batch, so the generators stay in step
        windows = np.stack([self.tokens[s : s + self.context + 1] for s in starts.tolist()]).astype(np.int64)
        windows = torch.from_numpy(windows).to(device)  # (B, context + 1)
        return windows[:, :-1], windows[:, 1:]


def eval_windows(tokens: np.ndarray, context: int, limit: int | None, chunk_tokens: int | None = None) -> torch.Tensor:
    """Fixed, evenly spaced, non-overlapping windows of context + 1 tokens: the same at every evaluation.

    chunk_tokens: one window per chunk (of context + 1 tokens), as BatchSampler draws them.
    """
    step = context if chunk_tokens is None else chunk_tokens
    n_windows = (len(tokens) - 1) // context if chunk_tokens is None else len(tokens) // chunk_tokens
    starts = np.arange(n_windows) * step
    if limit is not None and limit < n_windows:
        starts = starts[np.linspace(0, n_windows - 1, limit).round().astype(int)]
    return torch.from_numpy(np.stack([tokens[s : s + context + 1] for s in starts]).astype(np.int64))
