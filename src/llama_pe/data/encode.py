"""Encode the corpus into uint16 token files, one per split, with token and character counts."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm

from llama_pe.config import MAX_VOCAB_SIZE, DataConfig
from llama_pe.data.split import SPLITS, assign_random_chunks, split_text
from llama_pe.errors import DataError
from llama_pe.io import atomic_path, write_json

log = logging.getLogger(__name__)

TOKEN_DTYPE = np.uint16
META_FILE = "meta.json"


@dataclass(frozen=True)
class EncodedSplit:
    ids: np.ndarray  # (n_tokens,) uint16
    chars: int  # characters of text these tokens decode to, for bits per character


def encode_splits(text: str, sp: spm.SentencePieceProcessor, cfg: DataConfig) -> dict[str, EncodedSplit]:
    if not text:
        raise DataError("the corpus is empty: there is nothing to encode")
    if sp.get_piece_size() > MAX_VOCAB_SIZE:
        raise DataError(
            f"tokenizer.vocab_size: the tokenizer has {sp.get_piece_size()} pieces, but uint16 token files "
            f"hold at most {MAX_VOCAB_SIZE}"
        )
    if cfg.split == "contiguous":
        # Each split is tokenized on its own, so no token straddles a split boundary.
        return {
            name: EncodedSplit(_as_tokens(sp.encode(part)), len(part)) for name, part in split_text(text, cfg).items()
        }
    return _random_chunks(text, sp, cfg)


def _random_chunks(text: str, sp: spm.SentencePieceProcessor, cfg: DataConfig) -> dict[str, EncodedSplit]:
    # The original study's protocol: non-overlapping fixed-length token chunks, shuffled, dealt 80/10/10.
    ids = _as_tokens(sp.encode(text))
    n_chunks = ids.size // cfg.chunk_tokens
    chunks = ids[: n_chunks * cfg.chunk_tokens].reshape(n_chunks, cfg.chunk_tokens)  # (n_chunks, chunk_tokens)
    chunk_chars = np.array([len(sp.decode(chunk.tolist())) for chunk in chunks], dtype=np.int64)
    return {
        name: EncodedSplit(chunks[indices].reshape(-1), int(chunk_chars[indices].sum()))
        for name, indices in assign_random_chunks(n_chunks, cfg).items()
    }


def _as_tokens(ids: list[int]) -> np.ndarray:
    return np.asarray(ids, dtype=TOKEN_DTYPE)


def write_encoded(splits: dict[str, EncodedSplit], out_dir: str | Path, meta: dict) -> dict:
    """Write {train,val,test}.bin and meta.json into `out_dir` atomically; return the meta written."""
    meta = {
        **meta,
        "dtype": np.dtype(TOKEN_DTYPE).name,
        "splits": {
            name: {
                "tokens": int(splits[name].ids.size),
                "chars": splits[name].chars,
                "chars_per_token": round(splits[name].chars / max(splits[name].ids.size, 1), 4),
            }
            for name in SPLITS
        },
    }
    with atomic_path(out_dir, directory=True) as tmp:
        for name in SPLITS:
            splits[name].ids.tofile(tmp / f"{name}.bin")
        write_json(tmp / META_FILE, meta)
    for name, counts in meta["splits"].items():
        log.info("%s: %d tokens, %d characters", name, counts["tokens"], counts["chars"])
    return meta


def read_tokens(path: str | Path) -> np.ndarray:
    """Memory-map one split's token file."""
    return np.memmap(path, dtype=TOKEN_DTYPE, mode="r")
