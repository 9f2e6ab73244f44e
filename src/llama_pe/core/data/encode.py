"""Encode the corpus into uint16 token files, one per split, with token and character counts."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import sentencepiece as spm

from llama_pe.core.data.split import assign_random_chunks, split_text
from llama_pe.core.data.tokenizer import read_tokenizer_model
from llama_pe.core.data.tokens import META_FILE, SPLITS, TOKEN_DTYPE, read_tokens, tokenizer_sha256
from llama_pe.errors import DataError
from llama_pe.io import atomic_path, write_json
from llama_pe.settings.config import MAX_VOCAB_SIZE, Config, DataConfig

__all__ = ["META_FILE", "EncodedSplit", "encode_corpus", "encode_splits", "read_tokens", "write_encoded"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedSplit:
    ids: np.ndarray  # (n_tokens,) uint16
    chars: int  # characters of text these tokens decode to, for bits per character


def encode_splits(
    text: str, sp: spm.SentencePieceProcessor, cfg: DataConfig, chunk_tokens: int | None = None
) -> dict[str, EncodedSplit]:
    """chunk_tokens: data.split=random_chunks only, the tokens of one chunk (Config.chunk_tokens)."""
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
    if chunk_tokens is None:
        raise ValueError("encode_splits: data.split=random_chunks needs chunk_tokens (Config.chunk_tokens)")
    return _random_chunks(text, sp, cfg, chunk_tokens)


def _random_chunks(
    text: str, sp: spm.SentencePieceProcessor, cfg: DataConfig, chunk_tokens: int
) -> dict[str, EncodedSplit]:
    # The original study's protocol: non-overlapping fixed-length token chunks, shuffled, dealt 80/10/10; each
    # chunk is later one whole training or evaluation sample, never joined to its neighbour in the file.
    ids = _as_tokens(sp.encode(text))
    n_chunks = ids.size // chunk_tokens
    chunks = ids[: n_chunks * chunk_tokens].reshape(n_chunks, chunk_tokens)  # (n_chunks, chunk_tokens)
    chunk_chars = np.array([len(sp.decode(chunk.tolist())) for chunk in chunks], dtype=np.int64)
    return {
        name: EncodedSplit(chunks[indices].reshape(-1), int(chunk_chars[indices].sum()))
        for name, indices in assign_random_chunks(n_chunks, chunk_tokens, cfg).items()
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


def encode_corpus(corpus: str | Path, tokenizer_dir: str | Path, out_dir: str | Path, cfg: Config) -> dict:
    """The encode stage: tokenize and split the corpus; meta.json records which tokenizer and chunking made it."""
    tokenizer_model = read_tokenizer_model(tokenizer_dir)
    sp = spm.SentencePieceProcessor(model_proto=tokenizer_model)
    splits = encode_splits(Path(corpus).read_text(encoding="utf-8"), sp, cfg.data, cfg.chunk_tokens)
    meta = {
        "split": cfg.data.split,
        "chunk_tokens": cfg.chunk_tokens,  # null: one contiguous text per split
        "vocab_size": sp.get_piece_size(),
        "tokenizer_sha256": tokenizer_sha256(tokenizer_model),
    }
    return write_encoded(splits, out_dir, meta)
