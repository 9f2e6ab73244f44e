import io
import os
import re
from pathlib import Path

import pytest
import sentencepiece as spm

from llama_pe.core.data.download import MIRROR_ENV
from llama_pe.core.data.tokenizer import (
    BYTE_PIECES,
    CONTROL_PIECES,
    MODEL_FILE,
    TokenizerError,
    load_tokenizer,
    model_type,
    save_tokenizer,
    tokenizer_stats,
    train_tokenizer,
)
from llama_pe.errors import MissingInputError
from tests.conftest import make_config

SMALL = {"vocab_size": 400}
# Newlines, runs of spaces, a tab, accents seen in training, and characters never seen (they need byte pieces).
TRICKY = ["a\n\n\nb\n", "  two leading,   three inside  ", "a\ttab", "Adieu, café naïve", "Zwölf Ωmega — ∞ 🙂"]


def typed(model_type: str, corpus: str, **changes) -> dict:
    """Tokenizer settings for `model_type` that this corpus can learn: char at one piece per character."""
    # This corpus has too few words for a unigram model of 400 pieces; char learns one piece per character.
    vocab_size = {"bpe": 400, "unigram": 350, "char": len(set(corpus)) + CONTROL_PIECES + BYTE_PIECES}
    return {"model_type": model_type, "vocab_size": vocab_size[model_type], **changes}


def processor(model: bytes) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_proto=model)


def test_round_trip_keeps_newlines_spaces_and_accents(corpus):
    sp = processor(train_tokenizer(corpus, make_config(tokenizer=SMALL).tokenizer))
    ids = sp.encode(corpus)
    assert sp.decode(ids) == corpus
    assert sp.unk_id() not in ids
    assert any("\n" in sp.id_to_piece(i) for i in set(ids)), "newlines should be learnt as pieces, not dropped"
    spaced = "  two leading spaces\n\n\nthree newlines"
    assert sp.decode(sp.encode(spaced)) == spaced


def test_characters_never_seen_in_training_still_round_trip(corpus):
    sp = processor(train_tokenizer(corpus, make_config(tokenizer=SMALL).tokenizer))
    unseen = "Zwölf Ωmega — ∞\n"
    assert sp.decode(sp.encode(unseen)) == unseen


def trained(corpus: str, **settings) -> spm.SentencePieceProcessor:
    return processor(train_tokenizer(corpus, make_config(tokenizer=settings).tokenizer))


@pytest.mark.parametrize("kind", ["bpe", "unigram", "char"])
def test_every_type_is_lossless_and_records_its_type(kind, corpus):
    cfg = make_config(tokenizer=typed(kind, corpus)).tokenizer
    model = train_tokenizer(corpus, cfg)
    sp = processor(model)
    assert model_type(model) == kind
    assert sp.get_piece_size() == cfg.vocab_size
    assert sp.decode(sp.encode(corpus)) == corpus
    for text in TRICKY:
        assert sp.decode(sp.encode(text)) == text
    assert all(sp.is_byte(i) for i in sp.encode("Ω")), "an unseen character should become byte pieces"


def test_model_type_reads_a_word_model_too(corpus):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus.splitlines()), model_writer=model, model_type="word", vocab_size=60, minloglevel=2
    )
    assert model_type(model.getvalue()) == "word"


def test_char_vocab_larger_than_its_pieces_is_an_error_with_the_count(corpus):
    learnable = len(set(corpus)) + CONTROL_PIECES + BYTE_PIECES
    message = (
        f"tokenizer.vocab_size: 8192 pieces cannot be learnt with tokenizer.model_type=char from this corpus: it "
        f"gives {learnable} (one per distinct character, plus 256 byte pieces with tokenizer.byte_fallback, and the "
        f"control pieces); set tokenizer.vocab_size to {learnable}, or fewer to spell the rarest characters in byte "
        f"pieces"
    )
    with pytest.raises(TokenizerError, match=f"^{re.escape(message)}$"):
        trained(corpus, model_type="char", vocab_size=8192)
    for size in (learnable, learnable - 20):  # the advice holds: with fewer pieces the rarest characters are bytes
        sp = trained(corpus, model_type="char", vocab_size=size)
        assert sp.get_piece_size() == size and sp.decode(sp.encode(corpus)) == corpus


def test_char_without_byte_fallback_needs_exactly_one_piece_per_character(corpus):
    exact = len(set(corpus)) + CONTROL_PIECES
    counted = (
        rf"gives {exact} \(one per distinct character and the control pieces\); set tokenizer.vocab_size to {exact}$"
    )
    with pytest.raises(TokenizerError, match=counted):
        trained(corpus, model_type="char", byte_fallback=False, vocab_size=8192)
    short = rf"have no piece .* give every character a piece with tokenizer\.vocab_size: {exact}$"
    with pytest.raises(TokenizerError, match=short):
        trained(corpus, model_type="char", byte_fallback=False, vocab_size=exact - 1)
    sp = trained(corpus, model_type="char", byte_fallback=False, vocab_size=exact)
    assert sp.decode(sp.encode(corpus)) == corpus


def test_char_vocab_that_leaves_no_piece_for_characters_is_an_error(corpus):
    reserved = CONTROL_PIECES + BYTE_PIECES
    too_small = (
        rf"^tokenizer\.vocab_size: 200 is too small: .* take {reserved}, leaving none .*; set it above {reserved}$"
    )
    with pytest.raises(TokenizerError, match=too_small):
        trained(corpus, model_type="char", vocab_size=200)
    # With no piece of its own the space is spelt in the bytes of ▁ and would come back as ▁: refused.
    with pytest.raises(TokenizerError, match=rf"{reserved} leaves no piece for the space .* at least {reserved + 1}$"):
        trained(corpus, model_type="char", vocab_size=reserved)
    sp = trained(corpus, model_type="char", vocab_size=reserved + 1)
    assert sp.decode(sp.encode(corpus)) == corpus


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_coverage_below_one_without_byte_fallback_is_refused_naming_the_characters(kind, corpus):
    lossy = {"model_type": kind, "vocab_size": 100, "character_coverage": 0.999, "byte_fallback": False}
    message = (
        r"^tokenizer\.byte_fallback: false loses text: .* \d+ distinct characters of this corpus have no piece and "
        r"decode as <unk> \(the rarest: .*'é'.*\); set tokenizer\.byte_fallback: true, or give every character a "
        r"piece with tokenizer\.character_coverage: 1\.0$"
    )
    with pytest.raises(TokenizerError, match=message):
        trained(corpus, **lossy)
    # Either advice gives a lossless tokenizer (byte pieces take 256 more).
    for fix in ({"byte_fallback": True, "vocab_size": 100 + BYTE_PIECES}, {"character_coverage": 1.0}):
        sp = trained(corpus, **{**lossy, **fix})
        assert sp.decode(sp.encode(corpus)) == corpus


def test_same_params_give_byte_identical_files(corpus, tmp_path):
    cfg = make_config(tokenizer=SMALL).tokenizer
    save_tokenizer(train_tokenizer(corpus, cfg), tmp_path / "a")
    save_tokenizer(train_tokenizer(corpus, cfg), tmp_path / "b")
    for name in os.listdir(tmp_path / "a"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_other_params_give_another_tokenizer(corpus):
    small = train_tokenizer(corpus, make_config(tokenizer=SMALL).tokenizer)
    larger = train_tokenizer(corpus, make_config(tokenizer={"vocab_size": 420}).tokenizer)
    assert processor(small).get_piece_size() == 400
    assert processor(larger).get_piece_size() == 420


def test_vocab_too_large_names_the_setting(corpus):
    cfg = make_config(tokenizer={"vocab_size": 8192}).tokenizer
    with pytest.raises(TokenizerError, match=r"tokenizer\.vocab_size: 8192 is too large for this corpus.*at most \d+"):
        train_tokenizer(corpus, cfg)


def test_vocab_too_small_names_the_setting(corpus):
    cfg = make_config(tokenizer={"vocab_size": 100}).tokenizer
    with pytest.raises(TokenizerError, match=r"tokenizer\.vocab_size: 100 is too small.*at least \d+ pieces"):
        train_tokenizer(corpus, cfg)


def test_empty_corpus_is_an_error():
    with pytest.raises(TokenizerError, match="corpus is empty"):
        train_tokenizer("", make_config().tokenizer)


def test_stats_count_pieces_and_characters(corpus, tmp_path):
    save_tokenizer(train_tokenizer(corpus, make_config(tokenizer=SMALL).tokenizer), tmp_path)
    stats = tokenizer_stats(load_tokenizer(tmp_path), corpus)
    assert stats["vocab_size"] == 400
    assert stats["chars"] == len(corpus)
    assert stats["chars_per_token"] == pytest.approx(len(corpus) / stats["tokens"], abs=1e-4)
    assert 0 < stats["pieces_used"] <= 400
    assert stats["unk_tokens"] == 0 and stats["lossless"] is True


def test_missing_tokenizer_names_the_stage(tmp_path):
    with pytest.raises(MissingInputError, match=r"run the `tokenizer` stage"):
        load_tokenizer(tmp_path)
    assert not (tmp_path / MODEL_FILE).exists()


@pytest.mark.integration  # trains a tokenizer on the real corpus
@pytest.mark.skipif(not os.environ.get(MIRROR_ENV), reason=f"{MIRROR_ENV} not set: no real corpus here")
def test_default_tokenizer_is_lossless_on_the_whole_real_corpus():
    text = (Path(os.environ[MIRROR_ENV]) / "tinyshakespeare.txt").read_text(encoding="utf-8")
    cfg = make_config()
    # Trained on the train split only, as the stage does, and still lossless on every character.
    train_text = text[: int(len(text) * cfg.data.train_fraction)]
    sp = processor(train_tokenizer(train_text, cfg.tokenizer))
    ids = sp.encode(text)
    assert sp.get_piece_size() == 8192
    assert sp.decode(ids) == text
    assert sp.unk_id() not in ids
