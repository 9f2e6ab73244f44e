"""The learning-rate schedule (linear warmup, cosine decay to train.min_lr) and AdamW with its param groups."""

from __future__ import annotations

import math

import torch
from torch import nn

from llama_pe.core.device import (
    FUSED_ADAMW_DEVICES,
)
from llama_pe.settings.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step `step` (0-based): a pure function, so resuming cannot shift it."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = max(cfg.total_steps - cfg.warmup_steps, 1)
    progress = min((step - cfg.warmup_steps) / decay_steps, 1.0)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


# A param group's multiple of the scheduled learning rate (train_step sets each group's lr from it).
LR_SCALE = "lr_scale"


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on the matrices of attention and feed-forward only; the position encoding's own
    parameters in a group of their own, at train.pos_lr_scale times the learning rate."""
    # Embeddings and the output head, tied or not, are lookup tables of the vocabulary rather than layers; a tied
    # head is the embedding itself, so an untied one is spared too and both variants regularise alike.
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)} | {id(model.output.weight)}
    # A position encoding's own parameters (T5's table, FIRE's MLP, ALiBi's slopes) are not layers either. Under the
    # shared rate they can barely move in a short run while ALiBi's fixed slopes are at full strength from step 0:
    # their own group lets a study tune their rate apart (train.pos_lr_scale).
    positions = getattr(model, "positions", None)
    encoding = {id(p) for p in positions.parameters()} if isinstance(positions, nn.Module) else set()
    decay, no_decay, own = [], [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        if id(param) in encoding:
            own.append(param)
        else:  # norm gains and biases (1-D) are not decayed either
            (no_decay if param.ndim < 2 or id(param) in tables else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, LR_SCALE: 1.0},
        {"params": no_decay, "weight_decay": 0.0, LR_SCALE: 1.0},
    ]
    if own:  # AdamW's update is elementwise, so a group of its own at scale 1 trains exactly as in no_decay
        groups.append({"params": own, "weight_decay": 0.0, LR_SCALE: cfg.pos_lr_scale})
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type in FUSED_ADAMW_DEVICES)
