"""Training: AdamW, warmup plus cosine decay, clipping, accumulation, evaluation, early stopping and resume."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from llama_pe.core import distributed
from llama_pe.core.checkpoint import save_checkpoint
from llama_pe.core.data.batches import BatchSampler, eval_windows
from llama_pe.core.data.tokenizer import MODEL_FILE, read_tokenizer_model
from llama_pe.core.data.tokens import check_tokenizer, load_splits
from llama_pe.core.device import (
    accelerator_name,
    autocast,
    cpu_identity,
    resolve_device,
    resolve_precision,
)
from llama_pe.core.distributed import ONE_PROCESS, Ranks
from llama_pe.core.live import NoLive, log_point, open_live
from llama_pe.core.model import build_model, model_args_from_config
from llama_pe.core.optimizer import LR_SCALE, lr_at, make_optimizer
from llama_pe.core.resume import TrainState, resume, rng_states, run_settings
from llama_pe.errors import ConfigError, DataError, TrainingError
from llama_pe.io import write_json
from llama_pe.provenance import code_fingerprint
from llama_pe.settings.config import Config, TrainConfig

__all__ = ["Paths", "TrainingError", "lr_at", "make_optimizer", "train", "train_step"]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- data


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
    """One optimizer step over grad_accum micro-batches at learning rate `lr` (times each group's lr_scale); returns
    the mean training loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get(LR_SCALE, 1.0)
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


def provenance(cfg: Config, meta: dict[str, Any]) -> dict[str, Any]:
    """What made a checkpoint: its params and data, and the sha256 of every source file the train stage runs.

    A checkpoint is resumed only when all of it is the same, so that dvc.lock never records new code beside
    weights that old code trained.
    """
    return {"params": run_settings(cfg, meta), "code": code_fingerprint(__name__)}


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
    state = resume(paths.last, made_by, tcfg, model, optimizer, scaler, sampler, ranks)
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

    checkpoints = Checkpointer(paths, model, tokenizer_model, made_by, optimizer, scaler, sampler, ranks)
    with open_live(paths.live) if ranks.is_main else NoLive() as live:
        for point in state.history:  # a resumed run rewrites the curves it had, so they match an unbroken run
            log_point(live, point)
        loop = Loop(
            forward=forward,
            optimizer=optimizer,
            scaler=scaler,
            sampler=sampler,
            val_windows=val_windows,
            cfg=tcfg,
            device=device,
            amp=amp,
            live=live,
            checkpoints=checkpoints,
            ranks=ranks,
        )
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


@dataclass
class Checkpointer:
    """Writes the two checkpoints: the best (weights, for evaluation and export) and the last (with the state to
    resume from). Every rank calls it at the same steps, as the gather of random states inside is a collective."""

    paths: Paths
    model: nn.Module
    tokenizer_model: bytes
    made_by: dict[str, Any]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    sampler: BatchSampler
    ranks: Ranks = ONE_PROCESS

    def save_best(self, state: TrainState) -> None:
        # Without timings, which differ from run to run, the best checkpoint's bytes are what the code, params and
        # data make, so a re-run lands on the hash dvc.lock records (and `--exp` finds it in the cache).
        saved = self._state(state)
        del saved["train_seconds"], saved["val_seconds"]
        self._save(self.paths.best, saved)

    def save_last(self, state: TrainState) -> None:
        resume_state = {
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_states(self.sampler, self.ranks),
        }
        self._save(self.paths.last, self._state(state), **resume_state)

    @staticmethod
    def _state(state: TrainState) -> dict[str, Any]:
        # Through JSON, so the history's keys are shared strings whether it was built here or loaded by a resume
        # (pickle writes a shared string once and refers back to it: other sharing, other bytes).
        return json.loads(json.dumps(dataclasses.asdict(state)))

    def _save(self, path: Path, state: dict[str, Any], **resume_state: Any) -> None:
        if self.ranks.is_main:
            save_checkpoint(
                path, self.model, self.tokenizer_model, state=state, provenance=self.made_by, **resume_state
            )


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
    checkpoints: Checkpointer
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
        last = self.checkpoints.paths.last
        kept = f"the last good checkpoint {last} is kept" if last.exists() else "no checkpoint"
        raise TrainingError(
            f"step {state.step}: the {which} loss is {loss}; training stopped ({kept}). "
            f"Try a lower train.lr, train.grad_clip > 0 or train.precision=fp32"
        )

    def _record(self, state: TrainState, point: dict[str, float]) -> None:
        state.history.append(point)
        log_point(self.live, point)

    def _evaluate(self, state: TrainState) -> None:
        val_loss = evaluate(self.forward, self.val_windows, self.cfg.eval_batch_size, self.device, self.amp, self.ranks)
        if not math.isfinite(val_loss):
            self._diverged(state, "validation", val_loss)
        self._record(state, {"step": state.step, "val/loss": val_loss, "val/tokens": state.tokens})
        if val_loss < state.best_val_loss:
            state.best_val_loss, state.best_step, state.best_tokens = val_loss, state.step, state.tokens
            state.evals_since_best = 0
            self.checkpoints.save_best(state)
        else:
            state.evals_since_best += 1
        log.info(
            "step %d: val loss %.4f (best %.4f at step %d)", state.step, val_loss, state.best_val_loss, state.best_step
        )
        self.checkpoints.save_last(state)


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
        **cpu_identity(),  # the machine: float rounding differs between CPU generations, ISAs and thread counts
        "accelerator": accelerator_name(device),
    }


def unigram_loss(train_tokens: np.ndarray, val_tokens: np.ndarray, vocab_size: int) -> float:
    """Nats per val token of a unigram model of the train split (add-one smoothing): the floor to beat."""
    counts = np.bincount(np.asarray(train_tokens, dtype=np.int64), minlength=vocab_size) + 1.0
    log_probs = np.log(counts / counts.sum())
    return float(-log_probs[np.asarray(val_tokens, dtype=np.int64)].mean())
