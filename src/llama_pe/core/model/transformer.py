"""The LLaMA-style decoder: pre-norm blocks of attention and SwiGLU, a final norm and an output head."""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from llama_pe.core.model.args import ModelArgs
from llama_pe.core.model.layers import Attention, FeedForward, KVCache, RMSNorm
from llama_pe.core.model.loss import linear_cross_entropy
from llama_pe.core.model.rope_scaling import RopeScaling
from llama_pe.positions.base import PositionEncoding, build_position_encoding, scaled_rope


class TransformerBlock(nn.Module):
    def __init__(self, args: ModelArgs, layer: int) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(args.dim, args.norm_eps)
        self.attention = Attention(args, layer)
        self.ffn_norm = RMSNorm(args.dim, args.norm_eps)
        self.feed_forward = FeedForward(args)
        self.dropout = nn.Dropout(args.dropout)  # on each residual branch, the same for every encoding

    def forward(
        self,
        x: torch.Tensor,
        positions: PositionEncoding,
        mask: torch.Tensor | None,
        start: int,
        cache: KVCache | None,
        queries: int | None = None,
    ) -> torch.Tensor:
        """queries: this block's outputs at the last `queries` positions only, (B, queries, dim)."""
        attended = self.attention(self.attention_norm(x), positions, mask, start, cache, queries)
        h = (x if queries is None else x[:, -queries:]) + self.dropout(attended)
        return h + self.dropout(self.feed_forward(self.ffn_norm(h)))


class Transformer(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        # Fair pairing: for one seed every encoding starts from the same shared weights. The global generator (seeded
        # by train.seed) gives one number; the shared tensors are drawn from it in a fixed order and the encoding's
        # own parameters from a generator of their own, so no encoding shifts another tensor's draws.
        init_seed = int(torch.randint(0, 2**62, (1,)).item())
        self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed + 1)
            self.positions = build_position_encoding(args)
            self.positions.apply(self._init_weights)  # its tables and MLPs, drawn as the other tables are
        self.dropout = nn.Dropout(args.dropout)
        self.layers = nn.ModuleList(TransformerBlock(args, i) for i in range(args.n_layers))
        self.norm = RMSNorm(args.dim, args.norm_eps)
        self.output = nn.Linear(args.dim, args.vocab_size, bias=False)
        if args.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self._init_shared_weights(torch.Generator().manual_seed(init_seed))

    def _init_weights(self, module: nn.Module, generator: torch.Generator | None = None) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.args.init_std, generator=generator)

    def _init_shared_weights(self, generator: torch.Generator) -> None:
        """Every tensor but the encoding's own, from `generator`, in the order of the modules (norms stay ones)."""
        for name, module in self.named_modules():
            if not name.startswith("positions"):
                self._init_weights(module, generator)
        # GPT-2's scaled init: each residual projection adds to the stream 2 * n_layers times.
        for name, param in self.named_parameters():
            if name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
                std = self.args.init_std / math.sqrt(2 * self.args.n_layers)
                nn.init.normal_(param, mean=0.0, std=std, generator=generator)

    @property
    def max_positions(self) -> int | None:
        return self.positions.max_positions

    def scaled_rope(self, scaling: RopeScaling) -> contextlib.AbstractContextManager:
        """Rotary frequencies stretched by `scaling` inside the block; a ConfigError for other encodings."""
        return scaled_rope(self.positions, scaling)

    @torch.no_grad()
    def attention_maps(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """Each layer's exact attention probabilities for tokens (B, T): (B, n_heads, T, T) per layer."""
        maps: list[torch.Tensor] = []
        for block in self.layers:
            block.attention.probe = lambda layer, probabilities: maps.append(probabilities)
        try:
            self(tokens)
        finally:
            for block in self.layers:
                block.attention.probe = None
        return maps

    def new_cache(self) -> KVCache:
        return KVCache(self.args.n_layers)

    def forward(
        self,
        tokens: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
        last: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab) for tokens (B, T); with targets, (None, mean cross-entropy) instead.

        With targets the head and the loss run fused (model/loss.py), so no logits are made to return.
        last: logits of the last `last` positions only, (B, last, vocab): the output head is a large share of a
        small model's work, and a sliding evaluation window or a sampling step needs few of them.
        """
        seq = tokens.shape[1]
        start = cache.length if cache is not None else 0  # absolute position of tokens[:, 0]
        self.positions.check_length(start + seq)
        x = self.dropout(self.positions.embed(self.tok_embeddings(tokens), start))  # (B, T, dim)
        mask = self._attention_mask(seq, start + seq, start, x.device)
        *body, final = self.layers
        for layer in body:
            x = layer(x, self.positions, mask, start, cache)
        if targets is not None:
            x = self.norm(final(x, self.positions, mask, start, cache))
            return None, linear_cross_entropy(x.view(-1, x.shape[-1]), self.output.weight, targets.reshape(-1))
        if last is None or last >= seq:
            return self.output(self.norm(final(x, self.positions, mask, start, cache))), None  # (B, T, vocab)
        # Only the last `last` positions' logits are wanted: the final block attends from those positions alone
        # (its keys and values still cover every position), so its feed-forward runs on `last` rows, not T.
        final_mask = self._attention_mask(last, start + seq, start + seq - last, x.device)
        x = final(x, self.positions, final_mask, start, cache, queries=last)  # (B, last, dim)
        return self.output(self.norm(x)), None  # (B, last, vocab)

    def _attention_mask(self, q_len: int, k_len: int, start: int, device: torch.device) -> torch.Tensor | None:
        """Causal mask plus the encoding's bias, (n_heads or 1, q_len, k_len); None when SDPA's own will do."""
        bias = self.positions.attn_bias(q_len, k_len, start)
        if bias is None and start == 0:
            return None
        q_pos = torch.arange(start, start + q_len, device=device)
        future = torch.arange(k_len, device=device)[None, :] > q_pos[:, None]  # (q_len, k_len)
        mask = torch.zeros(q_len, k_len, device=device).masked_fill(future, float("-inf"))
        return mask[None] if bias is None else bias.to(device) + mask

    def num_params(self) -> int:
        """Parameters, a tied head counted once (parameters() yields each tensor once)."""
        return sum(p.numel() for p in self.parameters())
