"""Train a lossless SentencePiece tokenizer: newlines and runs of spaces survive decode(encode(text))."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import numpy as np
import sentencepiece as spm

from llama_pe.config import TokenizerConfig
from llama_pe.errors import LlamaPeError, MissingInputError
from llama_pe.io import atomic_path

log = logging.getLogger(__name__)

MODEL_FILE = "tokenizer.model"
VOCAB_FILE = "tokenizer.vocab"
# SentencePiece reads its training text as "sentences"; cutting after each blank line keeps whole speeches,
# newlines included, so that pieces such as ":\n" are learnt (the original study lost every newline).
_PARAGRAPH_END = re.compile(r"(?<=\n\n)")


class TokenizerError(LlamaPeError, ValueError):
    """The tokenizer settings cannot be trained on this corpus; the message names the setting."""


def training_sentences(text: str) -> list[str]:
    return [chunk for chunk in _PARAGRAPH_END.split(text) if chunk]


def train_tokenizer(text: str, cfg: TokenizerConfig, seed: int = 0) -> bytes:
    """Return the serialized SentencePiece model trained on `text`."""
    if not text:
        raise TokenizerError("the corpus is empty: there is nothing to train the tokenizer on")
    sentences = training_sentences(text)
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            model_type=cfg.model_type,
            vocab_size=cfg.vocab_size,
            character_coverage=cfg.character_coverage,
            byte_fallback=cfg.byte_fallback,
            # Losslessness: no Unicode normalisation, no dummy prefix, no collapsing of whitespace.
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            # Sentences longer than this are dropped silently, so allow the longest one.
            max_sentence_length=max(4192, max(len(s.encode()) for s in sentences) + 1),
            input_sentence_size=0,  # use every sentence: no random sampling
            num_threads=1,  # one thread keeps the trained model byte-identical across runs
            minloglevel=2,
        )
    except RuntimeError as err:
        raise _explain(err, cfg) from None
    return model.getvalue()


def _explain(err: RuntimeError, cfg: TokenizerConfig) -> TokenizerError:
    message = str(err)
    too_high = re.search(r"Vocabulary size too high \((\d+)\).*<= (\d+)", message)
    if too_high:
        return TokenizerError(
            f"tokenizer.vocab_size: {cfg.vocab_size} is too large for this corpus; with "
            f"tokenizer.model_type={cfg.model_type} at most {too_high.group(2)} pieces can be learnt from it"
        )
    too_low = re.search(r"smaller than required_chars\. (\d+) vs (\d+)", message)
    if too_low:
        fallback = " plus 256 byte pieces (tokenizer.byte_fallback)" if cfg.byte_fallback else ""
        return TokenizerError(
            f"tokenizer.vocab_size: {cfg.vocab_size} is too small for this corpus; it needs at least "
            f"{too_low.group(2)} pieces: one per character{fallback} and the control pieces"
        )
    return TokenizerError(f"SentencePiece training failed with tokenizer settings {cfg}: {message}")


def save_tokenizer(model_proto: bytes, out_dir: str | Path) -> None:
    """Write tokenizer.model and a human-readable tokenizer.vocab into `out_dir`, atomically."""
    sp = spm.SentencePieceProcessor(model_proto=model_proto)
    vocab = "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i)}\n" for i in range(sp.get_piece_size()))
    with atomic_path(out_dir, directory=True) as tmp:
        (tmp / MODEL_FILE).write_bytes(model_proto)
        (tmp / VOCAB_FILE).write_text(vocab, encoding="utf-8")


def load_tokenizer(tokenizer_dir: str | Path) -> spm.SentencePieceProcessor:
    path = Path(tokenizer_dir) / MODEL_FILE
    if not path.is_file():
        raise MissingInputError(f"no tokenizer at {path}: run the `tokenizer` stage first (dvc repro tokenizer)")
    return spm.SentencePieceProcessor(model_file=str(path))


def tokenizer_stats(sp: spm.SentencePieceProcessor, text: str) -> dict:
    """Summarise how the tokenizer treats `text`, for metrics/tokenizer.json."""
    ids = np.asarray(sp.encode(text), dtype=np.int64)
    lossless = sp.decode(ids.tolist()) == text
    if not lossless:
        log.warning("the tokenizer is not lossless on this corpus: decode(encode(text)) != text")
    return {
        "vocab_size": sp.get_piece_size(),
        "pieces_used": int(np.unique(ids).size),
        "tokens": int(ids.size),
        "chars": len(text),
        "chars_per_token": round(len(text) / max(ids.size, 1), 4),
        "unk_tokens": int((ids == sp.unk_id()).sum()),
        "lossless": lossless,
    }
