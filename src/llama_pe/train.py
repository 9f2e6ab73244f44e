"""Training: AdamW, warmup plus cosine decay, clipping, accumulation, evaluation, early stopping and resume."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
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

from llama_pe.checkpoint import load_checkpoint, save_checkpoint
from llama_pe.config import Config, ConfigError, TrainConfig
from llama_pe.data.encode import META_FILE, read_tokens
from llama_pe.data.tokenizer import MODEL_FILE
from llama_pe.errors import LlamaPeError, MissingInputError
from llama_pe.io import write_json
from llama_pe.model import build_model, model_args_from_config

log = logging.getLogger(__name__)


class TrainingError(LlamaPeError, RuntimeError):
    """Training cannot go on (a non-finite loss); the last good checkpoint is kept."""


# ---------------------------------------------------------------------------------------------- device & precision


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda was asked for, but PyTorch sees no CUDA GPU; use auto or cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("train.device: mps was asked for, but PyTorch sees no Apple GPU; use auto or cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp16" if device.type == "cuda" else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.precision: fp16 needs a CUDA GPU (device is {device.type}); use bf16 or fp32")
    if name == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.precision: this GPU has no bf16; use fp16 or fp32")
    return name


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


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
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        # Norm gains, biases, ALiBi slopes (1-D) and embeddings (a tied head included) are not decayed.
        (no_decay if param.ndim < 2 or id(param) in embeddings else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")


# ---------------------------------------------------------------------------------------------- data


class BatchSampler:
    """Random windows of context + 1 tokens from one split, drawn from a seeded generator that resumes."""

    def __init__(self, tokens: np.ndarray, context: int, batch_size: int, seed: int) -> None:
        self.tokens, self.context, self.batch_size = tokens, context, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def next(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(len(self.tokens) - self.context, (self.batch_size,), generator=self.generator)
        windows = np.stack([self.tokens[s : s + self.context + 1] for s in starts.tolist()]).astype(np.int64)
        windows = torch.from_numpy(windows).to(device)  # (B, context + 1)
        return windows[:, :-1], windows[:, 1:]


def eval_windows(tokens: np.ndarray, context: int, limit: int | None) -> torch.Tensor:
    """Fixed, evenly spaced, non-overlapping windows of context + 1 tokens: the same at every evaluation."""
    n_windows = (len(tokens) - 1) // context
    starts = np.arange(n_windows) * context
    if limit is not None and limit < n_windows:
        starts = starts[np.linspace(0, n_windows - 1, limit).round().astype(int)]
    return torch.from_numpy(np.stack([tokens[s : s + context + 1] for s in starts]).astype(np.int64))


@torch.no_grad()
def evaluate(model: nn.Module, windows: torch.Tensor, batch_size: int, device: torch.device, amp) -> float:
    """Mean loss in nats per token over the windows (all the same length, so the mean of means is exact)."""
    model.eval()
    total = 0.0
    for batch in windows.split(batch_size):
        batch = batch.to(device)
        with amp:
            _, loss = model(batch[:, :-1], batch[:, 1:])
        total += loss.item() * batch.shape[0]
    model.train()
    return total / windows.shape[0]


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
    train_seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)  # every logged point, replayed on resume


def config_hash(cfg: Config, meta: dict[str, Any]) -> str:
    """Identifies what a checkpoint was trained on and with; a checkpoint with another hash is not resumed."""
    blob = json.dumps(
        {"model": dataclasses.asdict(cfg.model), "train": dataclasses.asdict(cfg.train), "data": meta},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def rng_states(sampler: BatchSampler) -> dict[str, Any]:
    states = {"torch": torch.get_rng_state(), "sampler": sampler.generator.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any], sampler: BatchSampler) -> None:
    torch.set_rng_state(states["torch"])
    sampler.generator.set_state(states["sampler"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


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


def check_data(cfg: TrainConfig, splits: dict[str, np.ndarray]) -> None:
    for name, tokens in splits.items():
        if len(tokens) < cfg.context + 1:
            raise ConfigError(
                f"train.context: {cfg.context} tokens do not fit the {name} split, which has {len(tokens)} tokens; "
                f"use a context of at most {len(tokens) - 1}"
            )


def load_splits(encoded: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    meta_path = encoded / META_FILE
    if not meta_path.is_file():
        raise MissingInputError(f"no encoded data at {encoded}: run the `encode` stage first (dvc repro encode)")
    meta = json.loads(meta_path.read_text())
    return {name: read_tokens(encoded / f"{name}.bin") for name in ("train", "val", "test")}, meta


def train(cfg: Config, paths: Paths, stop_after: int | None = None) -> dict[str, Any] | None:
    """Train from scratch or resume paths.last; return the metrics written to paths.metrics.

    stop_after ends this call after that many steps, as a kill would, and returns None; a later call resumes.
    """
    tcfg = cfg.train
    splits, meta = load_splits(paths.encoded)
    check_data(tcfg, splits)
    device = resolve_device(tcfg.device)
    precision = resolve_precision(tcfg.precision, device)
    tokenizer_model = (paths.tokenizer / MODEL_FILE).read_bytes()

    torch.manual_seed(tcfg.seed)
    args = model_args_from_config(cfg.model, vocab_size=meta["vocab_size"], context=tcfg.context)
    model = build_model(args).to(device)
    optimizer = make_optimizer(model, tcfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    sampler = BatchSampler(splits["train"], tcfg.context, tcfg.batch_size, seed=tcfg.seed)
    val_windows = eval_windows(splits["val"], tcfg.context, tcfg.eval_windows)
    run_hash = config_hash(cfg, meta)
    state = _resume(paths.last, run_hash, model, optimizer, scaler, sampler)
    forward = torch.compile(model) if tcfg.compile else model
    amp = autocast(device, precision)
    log.info(
        "model.impl=%s model.pos=%s: %s parameters on %s (%s); %d steps of %d tokens",
        args.impl, args.pos, f"{model.num_params():,}", device, precision, tcfg.total_steps, tcfg.tokens_per_step,
    )  # fmt: skip

    def checkpoint(path: Path) -> None:
        # The best checkpoint is for evaluation and export; only the last one carries the resume state.
        resume = {} if path == paths.best else {
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": rng_states(sampler),
        }  # fmt: skip
        save_checkpoint(path, model, tokenizer_model, state=dataclasses.asdict(state), config_hash=run_hash, **resume)

    with _live(paths.live) as live:
        for point in state.history:  # a resumed run rewrites the curves it had, so they match an unbroken run
            _log_point(live, point)
        loop = Loop(forward, optimizer, scaler, sampler, val_windows, tcfg, device, amp, live, checkpoint, paths)
        finished = loop.run(state, stop_after)
    if not finished:
        return None
    metrics = final_metrics(state, tcfg, meta, splits, model, device, precision)
    write_json(paths.metrics, metrics)
    log.info("best val loss %.4f nats/token (%.4f bits/char) at step %d",
             metrics["best_val_loss"], metrics["best_val_bpc"], metrics["best_step"])  # fmt: skip
    return metrics


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

    def run(self, state: TrainState, stop_after: int | None) -> bool:
        """Step until the budget or early stopping; False if stop_after ended it first."""
        cfg = self.cfg
        bar = tqdm(total=cfg.total_steps, initial=state.step, desc="train", unit="step", mininterval=1.0)
        steps_here = 0
        with logging_redirect_tqdm(), bar:  # log lines print above the bar instead of through it
            while state.step < cfg.total_steps and not (cfg.patience and state.evals_since_best >= cfg.patience):
                if stop_after is not None and steps_here >= stop_after:
                    return False
                started = time.perf_counter()
                lr = lr_at(state.step, cfg)
                loss = train_step(self.forward, self.optimizer, self.scaler, self.sampler, cfg, lr, self.device,
                                  self.amp)  # fmt: skip
                if not math.isfinite(loss):
                    self._diverged(state, "training", loss)
                state.step, steps_here = state.step + 1, steps_here + 1
                state.tokens += cfg.tokens_per_step
                point = {"step": state.step, "train/loss": loss, "train/lr": lr, "train/tokens": state.tokens}
                self._record(state, point)
                if state.step % cfg.eval_interval == 0 or state.step == cfg.total_steps:
                    self._evaluate(state)
                state.train_seconds += time.perf_counter() - started
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
        val_loss = evaluate(self.forward, self.val_windows, self.cfg.eval_batch_size, self.device, self.amp)
        if not math.isfinite(val_loss):
            self._diverged(state, "validation", val_loss)
        self._record(state, {"step": state.step, "val/loss": val_loss, "val/tokens": state.tokens})
        if val_loss < state.best_val_loss:
            state.best_val_loss, state.best_step, state.best_tokens = val_loss, state.step, state.tokens
            state.evals_since_best = 0
            self.checkpoint(self.paths.best)
        else:
            state.evals_since_best += 1
        log.info("step %d: val loss %.4f (best %.4f at step %d)", state.step, val_loss, state.best_val_loss,
                 state.best_step)  # fmt: skip
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
        "tokens_per_sec": round(state.tokens / max(state.train_seconds, 1e-9), 1),
        "wall_time_s": round(state.train_seconds, 2),
        "params": model.num_params(),
        "device": device.type,
        "precision": precision,
    }


def unigram_loss(train_tokens: np.ndarray, val_tokens: np.ndarray, vocab_size: int) -> float:
    """Nats per val token of a unigram model of the train split (add-one smoothing): the floor to beat."""
    counts = np.bincount(np.asarray(train_tokens, dtype=np.int64), minlength=vocab_size) + 1.0
    log_probs = np.log(counts / counts.sum())
    return float(-log_probs[np.asarray(val_tokens, dtype=np.int64)].mean())


def _resume(path: Path, run_hash: str, model, optimizer, scaler, sampler) -> TrainState:
    if not path.is_file():
        return TrainState()
    checkpoint = load_checkpoint(path)
    if checkpoint.get("config_hash") != run_hash:
        log.info("%s was made with other params (config %s, now %s): training from scratch",
                 path, checkpoint.get("config_hash"), run_hash)  # fmt: skip
        return TrainState()
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])
    restore_rng_states(checkpoint["rng"], sampler)
    state = TrainState(**checkpoint["state"])
    log.info("resuming from %s at step %d (%s tokens)", path, state.step, f"{state.tokens:,}")
    return state
