import os
from pathlib import Path

import pytest
import sentencepiece as spm

from llama_pe.data.download import MIRROR_ENV
from llama_pe.data.tokenizer import (
    MODEL_FILE,
    TokenizerError,
    load_tokenizer,
    save_tokenizer,
    tokenizer_stats,
    train_tokenizer,
)
from llama_pe.errors import MissingInputError
from tests.conftest import make_config

SMALL = {"vocab_size": 400}


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
