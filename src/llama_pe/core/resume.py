"""What a run needs to continue exactly where it stopped: its state, its random generators, and the rules for
when a last checkpoint may be resumed (the same params, data and code, and not finished)."""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llama_pe.core import distributed
from llama_pe.core.checkpoint import CheckpointError, load_checkpoint
from llama_pe.core.data.batches import BatchSampler
from llama_pe.core.distributed import ONE_PROCESS, Ranks
from llama_pe.io import remove_path
from llama_pe.settings.config import Config, TrainConfig, flat_params

log = logging.getLogger(__name__)


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
    return flat_params({"model": cfg.model.params(), "train": dataclasses.asdict(cfg.train), "data": meta})


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


def resume(
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
