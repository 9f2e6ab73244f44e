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

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path} {reason}; {_REBUILD.format(path=path)}")


# train writes both checkpoints; only best.pt is in DVC's cache (last.pt is cache: false), so only it can be restored.
_REBUILD = (
    "the `train` stage writes it: train again with `dvc repro -f --downstream train` "
    "or restore it from DVC's cache with `dvc checkout {path}`"
)
_MAX_REASON = 160  # torch's messages for a damaged zip run to several hundred characters


def _short(err: BaseException) -> str:
    reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return reason if len(reason) <= _MAX_REASON else reason[: _MAX_REASON - 1] + "…"


def save_checkpoint(path: str | Path, model: nn.Module, tokenizer_model: bytes, **extra: Any) -> None:
    """Write atomically: model_args, model weights, the SentencePiece model bytes, and any extra state."""
    state = {
        "model_args": dataclasses.asdict(model.args),
        "model": model.state_dict(),
        "tokenizer_model": tokenizer_model,
        **extra,
    }
    # Through a file object: torch.save names the zip's inner folder after a path's stem, here the random
    # temporary name, which would make two runs' identical checkpoints differ in bytes (and in dvc.lock's hash).
    with atomic_path(path) as tmp, tmp.open("wb") as file:
        torch.save(state, file)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"no checkpoint at {path}: run the `train` stage first (dvc repro train)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
        raise CheckpointError(path, f"is not a readable checkpoint, truncated or damaged ({_short(err)})") from None
    missing = [key for key in REQUIRED_KEYS if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise CheckpointError(path, f"is not a llama-pe checkpoint (it has no {', '.join(missing)})")
    return checkpoint


def model_from_checkpoint(checkpoint: dict[str, Any], path: str | Path = "the checkpoint") -> nn.Module:
    try:
        model = build_model(ModelArgs(**checkpoint["model_args"]))
        model.load_state_dict(checkpoint["model"])
    except (TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            Path(path), f"holds a model this version of llama-pe cannot rebuild ({_short(err)})"
        ) from None
    return model.eval()
