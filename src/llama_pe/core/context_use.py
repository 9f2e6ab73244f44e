"""Does a model use context beyond its training length, or merely not degrade? Four diagnostics on the test split.

L is train.context and C the longest evaluation context (max eval.contexts × L).
- Loss by position: the mean loss at each position of non-overlapping windows of C tokens, as a curve and per
  band of positions [0, L), [L, 2L), [2L, 4L), ... up to C.
- Gain from context beyond L: for the targets at positions >= L of windows of m·L tokens (each multiple m > 1),
  their mean loss with the whole window minus with the context cut to the last L tokens (negative: the longer
  context helps; zero: ignored; positive: it hurts). The cut losses come from sliding windows of L tokens that
  score their last L/8, so each cut target sees between 7L/8 + 1 and L tokens.
- Retrieval by distance, a copy probe on the test text (no new data): a span of k tokens (16, or L/4 when L is
  below 64), filler test text, and the span again starting d tokens after the first, for d in
  {L/4, L/2, L, 2L, 4L, 7L}. The gain is the mean loss of the second copy's tokens (all but its first) minus their
  loss in the same sequence with the first copy replaced by another span (the control): same positions, same
  filler, same span scored, so only the earlier copy differs, over PROBE_SPANS seeded spans. Once with spans of
  test text, once with random token ids (Olsson et al.'s induction test, arXiv 2209.11895).
- Attention distance and entropy per layer: the mean |i - j| under the attention probabilities and their entropy
  (nats), at L and at C, on the first ATTENTION_WINDOWS non-overlapping test windows, from exact probabilities.

A diagnostic the model or the data cannot give (a learned table past L, shuffled chunks of L + 1 tokens) is null in
the metrics, with the reason in its curve's rows and the log.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from llama_pe.core.device import windows_per_batch
from llama_pe.metrics import metric_suffix
from llama_pe.settings.config import Config

log = logging.getLogger(__name__)

PROBE_SPANS = 64  # seeded spans per distance and kind
PROBE_DISTANCES = (0.25, 0.5, 1, 2, 4, 7)  # multiples of L between the two copies' starts
ATTENTION_WINDOWS = 8


@dataclass(frozen=True)
class Reach:
    """How long a window this model can be given on this split, and why not longer."""

    longest: int | None  # None: any length
    why: str

    def allows(self, length: int) -> bool:
        return self.longest is None or length <= self.longest


def reach(model, cfg: Config) -> Reach:
    if cfg.chunk_tokens is not None:  # a probe's window would cross from one shuffled chunk into the next
        return Reach(0, f"data.split=random_chunks: the test split is shuffled chunks of {cfg.chunk_tokens} tokens")
    if model.max_positions is not None:
        return Reach(model.max_positions, f"model.pos={model.args.pos} places {model.max_positions} positions")
    return Reach(None, "")


@torch.no_grad()
def _losses(model, rows: torch.Tensor, amp, last: int | None) -> torch.Tensor:
    """Per-target losses of rows (B, T), the target of position i being rows[:, i + 1]: (B, T - 1), or of the last
    `last` targets only (the output head, a large share of a small model's work, runs on those alone)."""
    with amp:
        logits, _ = model(rows[:, :-1], last=last)
    targets = rows[:, 1:] if last is None else rows[:, -last:]
    return F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")


def _batched(model, windows: np.ndarray, amp, device, per_batch: int, last: int | None = None) -> np.ndarray:
    """_losses over windows (N, T) in batches of per_batch: (N, T - 1 or last) in float64."""
    out = [
        _losses(model, torch.from_numpy(windows[i : i + per_batch].astype(np.int64)).to(device), amp, last)
        .double()
        .cpu()
        for i in range(0, len(windows), per_batch)
    ]
    return torch.cat(out).numpy()


def _per_batch(cfg: Config, length: int, device: torch.device) -> int:
    return windows_per_batch(cfg.eval.batch_size, length, device)


def loss_by_position(model, tokens: np.ndarray, cfg: Config, device, amp, window: int) -> np.ndarray:
    """Mean loss at each of the `window` positions over the full non-overlapping windows of the split."""
    n = (len(tokens) - 1) // window
    windows = np.stack([tokens[i * window : (i + 1) * window + 1] for i in range(n)])
    return _batched(model, windows, amp, device, _per_batch(cfg, window + 1, device)).mean(axis=0)


def cut_context_losses(model, tokens: np.ndarray, cfg: Config, device, amp) -> np.ndarray:
    """Loss of each target tokens[i + 1] (index i) seen through at most L tokens: sliding windows of L that score
    their last L/8 (nan for targets with fewer than L - L/8 tokens before them)."""
    context = cfg.train.context
    stride = max(1, context // 8)
    ends = np.arange(context, len(tokens), stride)  # a window's inputs are tokens[end - L : end]
    windows = np.stack([tokens[end - context : end + 1] for end in ends])
    losses = _batched(model, windows, amp, device, _per_batch(cfg, context + 1, device), last=stride)  # (N, stride)
    by_target = np.full(len(tokens) - 1, np.nan)
    for end, row in zip(ends, losses, strict=True):
        by_target[end - stride : end] = row
    return by_target


def context_gains(model, tokens, cfg: Config, device, amp, where: Reach) -> dict[str, float | None]:
    """context_gain_at_<m>x: whole-window loss minus cut-context loss, on the targets at positions >= L."""
    context = cfg.train.context
    gains: dict[str, float | None] = {}
    multiples = [m for m in cfg.eval.contexts if m > 1]
    reachable = any(where.allows(round(m * context)) for m in multiples)
    cut = cut_context_losses(model, tokens, cfg, device, amp) if reachable else None
    for multiple in multiples:
        window = round(multiple * context)
        name = f"context_gain_at_{metric_suffix(multiple)}"
        if not where.allows(window):
            gains[name] = None
            log.info("%s: null, %s", name, where.why)
            continue
        n = (len(tokens) - 1) // window
        windows = np.stack([tokens[i * window : (i + 1) * window + 1] for i in range(n)])
        per_batch = _per_batch(cfg, window + 1, device)
        whole = _batched(model, windows, amp, device, per_batch, last=window - context)  # (n, window - L)
        targets = (np.arange(n)[:, None] * window + np.arange(context, window)[None, :]).ravel()
        cut_losses = cut[targets]
        keep = ~np.isnan(cut_losses)
        gains[name] = round(float(whole.ravel()[keep].mean() - cut_losses[keep].mean()), 6)
    return gains


def copy_probe(model, tokens, cfg: Config, device, amp, where: Reach) -> tuple[dict[str, float | None], list[dict]]:
    """copy_gain_<text|random>_at_<d/L>x and the curve's rows: the second copy's loss with the first copy minus
    with the control span in its place, per distance."""
    context, vocab = cfg.train.context, model.args.vocab_size
    span = 16 if context >= 64 else max(2, context // 4)
    longest = max(cfg.eval_contexts)
    metrics: dict[str, float | None] = {}
    rows = []
    for multiple in PROBE_DISTANCES:
        distance = max(span, round(multiple * context))
        length = distance + span
        row: dict[str, Any] = {
            "multiple": multiple,
            "distance": distance,
            "span": span,
            "text_gain": None,
            "random_gain": None,
            "reason": None,
        }
        if length > longest or not where.allows(length) or length + 1 > len(tokens):
            row["reason"] = where.why or f"a probe of {length} tokens is longer than eval.contexts' {longest}"
        else:
            rng = np.random.default_rng([cfg.eval.seed, distance])
            starts = rng.integers(0, len(tokens) - length, PROBE_SPANS)
            # The text control is the span of another seeded place; the random one, other random ids.
            control_starts = rng.integers(0, len(tokens) - span, PROBE_SPANS)
            text_spans = np.stack([tokens[s : s + span] for s in starts])
            fillers = np.stack([tokens[s + span : s + distance] for s in starts])
            random_spans = rng.integers(3, vocab, (PROBE_SPANS, span))  # ids 0-2 are <unk>, <s>, </s>
            controls = {
                "text": np.stack([tokens[s : s + span] for s in control_starts]),
                "random": rng.integers(3, vocab, (PROBE_SPANS, span)),
            }
            for kind, spans in (("text", text_spans), ("random", random_spans)):
                # The second copy ends both sequences: its losses are the last span - 1 (targets 1 .. span - 1).
                per_batch = _per_batch(cfg, length, device)
                copied = np.concatenate([spans, fillers, spans], axis=1)
                control = np.concatenate([controls[kind], fillers, spans], axis=1)
                with_copy = _batched(model, copied, amp, device, per_batch, last=span - 1)
                without = _batched(model, control, amp, device, per_batch, last=span - 1)
                row[f"{kind}_gain"] = round(float(with_copy.mean() - without.mean()), 6)
        for kind in ("text", "random"):
            metrics[f"copy_gain_{kind}_at_{metric_suffix(multiple)}"] = row[f"{kind}_gain"]
        rows.append(row)
    return metrics, rows


def attention_summary(model, tokens, cfg: Config, device, where: Reach) -> tuple[dict[str, float | None], list[dict]]:
    """attn_distance_l<i>_at_<m>x and attn_entropy_l<i>_at_<m>x at 1x and the longest context."""
    metrics: dict[str, float | None] = {}
    rows = []
    context = cfg.train.context
    for multiple in sorted({1.0, max(cfg.eval.contexts)}):
        window = round(multiple * context)
        n_layers = model.args.n_layers
        names = [
            (f"attn_distance_l{i}_at_{metric_suffix(multiple)}", f"attn_entropy_l{i}_at_{metric_suffix(multiple)}")
            for i in range(n_layers)
        ]
        count = min(ATTENTION_WINDOWS, (len(tokens) - 1) // window)
        if not where.allows(window) or count == 0:
            metrics.update({name: None for pair in names for name in pair})
            rows.append(
                {
                    "multiple": multiple,
                    "layer": None,
                    "distance": None,
                    "entropy": None,
                    "reason": where.why or "the test split is shorter than one window",
                }
            )
            continue
        windows = np.stack([tokens[i * window : (i + 1) * window] for i in range(count)]).astype(np.int64)
        maps = model.attention_maps(torch.from_numpy(windows).to(device))
        offsets = torch.arange(window, device=device)
        distance_of = (offsets[:, None] - offsets[None, :]).clamp(min=0).float()  # (T, T): |i - j| for j <= i
        for layer, probabilities in enumerate(maps):  # (B, H, T, T)
            probabilities = probabilities.float()
            distance = float((probabilities * distance_of).sum(-1).mean())
            entropy = float(-(probabilities * probabilities.clamp(min=1e-30).log()).sum(-1).mean())
            metrics[names[layer][0]], metrics[names[layer][1]] = round(distance, 6), round(entropy, 6)
            rows.append(
                {
                    "multiple": multiple,
                    "layer": layer,
                    "distance": round(distance, 6),
                    "entropy": round(entropy, 6),
                    "reason": None,
                }
            )
    return metrics, rows


def context_use(model, tokens: np.ndarray, cfg: Config, device, amp) -> tuple[dict[str, Any], dict[str, list[dict]]]:
    """The metrics (for metrics/eval.json) and the curves (for plots/eval/) of the four diagnostics."""
    where = reach(model, cfg)
    context, longest = cfg.train.context, max(cfg.eval_contexts)
    metrics: dict[str, Any] = {}
    bounds = [0.0] + [m for m in sorted(set(cfg.eval.contexts)) if m >= 1]  # bands [0, L), [L, 2L), ...
    bands = list(itertools.pairwise(bounds))
    if where.allows(longest) and len(tokens) > longest:
        by_position = loss_by_position(model, tokens, cfg, device, amp, longest)
        position_rows = [
            {"position": i, "loss": round(float(loss), 6), "reason": None} for i, loss in enumerate(by_position)
        ]
        for low, high in bands:
            band = by_position[round(low * context) : round(high * context)]
            metrics[f"band_loss_{metric_suffix(low)[:-1]}to{metric_suffix(high)}"] = round(float(band.mean()), 6)
    else:
        position_rows = [{"position": None, "loss": None, "reason": where.why}]
        metrics.update({f"band_loss_{metric_suffix(low)[:-1]}to{metric_suffix(high)}": None for low, high in bands})
        log.info("loss by position: null, %s", where.why)
    metrics.update(context_gains(model, tokens, cfg, device, amp, where))
    copy_metrics, retrieval_rows = copy_probe(model, tokens, cfg, device, amp, where)
    attention_metrics, attention_rows = attention_summary(model, tokens, cfg, device, where)
    metrics.update(copy_metrics)
    metrics.update(attention_metrics)
    curves = {"loss_by_position": position_rows, "retrieval": retrieval_rows, "attention": attention_rows}
    return metrics, curves
