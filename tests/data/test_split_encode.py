import json
from collections import Counter

import numpy as np
import pytest
import sentencepiece as spm

from llama_pe.core.data.encode import META_FILE, encode_splits, read_tokens, write_encoded
from llama_pe.core.data.split import SPLITS, split_text, tokenizer_training_text
from llama_pe.core.data.tokenizer import train_tokenizer
from llama_pe.errors import DataError
from tests.conftest import make_config

RANDOM = {"split": "random_chunks", "val_fraction": 0.1, "test_fraction": 0.1}


def random_chunks_config(**data):
    """The original study's split; train.context 31 makes chunks of 32 tokens (one sample: 31 inputs + 1)."""
    return make_config(data={**RANDOM, **data}, train={"context": 31})


def encode_random(text, sp, **data):
    cfg = random_chunks_config(**data)
    assert cfg.chunk_tokens == 32
    return encode_splits(text, sp, cfg.data, cfg.chunk_tokens)


@pytest.fixture(scope="module")
def sp(corpus) -> spm.SentencePieceProcessor:
    model = train_tokenizer(corpus, make_config(tokenizer={"vocab_size": 400}).tokenizer)
    return spm.SentencePieceProcessor(model_proto=model)


@pytest.mark.parametrize("n_chars", [1_115_394, 1000, 12_345, 99_999])
def test_contiguous_split_is_in_order_and_val_plus_test_is_nanogpts_val(n_chars):
    text = "".join(chr(ord("a") + i % 26) for i in range(n_chars))
    parts = split_text(text, make_config().data)
    assert parts["train"] + parts["val"] + parts["test"] == text
    assert parts["val"] + parts["test"] == text[int(n_chars * 0.9) :]  # nanoGPT's shakespeare_char val split
    assert abs(len(parts["test"]) - 0.05 * n_chars) <= 1
    assert abs(len(parts["val"]) - 0.05 * n_chars) <= 1


def test_contiguous_encoding_decodes_back_to_each_split(corpus, sp):
    cfg = make_config().data
    splits = encode_splits(corpus, sp, cfg)
    texts = split_text(corpus, cfg)
    for name in SPLITS:
        assert splits[name].ids.dtype == np.uint16
        assert sp.decode(splits[name].ids.tolist()) == texts[name]
        assert splits[name].chars == len(texts[name])
    assert sum(s.chars for s in splits.values()) == len(corpus)


def test_tokenizer_learns_from_train_text_only_in_contiguous_mode(corpus):
    assert tokenizer_training_text(corpus, make_config().data) == split_text(corpus, make_config().data)["train"]
    assert tokenizer_training_text(corpus, random_chunks_config().data) == corpus


def test_random_chunks_deal_whole_chunks_80_10_10(corpus, sp):
    splits = encode_random(corpus, sp)
    all_ids = np.asarray(sp.encode(corpus))
    n_chunks = all_ids.size // 32
    chunks = {name: split.ids.reshape(-1, 32) for name, split in splits.items()}
    assert chunks["val"].shape[0] == int(n_chunks * 0.1) == chunks["test"].shape[0]
    assert sum(c.shape[0] for c in chunks.values()) == n_chunks
    # Every chunk of the corpus lands in exactly one split: no overlap, nothing lost but the tail.
    expected = Counter(map(bytes, all_ids[: n_chunks * 32].astype(np.uint16).reshape(-1, 32)))
    dealt = Counter(map(bytes, np.concatenate(list(chunks.values()))))
    assert dealt == expected
    # Shuffled: the training chunks are not simply the first 80% of the corpus.
    assert not np.array_equal(chunks["train"].reshape(-1), all_ids[: chunks["train"].size])
    tail_chars = len(sp.decode(all_ids[n_chunks * 32 :].tolist()))
    assert sum(s.chars for s in splits.values()) + tail_chars == len(corpus)


def test_random_chunks_depend_on_the_seed_only(corpus, sp):
    a = encode_random(corpus, sp)
    b = encode_random(corpus, sp)
    c = encode_random(corpus, sp, split_seed=7)
    assert all(np.array_equal(a[n].ids, b[n].ids) for n in SPLITS)
    assert not np.array_equal(a["val"].ids, c["val"].ids)


def test_too_small_corpus_for_random_chunks_names_the_settings(sp):
    with pytest.raises(DataError, match=r"the val split is empty.*chunks of 32 tokens \(train\.context \+ 1\)"):
        encode_random("A short line.\n" * 20, sp)


def test_empty_corpus_is_an_error(sp):
    with pytest.raises(DataError, match="corpus is empty"):
        encode_splits("", sp, make_config().data)


def test_written_token_files_and_meta(corpus, sp, tmp_path):
    splits = encode_splits(corpus, sp, make_config().data)
    meta = write_encoded(splits, tmp_path / "encoded", {"split": "contiguous", "vocab_size": 400})
    for name in SPLITS:
        assert np.array_equal(read_tokens(tmp_path / "encoded" / f"{name}.bin"), splits[name].ids)
    on_disk = json.loads((tmp_path / "encoded" / META_FILE).read_text())
    assert on_disk == meta
    assert on_disk["dtype"] == "uint16"
    assert on_disk["splits"]["val"] == {
        "tokens": splits["val"].ids.size,
        "chars": splits["val"].chars,
        "chars_per_token": round(splits["val"].chars / splits["val"].ids.size, 4),
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoded"]  # no temporary left behind
