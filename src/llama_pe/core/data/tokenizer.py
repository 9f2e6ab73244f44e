"""Train a lossless SentencePiece tokenizer: newlines and runs of spaces survive decode(encode(text))."""

from __future__ import annotations

import io
import logging
import re
from collections import Counter
from pathlib import Path

import numpy as np
import sentencepiece as spm
from google.protobuf.message import DecodeError
from sentencepiece import sentencepiece_model_pb2

from llama_pe.errors import LlamaPeError, MissingInputError
from llama_pe.io import atomic_path
from llama_pe.settings.config import TokenizerConfig

log = logging.getLogger(__name__)

MODEL_FILE = "tokenizer.model"
VOCAB_FILE = "tokenizer.vocab"
# SentencePiece reads its training text as "sentences"; cutting after each blank line keeps whole speeches,
# newlines included, so that pieces such as ":\n" are learnt (the original study lost every newline).
_PARAGRAPH_END = re.compile(r"(?<=\n\n)")
# <unk>, <s> and </s>: SentencePiece's default control pieces, which train_tokenizer keeps.
CONTROL_PIECES = 3
BYTE_PIECES = 256  # <0x00> .. <0xFF>, with tokenizer.byte_fallback
# What bounds the vocabulary of a type that stops short of tokenizer.vocab_size instead of failing in training
# (bpe and unigram fail there when the corpus is too small; see _explain).
_LEARNABLE = {"char": "one per distinct character"}


class TokenizerError(LlamaPeError, ValueError):
    """The tokenizer settings cannot be trained on this corpus; the message names the setting."""


def training_sentences(text: str) -> list[str]:
    return [chunk for chunk in _PARAGRAPH_END.split(text) if chunk]


def train_tokenizer(text: str, cfg: TokenizerConfig, seed: int = 0) -> bytes:
    """The serialized SentencePiece model trained on `text`; refused unless lossless on it and of cfg.vocab_size."""
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
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    _check_lossless(sp, text, cfg)
    _check_piece_count(sp, cfg)
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
    reserved = _reserved_pieces(cfg)
    if cfg.vocab_size <= reserved:  # the char trainer fails an internal check here rather than saying so
        return TokenizerError(
            f"tokenizer.vocab_size: {cfg.vocab_size} is too small: {_reserved_words(cfg)} take {reserved}, "
            f"leaving none for characters; set it above {reserved}"
        )
    return TokenizerError(f"SentencePiece training failed with tokenizer settings {cfg}: {message}")


def _reserved_pieces(cfg: TokenizerConfig) -> int:
    return CONTROL_PIECES + (BYTE_PIECES if cfg.byte_fallback else 0)


def _reserved_words(cfg: TokenizerConfig) -> str:
    fallback = f" and, with tokenizer.byte_fallback, {BYTE_PIECES} byte pieces" if cfg.byte_fallback else ""
    return f"the {CONTROL_PIECES} control pieces{fallback}"


def _check_lossless(sp: spm.SentencePieceProcessor, text: str, cfg: TokenizerConfig) -> None:
    """Refuse a tokenizer that does not give back the text it was trained on."""
    decoded = sp.decode(sp.encode(text))
    if decoded == text:
        return
    counts = Counter(text)
    lost = sorted((c for c in counts if sp.unk_id() in sp.encode(c)), key=counts.get)
    if lost:
        keep_all = ["tokenizer.character_coverage: 1.0"] if cfg.character_coverage < 1 else []
        if cfg.vocab_size < len(counts) + CONTROL_PIECES:  # only char runs out of pieces without failing
            keep_all.append(f"tokenizer.vocab_size: {len(counts) + CONTROL_PIECES}")
        alternative = f", or give every character a piece with {' and '.join(keep_all)}" if keep_all else ""
        raise TokenizerError(
            f"tokenizer.byte_fallback: false loses text: with tokenizer.model_type={cfg.model_type}, "
            f"tokenizer.vocab_size={cfg.vocab_size} and tokenizer.character_coverage={cfg.character_coverage}, "
            f"{len(lost)} distinct characters of this corpus have no piece and decode as <unk> "
            f"(the rarest: {', '.join(map(repr, lost[:5]))}); set tokenizer.byte_fallback: true{alternative}"
        )
    if " " in counts and sp.piece_to_id("▁") == sp.unk_id():
        # A space is encoded as the meta symbol ▁; spelt in byte pieces, it decodes as ▁, not as a space.
        # The char model keeps the most frequent characters, so the space needs this many pieces.
        needed = _reserved_pieces(cfg) + sum(n >= counts[" "] for n in counts.values())
        raise TokenizerError(
            f"tokenizer.vocab_size: {cfg.vocab_size} leaves no piece for the space character with "
            f"tokenizer.model_type={cfg.model_type}, and a space spelt in byte pieces decodes as ▁ "
            f"({_reserved_words(cfg)} take {_reserved_pieces(cfg)} pieces); set it to at least {needed}"
        )
    differ = (i for i, (a, b) in enumerate(zip(text, decoded, strict=False)) if a != b)
    start = next(differ, min(len(text), len(decoded)))
    raise TokenizerError(
        f"tokenizer settings {cfg} give a tokenizer that is not lossless on its training text "
        f"(decode(encode(text)) != text): {text[start : start + 30]!r} comes back as {decoded[start : start + 30]!r}"
    )


def _check_piece_count(sp: spm.SentencePieceProcessor, cfg: TokenizerConfig) -> None:
    """Refuse a vocab_size that SentencePiece quietly cut down (char stops at one piece per character)."""
    learnt = sp.get_piece_size()
    if learnt == cfg.vocab_size:
        return
    kept = " kept by tokenizer.character_coverage" if cfg.character_coverage < 1 else ""
    fallback = f", plus {BYTE_PIECES} byte pieces with tokenizer.byte_fallback," if cfg.byte_fallback else ""
    pieces = _LEARNABLE.get(cfg.model_type, "the pieces it finds") + kept + fallback
    # With byte pieces a smaller vocabulary stays lossless: the rarest characters are spelt in bytes instead.
    fewer = ", or fewer to spell the rarest characters in byte pieces" if cfg.byte_fallback else ""
    raise TokenizerError(
        f"tokenizer.vocab_size: {cfg.vocab_size} pieces cannot be learnt with tokenizer.model_type={cfg.model_type} "
        f"from this corpus: it gives {learnt} ({pieces} and the control pieces); "
        f"set tokenizer.vocab_size to {learnt}{fewer}"
    )


def save_tokenizer(model_proto: bytes, out_dir: str | Path) -> None:
    """Write tokenizer.model and a human-readable tokenizer.vocab into `out_dir`, atomically."""
    sp = spm.SentencePieceProcessor(model_proto=model_proto)
    vocab = "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i)}\n" for i in range(sp.get_piece_size()))
    with atomic_path(out_dir, directory=True) as tmp:
        (tmp / MODEL_FILE).write_bytes(model_proto)
        (tmp / VOCAB_FILE).write_text(vocab, encoding="utf-8")


def read_tokenizer_model(tokenizer_dir: str | Path) -> bytes:
    """The tokenizer stage's serialized SentencePiece model, checked to load."""
    path = Path(tokenizer_dir) / MODEL_FILE
    if not path.is_file():
        raise MissingInputError(f"no tokenizer at {path}: run the `tokenizer` stage first (dvc repro tokenizer)")
    model = path.read_bytes()
    try:
        spm.SentencePieceProcessor(model_proto=model)
    except (RuntimeError, OSError) as err:
        raise TokenizerError(
            f"{path} is not a readable SentencePiece model ({err}); rerun the `tokenizer` stage "
            f"(`dvc repro -f tokenizer`) or restore it (`dvc checkout data/tokenizer`)"
        ) from None
    return model


def load_tokenizer(tokenizer_dir: str | Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_proto=read_tokenizer_model(tokenizer_dir))


def model_type(model_proto: bytes) -> str:
    """The SentencePiece algorithm a serialized model was trained with: unigram, bpe, word or char."""
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(model_proto)
    except DecodeError as err:
        raise TokenizerError(f"not a SentencePiece model ({err})") from None
    return sentencepiece_model_pb2.TrainerSpec.ModelType.Name(proto.trainer_spec.model_type).lower()


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
