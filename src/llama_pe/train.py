"""Training: AdamW, warmup plus cosine decay, clipping, accumulation, evaluation, early stopping and resume."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from llama_pe import distributed
from llama_pe.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from llama_pe.config import Config, TrainConfig
from llama_pe.data.tokenizer import MODEL_FILE, read_tokenizer_model
from llama_pe.data.tokens import check_tokenizer, load_splits
from llama_pe.device import FUSED_ADAMW_DEVICES, autocast, resolve_device, resolve_precision
from llama_pe.distributed import ONE_PROCESS, Ranks
from llama_pe.errors import ConfigError, DataError, LlamaPeError
from llama_pe.io import remove_path, write_json
from llama_pe.model import build_model, model_args_from_config
from llama_pe.provenance import code_fingerprint

log = logging.getLogger(__name__)


class TrainingError(LlamaPeError, RuntimeError):
    """Training cannot go on (a non-finite loss); the last good checkpoint is kept."""


# ---------------------------------------------------------------------------------------------- schedule & optimizer


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based): a pure function, so resuming cannot shift it."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = max(cfg.total_steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / decay_steps, 1.0)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices of attention and feed-forward only."""
    # Embeddings and the output head, tied or not, are lookup tables of the vocabulary rather than layers; a tied
    # head is the embedding itself, so an untied one is spared too and both variants regularise alike.
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)} | {id(model.output.weight)}
    # A position encoding's own parameters (T5's table, FIRE's MLP, ALiBi's slopes) are not layers either.
    positions = getattr(model, "positions", None)
    encoding = {id(p) for p in positions.parameters()} if isinstance(positions, nn.Module) else set()
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        # Norm gains and biases (1-D) are not decayed either.
        (no_decay if param.ndim < 2 or id(param) in tables | encoding else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type in FUSED_ADAMW_DEVICES)


# ---------------------------------------------------------------------------------------------- data


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


@torch.no_grad()
def evaluate(
    model: nn.Module, windows: torch.Tensor, batch_size: int, device: torch.device, amp, ranks: Ranks = ONE_PROCESS
) -> float:
    """Mean loss in nats per token over the windows (all the same length, so the mean of means is exact).

    With several processes each scores every world_size-th window and the sums are added up.
    """
    model.eval()
    total = 0.0
    mine = windows[ranks.rank :: ranks.world_size]
    for batch in mine.split(batch_size):
        batch = batch.to(device)
        with amp:
            _, loss = model(batch[:, :-1], batch[:, 1:])
        total += loss.item() * batch.shape[0]
    model.train()
    total, count = distributed.sum_over_ranks([total, float(mine.shape[0])], ranks, device)
    return total / count


# ---------------------------------------------------------------------------------------------- state


@dataclass
class TrainState:
    """Everything besides weights and optimizer that a resumed run needs to continue exactly."""

    step: int = 0
    tokens: int = 0
    best_val_loss: float = math.inf
    best_step: int = 0
    best_tokens: int = 0
    evals_since_best: int = 0
    train_seconds: float = 0.0  # training steps only: what tokens_per_sec divides by
    val_seconds: float = 0.0  # validations and the checkpoints written after them
    history: list[dict[str, float]] = field(default_factory=list)  # every logged point, replayed on resume

    def finished(self, cfg: TrainConfig) -> bool:
        """The budget is spent or early stopping has ended the run."""
        return self.step >= cfg.total_steps or bool(cfg.patience and self.evals_since_best >= cfg.patience)


def run_settings(cfg: Config, meta: dict[str, Any]) -> dict[str, Any]:
    """The params and data a run trains with, flat ("model.pos": "rope", "data.vocab_size": 8192, ...)."""
    return _flatten({"model": dataclasses.asdict(cfg.model), "train": dataclasses.asdict(cfg.train), "data": meta})


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def provenance(cfg: Config, meta: dict[str, Any]) -> dict[str, Any]:
    """What made a checkpoint: its params and data, and the sha256 of every source file the train stage runs.

    A checkpoint is resumed only when all of it is the same, so that dvc.lock never records new code beside
    weights that old code trained.
    """
    return {"params": run_settings(cfg, meta), "code": code_fingerprint(__name__)}


def rng_states(sampler: BatchSampler, ranks: Ranks = ONE_PROCESS) -> dict[str, Any]:
    """The random states to resume from; dropout's differ between ranks, so every rank's is kept (a collective)."""
    own = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        own["cuda"] = torch.cuda.get_rng_state_all()
    by_rank = distributed.gather_to_main(own, ranks)
    return {**by_rank[0], "sampler": sampler.generator.get_state(), "ranks": by_rank}


def restore_rng_states(states: dict[str, Any], sampler: BatchSampler, ranks: Ranks = ONE_PROCESS) -> None:
    own = states["ranks"][ranks.rank] if len(states.get("ranks", [])) == ranks.world_size else states
    torch.set_rng_state(own["torch"])
    sampler.generator.set_state(states["sampler"])
    if "cuda" in own and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(own["cuda"])


# ---------------------------------------------------------------------------------------------- the loop


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    sampler: BatchSampler,
    cfg: TrainConfig,
    lr: float,
    device: torch.device,
    amp,
) -> float:
    """One optimizer step over grad_accum micro-batches; returns the mean training loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    total = 0.0
    for _ in range(cfg.grad_accum):
        x, y = sampler.next(device)
        with amp:
            _, loss = model(x, y)
        scaler.scale(loss / cfg.grad_accum).backward()
        total += loss.item() / cfg.grad_accum
    if cfg.grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return total


@dataclass
class Paths:
    encoded: Path
    tokenizer: Path
    best: Path
    last: Path
    metrics: Path
    live: Path


def check_data(cfg: Config, splits: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Before any training: the data fits the training and the evaluation contexts and was chunked for them."""
    if meta["split"] != cfg.data.split or meta["chunk_tokens"] != cfg.chunk_tokens:
        raise DataError(
            f"the encoded data was made with data.split={meta['split']} and chunks of {meta['chunk_tokens']} tokens, "
            f"but params ask for data.split={cfg.data.split} and chunks of {cfg.chunk_tokens} (train.context + 1 "
            f"with random_chunks): rerun the encode stage (`dvc repro`)"
        )
    cfg.check_split_lengths({name: len(tokens) for name, tokens in splits.items()})


def train(cfg: Config, paths: Paths, stop_after: int | None = None) -> dict[str, Any] | None:
    """Train from scratch or resume paths.last; return the metrics written to paths.metrics.

    stop_after ends this call after that many steps, as a kill would, and returns None; a later call resumes.
    """
    tcfg = cfg.train
    splits, meta = load_splits(paths.encoded)
    check_data(cfg, splits, meta)
    device = resolve_device(tcfg.device)
    precision = resolve_precision(tcfg.precision, device)
    tokenizer_model = read_tokenizer_model(paths.tokenizer)
    check_tokenizer(tokenizer_model, meta, str(paths.tokenizer / MODEL_FILE))
    ranks = distributed.init(device)
    device = distributed.device_for(device, ranks)
    if tcfg.batch_size % ranks.world_size:
        raise ConfigError(
            f"train.batch_size: {tcfg.batch_size} windows cannot be split evenly between {ranks.world_size} "
            f"processes (torchrun's world size); use a multiple of {ranks.world_size}"
        )

    torch.manual_seed(tcfg.seed)
    args = model_args_from_config(cfg.model, vocab_size=meta["vocab_size"], context=tcfg.context)
    model = build_model(args).to(device)
    if ranks.distributed:
        torch.manual_seed(tcfg.seed + 1_000_003 * ranks.rank)  # the same weights everywhere, dropout masks of its own
    optimizer = make_optimizer(model, tcfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    sampler = BatchSampler(splits["train"], tcfg.context, tcfg.batch_size, tcfg.seed, cfg.chunk_tokens, ranks)
    val_windows = eval_windows(splits["val"], tcfg.context, tcfg.eval_windows, cfg.chunk_tokens)
    made_by = provenance(cfg, meta)
    state = _resume(paths.last, made_by, tcfg, model, optimizer, scaler, sampler, ranks)
    # DDP averages the gradients of the ranks' shares in backward, so each step is the global batch's step.
    trained = torch.nn.parallel.DistributedDataParallel(model) if ranks.distributed else model
    forward = torch.compile(trained) if tcfg.compile else trained
    amp = autocast(device, precision)
    log.info(
        "model.impl=%s model.pos=%s: %s parameters on %s (%s); %d steps of %d tokens",
        args.impl,
        args.pos,
        f"{model.num_params():,}",
        device,
        precision,
        tcfg.total_steps,
        tcfg.tokens_per_step,
    )

    def checkpoint(path: Path) -> None:
        # The best checkpoint is for evaluation and export; only the last one carries the resume state.
        # Every rank comes here at the same steps (their losses are the same), so the gather inside can run.
        resume = {}
        if path != paths.best:
            resume = {
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": rng_states(sampler, ranks),
            }
        # Through JSON, so the history's keys are shared strings whether it was built here or loaded by a resume
        # (pickle writes a shared string once and refers back to it: other sharing, other bytes).
        saved_state = json.loads(json.dumps(dataclasses.asdict(state)))
        if path == paths.best:
            # Timings differ from run to run. Without them the best checkpoint's bytes are what the code, params
            # and data make, so a re-run lands on the hash dvc.lock records (and `--exp` finds it in the cache).
            del saved_state["train_seconds"], saved_state["val_seconds"]
        if ranks.is_main:
            save_checkpoint(path, model, tokenizer_model, state=saved_state, provenance=made_by, **resume)

    with _live(paths.live) if ranks.is_main else _NoLive() as live:
        for point in state.history:  # a resumed run rewrites the curves it had, so they match an unbroken run
            _log_point(live, point)
        loop = Loop(forward, optimizer, scaler, sampler, val_windows, tcfg, device, amp, live, checkpoint, paths, ranks)
        finished = loop.run(state, stop_after)
    if not finished:
        return None
    metrics = final_metrics(state, tcfg, meta, splits, model, device, precision)
    if ranks.is_main:
        write_json(paths.metrics, metrics)
    log.info(
        "best val loss %.4f nats/token (%.4f bits/char) at step %d",
        metrics["best_val_loss"],
        metrics["best_val_bpc"],
        metrics["best_step"],
    )
    return metrics


class _NoLive:
    """DVCLive's place on the ranks that do not write: rank 0 writes the curves."""

    step = 0

    def __enter__(self) -> _NoLive:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def log_metric(self, name: str, value: float) -> None:
        return None


def _live(directory: Path):
    from dvclive import Live  # imported here: slow, and only the loop needs it
    from scmrepo.exceptions import SCMError

    try:
        # dvcyaml=False and save_dvc_exp=False: DVCLive's defaults would rewrite dvc.yaml and make experiments itself.
        return Live(str(directory), resume=False, dvcyaml=False, save_dvc_exp=False, report=None)
    except SCMError as err:
        raise TrainingError(
            f"DVCLive cannot log to {directory}: {err}. It needs a git repository with at least one commit: "
            f"run `git add -A && git commit -m init` first"
        ) from None


def _log_point(live, point: dict[str, float]) -> None:
    live.step = int(point["step"])
    for name, value in point.items():
        if name != "step":
            live.log_metric(name, value)


@dataclass
class Loop:
    forward: Callable
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    sampler: BatchSampler
    val_windows: torch.Tensor
    cfg: TrainConfig
    device: torch.device
    amp: Any
    live: Any
    checkpoint: Callable[[Path], None]
    paths: Paths
    ranks: Ranks = ONE_PROCESS

    def run(self, state: TrainState, stop_after: int | None) -> bool:
        """Step until the budget or early stopping; False if stop_after ended it first."""
        cfg = self.cfg
        bar = tqdm(
            total=cfg.total_steps,
            initial=state.step,
            desc="train",
            unit="step",
            mininterval=1.0,
            disable=not self.ranks.is_main,
        )
        steps_here = 0
        with logging_redirect_tqdm(), bar:  # log lines print above the bar instead of through it
            while not state.finished(cfg):
                if stop_after is not None and steps_here >= stop_after:
                    return False
                started = time.perf_counter()
                lr = lr_at(state.step, cfg)
                loss = train_step(
                    self.forward, self.optimizer, self.scaler, self.sampler, cfg, lr, self.device, self.amp
                )
                loss = distributed.mean_over_ranks(loss, self.ranks, self.device)  # the global batch's loss
                if not math.isfinite(loss):
                    self._diverged(state, "training", loss)
                state.step, steps_here = state.step + 1, steps_here + 1
                state.tokens += cfg.tokens_per_step
                point = {"step": state.step, "train/loss": loss, "train/lr": lr, "train/tokens": state.tokens}
                self._record(state, point)
                state.train_seconds += time.perf_counter() - started
                if state.step % cfg.eval_interval == 0 or state.step == cfg.total_steps:
                    started = time.perf_counter()
                    self._evaluate(state)
                    state.val_seconds += time.perf_counter() - started
                bar.update()
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{state.tokens / state.train_seconds:,.0f}")
        return True

    def _diverged(self, state: TrainState, which: str, loss: float) -> None:
        kept = f"the last good checkpoint {self.paths.last} is kept" if self.paths.last.exists() else "no checkpoint"
        raise TrainingError(
            f"step {state.step}: the {which} loss is {loss}; training stopped ({kept}). "
            f"Try a lower train.lr, train.grad_clip > 0 or train.precision=fp32"
        )

    def _record(self, state: TrainState, point: dict[str, float]) -> None:
        state.history.append(point)
        _log_point(self.live, point)

    def _evaluate(self, state: TrainState) -> None:
        val_loss = evaluate(self.forward, self.val_windows, self.cfg.eval_batch_size, self.device, self.amp, self.ranks)
        if not math.isfinite(val_loss):
            self._diverged(state, "validation", val_loss)
        self._record(state, {"step": state.step, "val/loss": val_loss, "val/tokens": state.tokens})
        if val_loss < state.best_val_loss:
            state.best_val_loss, state.best_step, state.best_tokens = val_loss, state.step, state.tokens
            state.evals_since_best = 0
            self.checkpoint(self.paths.best)
        else:
            state.evals_since_best += 1
        log.info(
            "step %d: val loss %.4f (best %.4f at step %d)", state.step, val_loss, state.best_val_loss, state.best_step
        )
        self.checkpoint(self.paths.last)


def final_metrics(
    state: TrainState,
    cfg: TrainConfig,
    meta: dict[str, Any],
    splits: dict[str, np.ndarray],
    model: nn.Module,
    device: torch.device,
    precision: str,
) -> dict[str, Any]:
    """Flat, short keys, so that `dvc exp show` columns stay readable."""
    val = meta["splits"]["val"]
    nats_to_bpc = val["tokens"] / (val["chars"] * math.log(2))  # per token -> per character, in bits
    unigram = unigram_loss(splits["train"], splits["val"], meta["vocab_size"])
    return {
        # "best_" sets them apart from the evaluate stage's val_loss and val_bpc in `dvc exp show`.
        "best_val_loss": round(state.best_val_loss, 6),
        "best_val_bpc": round(state.best_val_loss * nats_to_bpc, 6),
        "unigram_val_bpc": round(unigram * nats_to_bpc, 6),
        "best_step": state.best_step,
        "best_tokens": state.best_tokens,
        "trained_steps": state.step,
        "trained_tokens": state.tokens,
        "stopped_early": state.step < cfg.total_steps,
        "tokens_per_sec": round(state.tokens / max(state.train_seconds, 1e-9), 1),  # training steps only
        "wall_time_s": round(state.train_seconds + state.val_seconds, 2),
        "val_time_s": round(state.val_seconds, 2),  # validations and checkpoints, inside wall_time_s
        "params": model.num_params(),
        "device": device.type,
        "precision": precision,
    }


def unigram_loss(train_tokens: np.ndarray, val_tokens: np.ndarray, vocab_size: int) -> float:
    """Nats per val token of a unigram model of the train split (add-one smoothing): the floor to beat."""
    counts = np.bincount(np.asarray(train_tokens, dtype=np.int64), minlength=vocab_size) + 1.0
    log_probs = np.log(counts / counts.sum())
    return float(-log_probs[np.asarray(val_tokens, dtype=np.int64)].mean())


def _resume(
    path: Path, made_by: dict[str, Any], cfg: TrainConfig, model, optimizer, scaler, sampler, ranks: Ranks = ONE_PROCESS
) -> TrainState:
    """The state to continue from: path's, if it is an unfinished run of these params, data and code; else fresh.

    Every rank reads the file and comes to the same answer; only rank 0 moves a damaged one aside (a rank that
    looks after the move finds no file: a fresh start too).
    """
    if not path.exists():
        return TrainState()
    try:
        checkpoint = load_checkpoint(path)
        state = TrainState(**checkpoint["state"])
    except (CheckpointError, KeyError, TypeError) as err:
        reason = err.reason if isinstance(err, CheckpointError) else f"no valid training state: {err!r}"
        aside = path.with_name(path.name + ".damaged")
        if ranks.is_main:
            remove_path(aside)  # an older one: a folder would block the rename, a file would be replaced anyway
            path.replace(aside)  # kept for a post-mortem, out of the way of the fresh run
        log.warning("%s cannot be resumed (%s); it is kept as %s and training starts from scratch", path, reason, aside)
        return TrainState()
    why_not = _why_not_resume(checkpoint.get("provenance"), made_by, state, cfg)
    if why_not:
        log.info("%s %s: training from scratch", path, why_not)
        return TrainState()
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])
    restore_rng_states(checkpoint["rng"], sampler, ranks)
    log.info("resuming from %s at step %d (%s tokens)", path, state.step, f"{state.tokens:,}")
    return state


def _differing(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key))


def _why_not_resume(saved: dict[str, Any] | None, made_by: dict[str, Any], state: TrainState, cfg: TrainConfig) -> str:
    if not (isinstance(saved, dict) and isinstance(saved.get("params"), dict) and isinstance(saved.get("code"), dict)):
        return "records no provenance this version can read (an older version wrote it)"
    if saved["params"] != made_by["params"]:
        changes = [
            f"{key}: {saved['params'].get(key)!r} -> {made_by['params'].get(key)!r}"
            for key in _differing(saved["params"], made_by["params"])
        ]
        more = f" and {len(changes) - 5} more" if len(changes) > 5 else ""
        return f"was made with other params or data ({'; '.join(changes[:5])}{more})"
    if saved["code"] != made_by["code"]:
        return f"was made by other code (changed since: {', '.join(_differing(saved['code'], made_by['code']))})"
    if state.finished(cfg):
        # The train stage runs again on a finished run only when forced (`dvc repro -f train`) or when its
        # outputs were lost or altered: either way the answer is to train again, not to keep the old weights.
        return f"holds a finished run (step {state.step})"
    return ""
