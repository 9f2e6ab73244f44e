"""How the corpus is divided into train, val and test, in either of the two protocols of data.split."""

from __future__ import annotations

import numpy as np

from llama_pe.core.data.tokens import SPLITS
from llama_pe.errors import DataError
from llama_pe.settings.config import DataConfig

__all__ = ["SPLITS", "assign_random_chunks", "contiguous_bounds", "split_text", "tokenizer_training_text"]


def contiguous_bounds(n_chars: int, cfg: DataConfig) -> tuple[int, int]:
    """Character offsets where val and test begin: train | val | test, in reading order."""
    return int(n_chars * cfg.train_fraction), int(n_chars * round(1.0 - cfg.test_fraction, 12))


def split_text(text: str, cfg: DataConfig) -> dict[str, str]:
    """Contiguous split by characters; with 5% + 5%, val + test is exactly nanoGPT's validation text."""
    val_start, test_start = contiguous_bounds(len(text), cfg)
    parts = {"train": text[:val_start], "val": text[val_start:test_start], "test": text[test_start:]}
    for name, part in parts.items():
        if not part:
            raise DataError(
                f"data.split=contiguous: the {name} split of this {len(text)}-character corpus is empty with "
                f"data.val_fraction={cfg.val_fraction} and data.test_fraction={cfg.test_fraction}"
            )
    return parts


def tokenizer_training_text(text: str, cfg: DataConfig) -> str:
    """The text the tokenizer may learn from: the train split only, where the split is known before tokens."""
    if cfg.split == "contiguous":
        return split_text(text, cfg)["train"]
    # random_chunks cuts token chunks, so the split exists only after tokenizing; the original study trained
    # its tokenizer on the whole corpus, and this mode reproduces that protocol.
    return text


def assign_random_chunks(n_chunks: int, chunk_tokens: int, cfg: DataConfig) -> dict[str, np.ndarray]:
    """Shuffle chunk indices with data.split_seed and deal them out: train first, then val, then test."""
    order = np.random.default_rng(cfg.split_seed).permutation(n_chunks)
    n_val, n_test = int(n_chunks * cfg.val_fraction), int(n_chunks * cfg.test_fraction)
    n_train = n_chunks - n_val - n_test
    parts = {
        "train": order[:n_train],
        "val": order[n_train : n_train + n_val],
        "test": order[n_train + n_val :],
    }
    for name, indices in parts.items():
        if indices.size == 0:
            raise DataError(
                f"data.split=random_chunks: the {name} split is empty: the corpus gives only {n_chunks} chunks "
                f"of {chunk_tokens} tokens (train.context + 1) with data.val_fraction={cfg.val_fraction} "
                f"and data.test_fraction={cfg.test_fraction}"
            )
    return parts
