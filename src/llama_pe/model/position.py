"""Position encodings behind one small interface, chosen by name from a registry.

Each encoding may add to the token embeddings (`embed`), rotate queries and keys (`rotate`) and add a bias to
the attention logits (`attn_bias`); all three are no-ops by default, so attention never asks which one it has.
Positions are absolute: `start` is the position of the first token, which is the KV-cache length when decoding.

The catalogue (llama_pe.encodings) names each class and says what it is; registration, at import, checks that the
class is what its entry says (a rotary entry is a Rotary, a biased one gives its bias to FlexAttention too).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from llama_pe.encodings import ENCODINGS, Encoding, encoding
from llama_pe.errors import ConfigError, ContextLengthError
from llama_pe.model.args import ModelArgs
from llama_pe.model.flex import ScoreMod
from llama_pe.model.rope_scaling import RopeScaling, base_frequencies, scaled_frequencies


class PositionEncoding(nn.Module):
    # Set at registration from the catalogue: the encoding's name and what it is (llama_pe.encodings.Encoding).
    name: str
    spec: Encoding

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        # Longest sequence the encoding can place: train.context for a bounded one (a learned table), else any.
        self.max_positions: int | None = args.max_seq_len if self.spec.bounded else None

    def embed(self, x: torch.Tensor, start: int) -> torch.Tensor:  # x: (B, T, dim)
        return x

    def rotate(self, q: torch.Tensor, k: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        # k: (B, n_kv_heads, S, head_dim) at positions start .. start + S - 1; q: (B, n_heads, T, head_dim) at the
        # last T of them (T = S but when a model wants the last layer's outputs at a few positions only)
        return q, k

    def attn_bias(self, q_len: int, k_len: int, start: int) -> torch.Tensor | None:
        return None  # else (n_heads, q_len, k_len), added to the logits before the softmax

    def score_mod(self, q_len: int, k_len: int) -> ScoreMod | None:
        """attn_bias as FlexAttention's score_mod(score, batch, head, q_pos, k_pos), for its fused kernel on a GPU;
        q_pos and k_pos are absolute positions, the queries being the last q_len of the k_len keys."""
        return None

    def check_length(self, end: int) -> None:
        if self.max_positions is not None and end > self.max_positions:
            raise ContextLengthError(
                f"model.pos={self.name}: position {end - 1} is past the {self.max_positions} positions it can place "
                f"(train.context; {self.spec.summary}), so it cannot extrapolate to {end} tokens"
            )


class NoPositions(PositionEncoding):
    """NoPE: the causal mask is the only source of order (Kazemnejad et al., arXiv 2305.19466)."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__(args)


class Rotary(PositionEncoding):
    """RoPE (Su et al., arXiv 2104.09864) in the rotate-half layout that Hugging Face's Llama uses."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__(args)
        self.theta, self.head_dim = args.encoding["rope_theta"], args.head_dim
        inv_freq = base_frequencies(self.theta, args.head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (head_dim / 2,)
        self.scaling: RopeScaling | None = None  # context extension at evaluation (scaled_rope), never in training

    def rotate(self, q: torch.Tensor, k: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq, attention_factor = self.frequencies(start + k.shape[-2])
        positions = torch.arange(start, start + k.shape[-2], device=q.device, dtype=torch.float32)
        angles = torch.outer(positions, inv_freq.to(q.device))  # (S, head_dim / 2)
        angles = torch.cat((angles, angles), dim=-1)  # (S, head_dim): dims i and i + head_dim/2 form a pair
        cos, sin = (angles.cos() * attention_factor).to(q.dtype), (angles.sin() * attention_factor).to(q.dtype)
        q_cos, q_sin = cos[-q.shape[-2] :], sin[-q.shape[-2] :]  # queries: the last T positions
        return q * q_cos + _rotate_half(q) * q_sin, k * cos + _rotate_half(k) * sin

    def frequencies(self, seq_len: int) -> tuple[torch.Tensor, float]:
        """The inverse frequencies for a sequence of seq_len positions and the factor on cos and sin."""
        if self.scaling is None:
            return self.inv_freq, 1.0
        return scaled_frequencies(self.theta, self.head_dim, self.scaling, seq_len)


@contextlib.contextmanager
def scaled_rope(positions: PositionEncoding, scaling: RopeScaling) -> Iterator[None]:
    """Evaluate a rotary model with its frequencies stretched by `scaling` (model/rope_scaling.py) inside the block."""
    if not positions.spec.rotary:
        raise ConfigError(
            f"eval.rope_scaling: {scaling.method} scales rotary positions; model.pos={positions.name} has none"
        )
    positions.scaling = scaling
    try:
        yield
    finally:
        positions.scaling = None


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
        super().__init__(args)
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
        super().__init__(args)
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
        super().__init__(args)
        # One slope per query head: under grouped-query attention heads that share a kv head keep their own.
        slopes = torch.tensor(alibi_slopes(args.n_heads), dtype=torch.float32)
        if args.encoding["alibi_learnable"]:
            self.slopes = nn.Parameter(slopes)
        else:
            self.register_buffer("slopes", slopes, persistent=False)

    def attn_bias(self, q_len: int, k_len: int, start: int) -> torch.Tensor:
        device = self.slopes.device
        q_pos = torch.arange(start, start + q_len, device=device)
        k_pos = torch.arange(k_len, device=device)
        distance = (q_pos[:, None] - k_pos[None, :]).clamp(min=0).float()  # (q_len, k_len); future is masked
        return -self.slopes[:, None, None] * distance  # (n_heads, q_len, k_len)

    def score_mod(self, q_len: int, k_len: int) -> ScoreMod:
        slopes = self.slopes

        def alibi(score, batch, head, q_pos, k_pos):
            return score - slopes[head] * (q_pos - k_pos)  # the future is masked by the caller

        return alibi


class AbsoluteRelative(PositionEncoding):
    """Sinusoidal absolute positions plus the ALiBi bias: the original study's "absolute + relative"."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__(args)
        self.absolute = Sinusoidal(args)
        self.relative = ALiBi(args)

    def embed(self, x: torch.Tensor, start: int) -> torch.Tensor:
        return self.absolute.embed(x, start)

    def attn_bias(self, q_len: int, k_len: int, start: int) -> torch.Tensor:
        return self.relative.attn_bias(q_len, k_len, start)

    def score_mod(self, q_len: int, k_len: int) -> ScoreMod:
        return self.relative.score_mod(q_len, k_len)


def t5_buckets(distance: torch.Tensor, n_buckets: int, max_distance: int) -> torch.Tensor:
    """T5's causal relative-position buckets (arXiv 1910.10683; Hugging Face's T5Attention._relative_position_bucket
    with bidirectional=False): distances below n_buckets / 2 get a bucket each, longer ones log-spaced buckets up to
    max_distance, and everything past it the last bucket."""
    exact = n_buckets // 2
    distance = distance.clamp(min=0)  # the future, masked anyway, shares distance 0's bucket
    scaled = torch.log(distance.clamp(min=exact).float() / exact) / math.log(max_distance / exact)
    log_spaced = (exact + (scaled * (n_buckets - exact)).to(torch.long)).clamp(max=n_buckets - 1)
    return torch.where(distance < exact, distance, log_spaced)


class T5Bias(PositionEncoding):
    """T5's relative position bias: a learned scalar per head and distance bucket, shared by every layer as in T5."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__(args)
        self.n_buckets, self.max_distance = args.encoding["t5_buckets"], args.encoding["t5_max_distance"]
        self.table = nn.Embedding(self.n_buckets, args.n_heads)  # initialised as the other tables (init_std)

    def attn_bias(self, q_len: int, k_len: int, start: int) -> torch.Tensor:
        device = self.table.weight.device
        q_pos = torch.arange(start, start + q_len, device=device)
        k_pos = torch.arange(k_len, device=device)
        buckets = t5_buckets(q_pos[:, None] - k_pos[None, :], self.n_buckets, self.max_distance)  # (q_len, k_len)
        return self.table(buckets).permute(2, 0, 1)  # (n_heads, q_len, k_len)

    def score_mod(self, q_len: int, k_len: int) -> ScoreMod:
        table, n_buckets, max_distance = self.table.weight, self.n_buckets, self.max_distance

        def t5(score, batch, head, q_pos, k_pos):
            return score + table[t5_buckets(q_pos - k_pos, n_buckets, max_distance), head]

        return t5


FIRE_WIDTH = 32  # the paper's MLP: one hidden layer of 32 units


class FIRE(PositionEncoding):
    """FIRE (Li et al., arXiv 2310.04418): bias_h(i, j) = f(psi(i - j) / psi(max(i, L)))_h with psi(x) = log(c x + 1),
    f a small MLP shared by every layer (one output per head), c and the threshold L learned.

    Normalising by the query's position keeps the MLP's input in [0, 1] at any length ("progressive
    interpolation"). L starts at train.context, so past the training length the input stays within what training
    saw (the paper's 512 suits its 2048-token training). The code follows the paper's listing (its appendix).
    """

    def __init__(self, args: ModelArgs) -> None:
        super().__init__(args)
        self.mlp = nn.Sequential(nn.Linear(1, FIRE_WIDTH), nn.ReLU(), nn.Linear(FIRE_WIDTH, args.n_heads))
        self.c = nn.Parameter(torch.tensor(0.1))  # the paper's init
        self.register_buffer("initial_threshold", torch.tensor(float(args.max_seq_len)), persistent=False)
        self.threshold_scale = nn.Parameter(torch.tensor(1.0))  # L = |threshold_scale * initial_threshold|

    def attn_bias(self, q_len: int, k_len: int, start: int) -> torch.Tensor:
        device = self.c.device
        q_pos = torch.arange(start, start + q_len, device=device, dtype=torch.float32)
        k_pos = torch.arange(k_len, device=device, dtype=torch.float32)
        distance = (q_pos[:, None] - k_pos[None, :]).clamp(min=0)  # (q_len, k_len); the future is masked
        threshold = (self.threshold_scale * self.initial_threshold).abs()
        normaliser = torch.log(torch.abs(self.c * torch.maximum(q_pos, threshold)) + 1) + 1e-6  # (q_len,)
        normalised = torch.log(torch.abs(self.c * distance) + 1) / normaliser[:, None]
        return self.mlp(normalised[..., None]).permute(2, 0, 1)  # (n_heads, q_len, k_len)

    def score_mod(self, q_len: int, k_len: int) -> ScoreMod:
        # An MLP per score is no work for a kernel: the (n_heads, q_len, k_len) table is made once and read there.
        bias, offset = self.attn_bias(q_len, k_len, start=k_len - q_len), k_len - q_len

        def fire(score, batch, head, q_pos, k_pos):
            return score + bias[head, q_pos - offset, k_pos]

        return fire


class KerpleLog(PositionEncoding):
    """KERPLE's logarithmic kernel (Chi et al., arXiv 2205.09921): bias_h(i, j) = -r1_h log(1 + r2_h |i - j|).

    r1 and r2 are learned per query head and shared by every layer, as the paper's code (github.com/chijames/KERPLE,
    ParallelKerpleLog, one module handed to every layer) has them; it draws r1 ~ U(0, 2) and r2 ~ U(0, 1) and clamps
    both to at least 0.01 in place. Here they are positive by construction instead: each is 0.01 + softplus of a
    free parameter, which starts where the paper's draws put them.
    """

    EPS = 1e-2  # the paper's floor on r1 and r2

    def __init__(self, args: ModelArgs) -> None:
        super().__init__(args)
        r1 = (torch.rand(args.n_heads) * 2).clamp(min=2 * self.EPS)  # (n_heads,), the paper's init
        r2 = torch.rand(args.n_heads).clamp(min=2 * self.EPS)
        self.r1_free = nn.Parameter(_softplus_inverse(r1 - self.EPS))
        self.r2_free = nn.Parameter(_softplus_inverse(r2 - self.EPS))

    def kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(r1, r2), each (n_heads,) and above 0.01."""
        return self.EPS + F.softplus(self.r1_free), self.EPS + F.softplus(self.r2_free)

    def attn_bias(self, q_len: int, k_len: int, start: int) -> torch.Tensor:
        r1, r2 = self.kernel()
        q_pos = torch.arange(start, start + q_len, device=r1.device)
        k_pos = torch.arange(k_len, device=r1.device)
        distance = (q_pos[:, None] - k_pos[None, :]).clamp(min=0).float()  # (q_len, k_len); the future is masked
        return -r1[:, None, None] * torch.log1p(r2[:, None, None] * distance)  # (n_heads, q_len, k_len)

    def score_mod(self, q_len: int, k_len: int) -> ScoreMod:
        r1, r2 = self.kernel()

        def kerple(score, batch, head, q_pos, k_pos):
            return score - r1[head] * torch.log1p(r2[head] * (q_pos - k_pos))  # the future is masked by the caller

        return kerple


def _softplus_inverse(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))  # log(exp(y) - 1), without overflow for large y


class PartialRotary(Rotary):
    """p-RoPE (Barbero et al., arXiv 2410.06205): rotary positions on the highest-frequency fraction
    model.rope_fraction of the pairs; the lowest frequencies are set to zero, so those dimensions carry no position
    and are free for semantic matching. RoPE scaling applies as to rope, to the frequencies that rotate."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__(args)
        pairs = args.head_dim // 2
        rotating = round(args.encoding["rope_fraction"] * pairs)  # the frequencies fall with the index
        self.register_buffer("rotates", torch.arange(pairs) < rotating, persistent=False)  # (head_dim / 2,)

    def frequencies(self, seq_len: int) -> tuple[torch.Tensor, float]:
        inv_freq, attention_factor = super().frequencies(seq_len)
        return inv_freq * self.rotates.to(inv_freq.device), attention_factor


def _registered(name: str, entry: Encoding) -> type[PositionEncoding]:
    """The class the catalogue names for `name`, once it is checked to be what the entry says."""
    cls = globals().get(entry.implementation)
    if not (isinstance(cls, type) and issubclass(cls, PositionEncoding)):
        raise TypeError(f"ENCODINGS[{name!r}] names {entry.implementation!r}, which is no PositionEncoding here")
    if entry.rotary != issubclass(cls, Rotary):
        is_or_not = "is" if issubclass(cls, Rotary) else "is not"
        raise TypeError(
            f"ENCODINGS[{name!r}].rotary is {entry.rotary}, but {cls.__name__} {is_or_not} a Rotary: RoPE scaling "
            f"would treat it wrongly"
        )
    overrides = [getattr(cls, method) is not getattr(PositionEncoding, method) for method in ("attn_bias", "score_mod")]
    if entry.biased and not all(overrides):
        raise TypeError(
            f"ENCODINGS[{name!r}] is biased, so {cls.__name__} must define both attn_bias and score_mod "
            f"(FlexAttention adds the bias through score_mod on a GPU)"
        )
    if not entry.biased and any(overrides):
        raise TypeError(f"{cls.__name__} adds an attention bias, so ENCODINGS[{name!r}] must say biased=True")
    if "name" in cls.__dict__:
        raise TypeError(f"{cls.__name__} is registered twice, as {cls.name!r} and {name!r}")
    cls.name, cls.spec = name, entry
    return cls


# Every entry of the catalogue, checked at import: a class that is not what its entry says fails on any machine.
POSITION_ENCODINGS: dict[str, type[PositionEncoding]] = {name: _registered(name, e) for name, e in ENCODINGS.items()}


def build_position_encoding(args: ModelArgs) -> PositionEncoding:
    encoding(args.pos)  # an unknown name: the error that lists the valid ones
    return POSITION_ENCODINGS[args.pos](args)
