"""Checkpoints that carry what rebuilds the model: its ModelArgs, its weights and the tokenizer it reads."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llama_pe.errors import MissingInputError
from llama_pe.io import atomic_path
from llama_pe.model import ModelArgs, build_model


def save_checkpoint(path: str | Path, model: nn.Module, tokenizer_model: bytes, **extra: Any) -> None:
    """Write atomically: model_args, model weights, the SentencePiece model bytes, and any extra state."""
    state = {
        "model_args": dataclasses.asdict(model.args),
        "model": model.state_dict(),
        "tokenizer_model": tokenizer_model,
        **extra,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"no checkpoint at {path}: run the `train` stage first (dvc repro train)")
    return torch.load(path, map_location="cpu", weights_only=True)


def model_from_checkpoint(checkpoint: dict[str, Any]) -> nn.Module:
    model = build_model(ModelArgs(**checkpoint["model_args"]))
    model.load_state_dict(checkpoint["model"])
    return model.eval()
