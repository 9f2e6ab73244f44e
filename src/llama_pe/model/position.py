"""Position encodings behind one small interface, chosen by name from a registry.

Each encoding may add to the token embeddings (`embed`), rotate queries and keys (`rotate`) and add a bias to
the attention logits (`attn_bias`); all three are no-ops by default, so attention never asks which one it has.
Positions are absolute: `start` is the position of the first token, which is the KV-cache length when decoding.
"""

from __future__ import annotations

import math
import typing

import torch
from torch import nn

from llama_pe.config import PositionName
from llama_pe.errors import ConfigError, ContextLengthError
from llama_pe.model.args import ModelArgs
from llama_pe.model.flex import ScoreMod


class PositionEncoding(nn.Module):
    # Longest sequence the encoding can place; None means any length (it can extrapolate).
    max_positions: int | None = None

    def embed(self, x: torch.Tensor, start: int) -> torch.Tensor:  # x: (B, T, dim)
        return x

    def rotate(self, q: torch.Tensor, k: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        # k: (B, n_kv_heads, S, head_dim) at positions start .. start + S - 1; q: (B, n_heads, T, head_dim) at the
        # last T of them (T = S but when a model wants the last layer's outputs at a few positions only)
        return q, k

    def attn_bias(self, q_len: int, k_len: int, start: int) -> torch.Tensor | None:
        return None  # else (n_heads, q_len, k_len), added to the logits before the softmax

    def score_mod(self) -> ScoreMod | None:
        """attn_bias as FlexAttention's score_mod(score, batch, head, q_pos, k_pos), for its fused kernel on a GPU."""
        return None

    def check_length(self, end: int) -> None:
        if self.max_positions is not None and end > self.max_positions:
            raise ContextLengthError(
                f"model.pos={self.name}: position {end - 1} is past the learned position table of "
                f"{self.max_positions} positions (the training context, train.context); learned absolute "
                f"positions cannot extrapolate to {end} tokens"
            )

    @property
    def name(self) -> str:
        return next(name for name, cls in POSITION_ENCODINGS.items() if cls is type(self))


class NoPositions(PositionEncoding):
    """NoPE: the causal mask is the only source of order (Kazemnejad et al., arXiv 2305.19466)."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()


class Rotary(PositionEncoding):
    """RoPE (Su et al., arXiv 2104.09864) in the rotate-half layout that Hugging Face's Llama uses."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        inv_freq = 1.0 / (args.rope_theta ** (torch.arange(0, args.head_dim, 2, dtype=torch.float32) / args.head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (head_dim / 2,)

    def rotate(self, q: torch.Tensor, k: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        positions = torch.arange(start, start + k.shape[-2], device=q.device, dtype=torch.float32)
        angles = torch.outer(positions, self.inv_freq)  # (S, head_dim / 2)
        angles = torch.cat((angles, angles), dim=-1)  # (S, head_dim): dims i and i + head_dim/2 form a pair
        cos, sin = angles.cos().to(q.dtype), angles.sin().to(q.dtype)
        q_cos, q_sin = cos[-q.shape[-2] :], sin[-q.shape[-2] :]  # queries: the last T positions
        return q * q_cos + _rotate_half(q) * q_sin, k * cos + _rotate_half(k) * sin


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def sinusoids(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Vaswani et al.'s table: sin on even, cos on odd dimensions, wavelengths from 2*pi to 10000*2*pi."""
    freqs = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # (ceil(dim/2),)
    angles = torch.outer(positions.float(), freqs)  # (T, ceil(dim/2))
    table = torch.zeros(positions.numel(), dim)
    table[:, 0::2] = angles.sin()
    table[:, 1::2] = angles.cos()[:, : dim // 2]
    return table  # (T, dim)


class Sinusoidal(PositionEncoding):
    """Fixed sinusoidal absolute positions added to the token embeddings (arXiv 1706.03762)."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.dim = args.dim
        # Scaled to the RMS of the embedding init (init_std), like the learned table, so that at init position
        # neither drowns the token signal (an unscaled table is 35x larger than 0.02-std embeddings).
        self.scale = args.init_std * math.sqrt(2.0)

    def embed(self, x: torch.Tensor, start: int) -> torch.Tensor:
        positions = torch.arange(start, start + x.shape[1], device=x.device)
        return x + (self.scale * sinusoids(positions, self.dim)).to(device=x.device, dtype=x.dtype)


class Learned(PositionEncoding):
    """Learned absolute position embeddings, as GPT-2; a table of train.context rows that cannot extrapolate."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.max_positions = args.max_seq_len
        self.table = nn.Embedding(args.max_seq_len, args.dim)

    def embed(self, x: torch.Tensor, start: int) -> torch.Tensor:
        self.check_length(start + x.shape[1])
        return x + self.table(torch.arange(start, start + x.shape[1], device=x.device))


def alibi_slopes(n_heads: int) -> list[float]:
    """ALiBi's head slopes exactly as the paper's code (github.com/ofirpress/attention_with_linear_biases)."""

    def power_of_2_slopes(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        return power_of_2_slopes(n_heads)
    # Otherwise: the slopes of the closest smaller power of two, then every other slope of the next one.
    closest = 2 ** math.floor(math.log2(n_heads))
    return power_of_2_slopes(closest) + alibi_slopes(2 * closest)[0::2][: n_heads - closest]


class ALiBi(PositionEncoding):
    """Attention with Linear Biases (Press et al., arXiv 2108.12409): logit -= slope_h * (i - j), per query head."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        # One slope per query head: under grouped-query attention heads that share a kv head keep their own.
        slopes = torch.tensor(alibi_slopes(args.n_heads), dtype=torch.float32)
        if args.alibi_learnable:
            self.slopes = nn.Parameter(slopes)
        else:
            self.register_buffer("slopes", slopes, persistent=False)

    def attn_bias(self, q_len: int, k_len: int, start: int) -> torch.Tensor:
        device = self.slopes.device
        q_pos = torch.arange(start, start + q_len, device=device)
        k_pos = torch.arange(k_len, device=device)
        distance = (q_pos[:, None] - k_pos[None, :]).clamp(min=0).float()  # (q_len, k_len); future is masked
        return -self.slopes[:, None, None] * distance  # (n_heads, q_len, k_len)

    def score_mod(self) -> ScoreMod:
        slopes = self.slopes

        def alibi(score, batch, head, q_pos, k_pos):
            return score - slopes[head] * (q_pos - k_pos)  # the future is masked by the caller

        return alibi


class AbsoluteRelative(PositionEncoding):
    """Sinusoidal absolute positions plus the ALiBi bias: the original study's "absolute + relative"."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.absolute = Sinusoidal(args)
        self.relative = ALiBi(args)

    def embed(self, x: torch.Tensor, start: int) -> torch.Tensor:
        return self.absolute.embed(x, start)

    def attn_bias(self, q_len: int, k_len: int, start: int) -> torch.Tensor:
        return self.relative.attn_bias(q_len, k_len, start)

    def score_mod(self) -> ScoreMod:
        return self.relative.score_mod()


POSITION_ENCODINGS: dict[str, type[PositionEncoding]] = {
    "rope": Rotary,
    "abs": Sinusoidal,
    "learned": Learned,
    "alibi": ALiBi,
    "abs_rel": AbsoluteRelative,
    "nope": NoPositions,
}


# config.PositionName lets params be checked without importing the model; both must name the same encodings.
if set(POSITION_ENCODINGS) != set(typing.get_args(PositionName)):
    raise ImportError(f"llama_pe.config.PositionName {typing.get_args(PositionName)} and POSITION_ENCODINGS "
                      f"{tuple(POSITION_ENCODINGS)} disagree: add the new encoding's name to both")  # fmt: skip


def build_position_encoding(args: ModelArgs) -> PositionEncoding:
    if args.pos not in POSITION_ENCODINGS:
        raise ConfigError(f"model.pos: unknown position encoding {args.pos!r}; valid: {', '.join(POSITION_ENCODINGS)}")
    return POSITION_ENCODINGS[args.pos](args)
