"""Train a lossless SentencePiece tokenizer: newlines and runs of spaces survive decode(encode(text))."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
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
# <unk>, <s> and </s>: SentencePiece's default control pieces, which train_tokenizer keeps.
CONTROL_PIECES = 3
BYTE_PIECES = 256  # <0x00> .. <0xFF>, with tokenizer.byte_fallback
# What bounds the vocabulary of a type that stops short of tokenizer.vocab_size instead of failing in training
# (bpe and unigram fail there when the corpus is too small; see _explain).
_LEARNABLE = {"char": "one per distinct character"}
# sentencepiece_model.proto: ModelProto.trainer_spec is field 2; TrainerSpec.model_type is field 3, an enum.
# https://github.com/google/sentencepiece/blob/master/src/sentencepiece_model.proto
_TRAINER_SPEC_FIELD, _MODEL_TYPE_FIELD = 2, 3
_MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}


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
    sp = spm.SentencePieceProcessor(model_proto=model.getvalue())
    _check_lossless(sp, text, cfg)
    _check_piece_count(sp, text, cfg)
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
            f"tokenizer.vocab_size: {cfg.vocab_size} is too small; {_reserved_words(cfg)} take {reserved} pieces, "
            f"leaving none for characters: set it above {reserved}"
        )
    return TokenizerError(f"SentencePiece training failed with tokenizer settings {cfg}: {message}")


def _reserved_pieces(cfg: TokenizerConfig) -> int:
    return CONTROL_PIECES + (BYTE_PIECES if cfg.byte_fallback else 0)


def _reserved_words(cfg: TokenizerConfig) -> str:
    fallback = f" and the {BYTE_PIECES} byte pieces (tokenizer.byte_fallback)" if cfg.byte_fallback else ""
    return f"the {CONTROL_PIECES} control pieces{fallback}"


def _check_lossless(sp: spm.SentencePieceProcessor, text: str, cfg: TokenizerConfig) -> None:
    """Refuse a tokenizer that does not give back the text it was trained on."""
    decoded = sp.decode(sp.encode(text))
    if decoded == text:
        return
    lost = sorted(c for c in set(text) if sp.unk_id() in sp.encode(c))
    if lost:
        keep_all = ["tokenizer.character_coverage: 1.0"] if cfg.character_coverage < 1 else []
        needed = len(set(text)) + CONTROL_PIECES
        if cfg.vocab_size < needed:
            keep_all.append(f"tokenizer.vocab_size: {needed}")
        alternative = f", or give every character a piece with {' and '.join(keep_all)}" if keep_all else ""
        raise TokenizerError(
            f"tokenizer.byte_fallback: false loses text: with tokenizer.model_type={cfg.model_type}, "
            f"tokenizer.vocab_size={cfg.vocab_size} and tokenizer.character_coverage={cfg.character_coverage}, "
            f"{len(lost)} distinct characters of this corpus have no piece and decode as <unk> "
            f"(for example {', '.join(map(repr, lost[:5]))}); set tokenizer.byte_fallback: true{alternative}"
        )
    if " " in text and sp.piece_to_id("▁") == sp.unk_id():
        # A space is encoded as the meta symbol ▁; spelt in byte pieces, it decodes as ▁, not as a space.
        raise TokenizerError(
            f"tokenizer.vocab_size: {cfg.vocab_size} leaves no piece for the space character with "
            f"tokenizer.model_type={cfg.model_type} ({_reserved_words(cfg)} take {_reserved_pieces(cfg)}), so "
            f"spaces decode as ▁; set it to at least {_reserved_pieces(cfg) + 1} so that frequent characters get "
            f"pieces of their own"
        )
    start = next((i for i, (a, b) in enumerate(zip(text, decoded, strict=False)) if a != b), min(len(text), len(decoded)))
    raise TokenizerError(
        f"tokenizer settings {cfg} give a tokenizer that is not lossless on its training text "
        f"(decode(encode(text)) != text): {text[start : start + 30]!r} comes back as {decoded[start : start + 30]!r}"
    )


def _check_piece_count(sp: spm.SentencePieceProcessor, text: str, cfg: TokenizerConfig) -> None:
    """Refuse a vocab_size that SentencePiece quietly cut down (char stops at one piece per character)."""
    learnt = sp.get_piece_size()
    if learnt == cfg.vocab_size:
        return
    kept = " kept by tokenizer.character_coverage" if cfg.character_coverage < 1 else ""
    fallback = f", plus {BYTE_PIECES} byte pieces with tokenizer.byte_fallback," if cfg.byte_fallback else ""
    pieces = _LEARNABLE.get(cfg.model_type, "the pieces it finds") + kept + fallback
    # With byte pieces a smaller vocabulary is still lossless: the rarest characters are spelt in bytes.
    fewer = " or fewer" if cfg.byte_fallback else ""
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
    # A few lines of protobuf wire format instead of a dependency on protobuf for one enum.
    spec = dict(_proto_fields(model_proto)).get(_TRAINER_SPEC_FIELD, b"")
    code = dict(_proto_fields(spec)).get(_MODEL_TYPE_FIELD, 1)  # proto2 default: UNIGRAM
    return _MODEL_TYPES[code]


def _proto_fields(message: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of each field of a protobuf message; varints as ints, the rest as bytes."""
    pos = 0
    while pos < len(message):
        key, pos = _varint(message, pos)
        wire = key & 7
        if wire == 0:
            value, pos = _varint(message, pos)
        elif wire == 2:
            size, pos = _varint(message, pos)
            value, pos = message[pos : pos + size], pos + size
        elif wire in (1, 5):  # fixed 64- and 32-bit numbers (SentencePiece's float scores)
            size = 8 if wire == 1 else 4
            value, pos = message[pos : pos + size], pos + size
        else:
            raise ValueError(f"not a SentencePiece model: unexpected protobuf wire type {wire}")
        yield key >> 3, value


def _varint(message: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = message[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


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
