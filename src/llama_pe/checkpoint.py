"""Checkpoints that carry what rebuilds the model: its ModelArgs, its weights and the tokenizer it reads."""

from __future__ import annotations

import dataclasses
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llama_pe.errors import LlamaPeError, MissingInputError
from llama_pe.io import atomic_path
from llama_pe.model import ModelArgs, build_model

REQUIRED_KEYS = ("model_args", "model", "tokenizer_model")


class CheckpointError(LlamaPeError, ValueError):
    """A checkpoint file is damaged or is not one this version of llama-pe can read."""


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


def _rebuild_advice(path: Path) -> str:
    return f"the `train` stage writes it: rerun it (`dvc repro -f train`) or restore it (`dvc checkout {path}`)"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"no checkpoint at {path}: run the `train` stage first (dvc repro train)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(
            f"{path} is not a readable checkpoint, truncated or damaged ({reason}); {_rebuild_advice(path)}"
        ) from None
    missing = [key for key in REQUIRED_KEYS if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise CheckpointError(
            f"{path} is not a llama-pe checkpoint (it has no {', '.join(missing)}); {_rebuild_advice(path)}"
        )
    return checkpoint


def model_from_checkpoint(checkpoint: dict[str, Any], path: str | Path = "the checkpoint") -> nn.Module:
    try:
        model = build_model(ModelArgs(**checkpoint["model_args"]))
        model.load_state_dict(checkpoint["model"])
    except (TypeError, ValueError, RuntimeError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(
            f"{path} holds a model this version of llama-pe cannot rebuild ({reason}); {_rebuild_advice(Path(path))}"
        ) from None
    return model.eval()
