"""Held-out quality and length extrapolation: every token scored once, perplexity as exp of the mean loss."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm
import torch
import torch.nn.functional as F
from torch import nn

from llama_pe.core.checkpoint import load_checkpoint, model_from_checkpoint
from llama_pe.core.context_use import context_use
from llama_pe.core.data.tokens import check_tokenizer, load_splits
from llama_pe.core.device import autocast, resolve_device, resolve_precision, windows_per_batch
from llama_pe.core.generate import generate
from llama_pe.core.model.rope_scaling import ROPE_SCALING_METHODS, RopeScaling
from llama_pe.io import write_json, write_text
from llama_pe.metrics import metric_suffix
from llama_pe.positions.catalogue import ENCODINGS
from llama_pe.settings.config import Config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Window:
    """Inputs tokens[start:end], targets tokens[start+1:end+1]; only the last `scored` targets count."""

    start: int
    end: int
    scored: int


def window_plan(n_tokens: int, context: int, stride: int | None = None) -> list[Window]:
    """Windows that score each of the n_tokens - 1 targets exactly once.

    stride None: non-overlapping windows of `context` inputs. Otherwise sliding windows, as in the ALiBi paper:
    each window has up to `context` inputs but scores only its last `stride` targets, so every scored token sees
    at least context - stride tokens before it (the first window scores all of its targets).
    """
    n_targets = n_tokens - 1
    if stride is None:
        return [
            Window(s, min(s + context, n_targets), min(context, n_targets - s)) for s in range(0, n_targets, context)
        ]
    first = min(context, n_targets)
    plan = [Window(0, first, first)]
    for end in range(first + stride, n_targets + stride, stride):
        end = min(end, n_targets)
        plan.append(Window(max(0, end - context), end, end - plan[-1].end))
    return plan


def segment_starts(n_tokens: int, chunk_tokens: int | None) -> list[int]:
    """Where each independent text of a split begins: one contiguous text, or one chunk per sample."""
    return [0] if chunk_tokens is None else list(range(0, n_tokens - chunk_tokens + 1, chunk_tokens))


def split_plan(n_tokens: int, context: int, stride: int | None, chunk_tokens: int | None) -> list[Window]:
    """window_plan over each segment of a split: no window crosses from one chunk into the next."""
    if chunk_tokens is None:
        return window_plan(n_tokens, context, stride)
    inside = window_plan(chunk_tokens, context, stride)
    return [
        Window(offset + w.start, offset + w.end, w.scored)
        for offset in segment_starts(n_tokens, chunk_tokens)
        for w in inside
    ]


@torch.no_grad()
def total_loss(model: nn.Module, tokens: np.ndarray, plan: list[Window], batch_size: int, device, amp) -> float:
    """Sum of the negative log-likelihoods (nats) of every scored target."""
    total = 0.0
    by_length: dict[int, list[Window]] = {}
    for window in plan:  # windows of one length batch together; only the last one or two differ
        by_length.setdefault(window.end - window.start, []).append(window)
    for length, windows in by_length.items():
        step = windows_per_batch(batch_size, length, device)
        for i in range(0, len(windows), step):
            batch = windows[i : i + step]
            rows = np.stack([tokens[w.start : w.end + 1] for w in batch]).astype(np.int64)
            rows = torch.from_numpy(rows).to(device)  # (B, length + 1)
            keep = max(w.scored for w in batch)  # logits only where some window scores: a sliding window scores few
            with amp:
                logits, _ = model(rows[:, :-1], last=keep)  # (B, keep, vocab)
            losses = F.cross_entropy(  # over rows of contiguous logits: a transposed layout is 2x slower
                logits.float().reshape(-1, logits.shape[-1]), rows[:, -keep:].reshape(-1), reduction="none"
            ).view(len(batch), keep)  # (B, keep)
            scored = (
                torch.arange(keep, device=device)[None, :]
                >= torch.tensor([keep - w.scored for w in batch], device=device)[:, None]
            )
            total += float(losses[scored].sum())
    return total


@dataclass(frozen=True)
class Score:
    nats: float
    tokens: int
    chars: int

    @property
    def loss(self) -> float:
        return self.nats / self.tokens

    @property
    def ppl(self) -> float:
        return math.exp(self.loss)  # exp of the mean over all tokens, not a mean of per-batch perplexities

    @property
    def bpc(self) -> float:
        return self.nats / (math.log(2) * self.chars)


def score_split(
    model,
    tokens,
    chars: int,
    context: int,
    stride: int | None,
    batch_size: int,
    device,
    amp,
    chunk_tokens: int | None = None,
) -> Score:
    """`chars`: the characters of the scored targets (target_chars): every token but each segment's first."""
    plan = split_plan(len(tokens), context, stride, chunk_tokens)
    scored = sum(w.scored for w in plan)
    return Score(total_loss(model, tokens, plan, batch_size, device, amp), scored, chars)


def target_chars(sp: spm.SentencePieceProcessor, tokens: np.ndarray, split_chars: int, chunk_tokens: int | None) -> int:
    """The split's characters less those of each segment's first token, which nothing predicts."""
    firsts = [int(tokens[start]) for start in segment_starts(len(tokens), chunk_tokens)]
    return split_chars - sum(len(sp.decode([token])) for token in firsts)


MODES = ("nonoverlapping", "sliding")


def extrapolation(model, tokens, chars, cfg: Config, device, amp, known: dict | None = None) -> list[dict[str, Any]]:
    """Test perplexity at every eval context: one row per context, one column per window mode.

    known: scores already computed, by (context, stride), such as the test split's at the training context.
    """
    known = dict(known or {})
    rows = []
    for multiple, context in zip(cfg.eval.contexts, cfg.eval_contexts, strict=True):
        row: dict[str, Any] = {"context": context, "multiple": multiple, **{f"{m}_ppl": None for m in MODES}}
        row.update({f"{method}_ppl": None for method in ROPE_SCALING_METHODS})  # rope_scaled_ppls fills them
        row["reason"] = None
        # Recorded as null with the reason: neither a crash nor a made-up number.
        if model.max_positions is not None and context > model.max_positions:
            row["reason"] = f"model.pos={model.args.pos} places {model.max_positions} positions, not {context}"
        elif cfg.chunk_tokens is not None and context > cfg.chunk_tokens - 1:
            row["reason"] = (
                f"data.split=random_chunks: every sample is one chunk of {cfg.chunk_tokens} tokens of shuffled text, "
                f"so no context longer than {cfg.chunk_tokens - 1} exists to score"
            )
        else:
            for mode in MODES:
                stride = min(cfg.eval_stride, context) if mode == "sliding" else None
                if (context, stride) not in known:
                    known[context, stride] = score_split(
                        model, tokens, chars, context, stride, cfg.eval.batch_size, device, amp, cfg.chunk_tokens
                    )
                score = known[context, stride]
                row[f"{mode}_ppl"] = round(score.ppl, 4)
            row.update(rope_scaled_ppls(model, tokens, chars, context, cfg, device, amp, row["nonoverlapping_ppl"]))
        rows.append(row)
        log.info("context %d (%gx): %s", context, multiple, row)
    return rows


def rope_scaled_ppls(model, tokens, chars, context: int, cfg: Config, device, amp, unscaled: float) -> dict:
    """Test perplexity with non-overlapping windows of `context` tokens, once per eval.rope_scaling method with
    the rotary frequencies stretched by context / train.context; null for a method not asked for or a model
    without rotary positions. Up to the training length every method is the identity: the unscaled figure."""
    ppls: dict[str, float | None] = {f"{method}_ppl": None for method in ROPE_SCALING_METHODS}
    if not cfg.eval.rope_scaling or not ENCODINGS[model.args.pos].rotary:
        return ppls
    for method in cfg.eval.rope_scaling:
        if context <= cfg.train.context:
            ppls[f"{method}_ppl"] = unscaled
            continue
        scaling = RopeScaling(method, factor=context / cfg.train.context, original_context=cfg.train.context)
        with model.scaled_rope(scaling):
            score = score_split(model, tokens, chars, context, None, cfg.eval.batch_size, device, amp, cfg.chunk_tokens)
        ppls[f"{method}_ppl"] = round(score.ppl, 4)
    return ppls


def samples_text(model, tokenizer_model: bytes, cfg: Config) -> str:
    """Seeded continuations of fixed prompts, in a text file two experiments can be diffed on."""
    sp = spm.SentencePieceProcessor(model_proto=tokenizer_model)
    e = cfg.eval
    parts = [f"# model.pos={model.args.pos}, temperature {e.temperature}, top_k {e.top_k}, seed {e.seed}\n"]
    for i, prompt in enumerate(e.sample_prompts):
        new = generate(model, sp.encode(prompt), e.sample_tokens, e.temperature, e.top_k, e.seed + i)
        parts.append(f"\n=== prompt: {prompt!r}\n{prompt}{sp.decode(new)}\n")
    return "".join(parts)


def evaluate_checkpoint(
    cfg: Config, checkpoint: Path, encoded: Path, metrics: Path, curve: Path, samples: Path, context_curves: Path
):
    """Write metrics/eval.json, the extrapolation curve, the context-use curves (a folder) and the samples."""
    splits, meta = load_splits(encoded)
    cfg.check_split_lengths({name: len(tokens) for name, tokens in splits.items()})
    saved = load_checkpoint(checkpoint)
    check_tokenizer(saved["tokenizer_model"], meta, str(checkpoint))
    device = resolve_device(cfg.train.device)
    amp = autocast(device, resolve_precision(cfg.train.precision, device))
    model = model_from_checkpoint(saved, checkpoint).to(device)
    sp = spm.SentencePieceProcessor(model_proto=saved["tokenizer_model"])
    chunks = cfg.chunk_tokens
    chars = {name: target_chars(sp, splits[name], meta["splits"][name]["chars"], chunks) for name in ("val", "test")}
    context, batch_size = cfg.train.context, cfg.eval.batch_size
    scores = {
        name: score_split(model, splits[name], chars[name], context, None, batch_size, device, amp, chunks)
        for name in ("val", "test")
    }
    scores["holdout"] = Score(*(sum(getattr(s, f) for s in scores.values()) for f in ("nats", "tokens", "chars")))
    results: dict[str, Any] = {}
    for name, score in scores.items():
        results.update({f"{name}_loss": score.loss, f"{name}_ppl": score.ppl, f"{name}_bpc": score.bpc})
    known = {(context, None): scores["test"]}  # the 1x non-overlapping row is the test score itself
    curve_rows = extrapolation(model, splits["test"], chars["test"], cfg, device, amp, known)
    for row in curve_rows:
        results[f"ppl_at_{metric_suffix(row['multiple'])}"] = row["nonoverlapping_ppl"]
        results[f"sliding_ppl_at_{metric_suffix(row['multiple'])}"] = row["sliding_ppl"]
        for method in cfg.eval.rope_scaling if ENCODINGS[model.args.pos].rotary else ():
            if row["multiple"] > 1:  # the identity up to the training length: nothing new to record
                results[f"ppl_at_{metric_suffix(row['multiple'])}_{method}"] = row[f"{method}_ppl"]
    if cfg.eval.rope_scaling and not ENCODINGS[model.args.pos].rotary:
        log.info("eval.rope_scaling: skipped, model.pos=%s has no rotary positions to scale", model.args.pos)
    used, curves = context_use(model, splits["test"], cfg, device, amp)
    results.update(used)
    results = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in results.items()}
    write_json(metrics, results)
    write_json(curve, curve_rows)
    context_curves.mkdir(parents=True, exist_ok=True)
    for name, rows in curves.items():
        write_json(context_curves / f"{name}.json", rows)
    write_text(samples, samples_text(model, saved["tokenizer_model"], cfg))
    log.info(
        "test: loss %.4f, ppl %.2f, %.4f bits/char; val ∪ test: %.4f bits/char",
        results["test_loss"],
        results["test_ppl"],
        results["test_bpc"],
        results["holdout_bpc"],
    )
    return results
