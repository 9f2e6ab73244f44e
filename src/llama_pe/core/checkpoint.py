"""Checkpoints that carry what rebuilds the model: its ModelArgs, its weights and the tokenizer it reads."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch
from torch import nn

from llama_pe.core.model import ModelArgs, build_model
from llama_pe.errors import LlamaPeError, MissingInputError
from llama_pe.io import atomic_path
from llama_pe.tracking.recovery import restore_advice

# What every reader needs, and the type it must have: a file with less is not a llama-pe checkpoint.
REQUIRED = {"model_args": dict, "model": dict, "tokenizer_model": bytes}


class CheckpointError(LlamaPeError, ValueError):
    """A checkpoint file is damaged or is not one this version of llama-pe can read."""

    def __init__(self, path: Path | str, reason: str, advice: str | None = None) -> None:
        self.path, self.reason, self._advice = Path(path), reason, advice
        super().__init__(path, reason)

    @property
    def advice(self) -> str:
        """What to do, worked out when the message is read: a caller that only wants the reason pays nothing."""
        if self._advice is None:
            restore = restore_advice(self.path)
            self._advice = restore or "give a checkpoint that the `train` stage wrote (models/best.pt)"
        return self._advice

    def __str__(self) -> str:
        return f"{self.path} {self.reason}; {self.advice}"


_MAX_REASON = 160  # torch's messages for a damaged zip run to several hundred characters


def _short(err: BaseException) -> str:
    reason = (str(err).strip().splitlines() or [""])[0] or type(err).__name__
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
    if path.is_dir():
        raise CheckpointError(path, "is a folder, not a checkpoint file")
    if not path.is_file():
        raise MissingInputError(f"no checkpoint at {path}: run the `train` stage first (dvc repro train)")
    return _read(path, path)


def load_checkpoint_bytes(data: bytes, name: str, advice: str | None = None) -> dict[str, Any]:
    """A checkpoint held in memory (read from DVC's cache, say); `name` and `advice` are what an error tells."""
    return _read(io.BytesIO(data), Path(name), advice)


def _read(source: Path | io.BytesIO, path: Path, advice: str | None = None) -> dict[str, Any]:
    try:
        checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:  # torch's unpickler raises a dozen kinds for bytes that are not its own
        raise CheckpointError(path, _unreadable(source, err), advice) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(path, f"is not a llama-pe checkpoint (it holds a {type(checkpoint).__name__})", advice)
    missing = [f"{key} ({t.__name__})" for key, t in REQUIRED.items() if not isinstance(checkpoint.get(key), t)]
    if missing:
        raise CheckpointError(path, f"is not a llama-pe checkpoint (it has no {', '.join(missing)})", advice)
    try:
        spm.SentencePieceProcessor(model_proto=checkpoint["tokenizer_model"])
    except Exception as err:  # SentencePiece reports a bad model as RuntimeError or OSError
        reason = f"holds a tokenizer that SentencePiece cannot read ({_short(err)})"
        raise CheckpointError(path, reason, advice) from None
    return checkpoint


def _unreadable(source: Path | io.BytesIO, err: Exception) -> str:
    """Why torch could not load it, in words: for bytes that are no zip at all its own message says nothing useful."""
    if isinstance(source, io.BytesIO):
        source.seek(0)
    head = source.read_bytes()[:4] if isinstance(source, Path) else source.read(4)
    if not head:
        return "is empty, not a checkpoint"
    if head != b"PK\x03\x04":  # the first bytes of every zip archive
        return "is not a checkpoint (torch.save writes a zip archive, and this is none)"
    return f"is not a readable checkpoint, truncated or damaged ({_short(err)})"


def model_from_checkpoint(
    checkpoint: dict[str, Any], path: str | Path = "the checkpoint", advice: str | None = None
) -> nn.Module:
    try:
        model = build_model(ModelArgs.from_saved(checkpoint["model_args"]))
        model.load_state_dict(checkpoint["model"])
    except Exception as err:  # args of another version fail in as many ways as the model has parts
        reason = f"holds a model this version of llama-pe cannot rebuild ({_short(err)})"
        raise CheckpointError(path, reason, advice) from None
    return model.eval()
