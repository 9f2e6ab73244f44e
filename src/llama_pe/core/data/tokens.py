"""The encode stage's output as the train and evaluate stages read it: token files checked against meta.json."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from llama_pe.errors import DataError, MissingInputError
from llama_pe.tracking.recovery import restore_advice

TOKEN_DTYPE = np.uint16
META_FILE = "meta.json"
SPLITS = ("train", "val", "test")


def _rebuild(encoded: Path) -> str:
    """What brings the encode stage's output back, as DVC can do it here (see llama_pe.tracking.recovery)."""
    return restore_advice(encoded) or "run the `encode` stage again (`dvc repro encode`)"


def read_tokens(path: str | Path) -> np.ndarray:
    """Memory-map one split's token file."""
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r")


def tokenizer_sha256(tokenizer_model: bytes) -> str:
    return hashlib.sha256(tokenizer_model).hexdigest()


def load_splits(encoded: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The train, val and test tokens and meta.json, each token file checked against the counts meta.json gives."""
    encoded = Path(encoded)
    meta_path = encoded / META_FILE
    if not meta_path.is_file():
        raise MissingInputError(f"no encoded data at {encoded}: run the `encode` stage first (dvc repro encode)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        counts = {name: int(meta["splits"][name]["tokens"]) for name in SPLITS}
        vocab_size = int(meta["vocab_size"])
        missing = [key for key in ("split", "chunk_tokens", "tokenizer_sha256") if key not in meta]
        if missing:
            raise KeyError(", ".join(missing))
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(
            f"{meta_path} is damaged or was written by an older encode stage ({err!r}); {_rebuild(encoded)}"
        ) from None
    splits = {}
    for name in SPLITS:
        path = encoded / f"{name}.bin"
        size = path.stat().st_size if path.is_file() else 0
        if size != counts[name] * np.dtype(TOKEN_DTYPE).itemsize:
            raise DataError(
                f"{path} holds {size} bytes, but {meta_path} says {counts[name]} tokens "
                f"({counts[name] * np.dtype(TOKEN_DTYPE).itemsize} bytes): the file is truncated or does not belong "
                f"to this meta.json; {_rebuild(encoded)}"
            )
        splits[name] = read_tokens(path)
        if splits[name].size and int(splits[name].max()) >= vocab_size:
            raise DataError(
                f"{path} holds token id {int(splits[name].max())}, but meta.json gives a vocabulary of "
                f"{vocab_size}: the token files and meta.json disagree; {_rebuild(encoded)}"
            )
    return splits, meta


def check_tokenizer(tokenizer_model: bytes, meta: dict[str, Any], source: str) -> None:
    """Refuse a tokenizer other than the one the tokens were encoded with (their ids would mean other pieces)."""
    if tokenizer_sha256(tokenizer_model) != meta["tokenizer_sha256"]:
        raise DataError(
            f"the tokenizer of {source} is not the one the encoded data was made with (sha256 "
            f"{tokenizer_sha256(tokenizer_model)[:12]}… against {meta['tokenizer_sha256'][:12]}… in meta.json): "
            f"its ids would mean other pieces; rerun the stages after the tokenizer (`dvc repro`)"
        )
