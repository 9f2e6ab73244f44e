"""The native rope model against transformers' LlamaForCausalLM, and the export that transformers loads."""

import io
import os
from pathlib import Path

import pytest
import sentencepiece as spm
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from llama_pe.commands.cli import main as cli_main
from llama_pe.commands.export import hf_tokenizer
from llama_pe.core.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from llama_pe.core.data.download import MIRROR_ENV
from llama_pe.core.data.tokenizer import BYTE_PIECES, CONTROL_PIECES, train_tokenizer, training_sentences
from llama_pe.core.model import Transformer, build_model
from llama_pe.core.model.hf import HFLlama, hf_to_native, llama_config, native_to_hf
from llama_pe.errors import ConfigError
from llama_pe.positions.catalogue import ENCODINGS, hf_encoding
from tests.conftest import make_config
from tests.data.test_tokenizer import TRICKY, typed
from tests.model.conftest import tiny_args

KINDS = ["bpe", "unigram", "char"]
# SentencePiece reads the names of its own control and byte pieces in text as plain characters.
NAMES = "<s> </s> <unk> <0x41>"

CONFIGS = [
    dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=4, tie_embeddings=True),
    dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, tie_embeddings=False),
    dict(dim=96, n_layers=3, n_heads=6, n_kv_heads=2, tie_embeddings=True, rope_theta=500.0),
    dict(dim=48, n_layers=1, n_heads=2, n_kv_heads=1, tie_embeddings=False, ffn_hidden=100),
]
SEQ = 150  # longer than 2 x 64: positions well past the usual test lengths


@pytest.mark.parametrize("changes", CONFIGS)
def test_native_weights_in_hf_give_the_same_logits(changes):
    args = tiny_args(pos="rope", max_seq_len=SEQ, **changes)
    torch.manual_seed(0)
    native = Transformer(args).eval()
    hf = LlamaForCausalLM(llama_config(args)).eval()
    hf.load_state_dict(native_to_hf(native.state_dict()))
    tokens = torch.randint(0, args.vocab_size, (2, SEQ))
    with torch.no_grad():
        difference = (native(tokens)[0] - hf(input_ids=tokens).logits).abs().max().item()
    assert difference <= 1e-4


@pytest.mark.parametrize("changes", CONFIGS)
def test_hf_weights_in_native_give_the_same_logits(changes):
    args = tiny_args(pos="rope", max_seq_len=SEQ, **changes)
    torch.manual_seed(1)
    hf = LlamaForCausalLM(llama_config(args)).eval()
    native = Transformer(args).eval()
    native.load_state_dict(hf_to_native(hf.state_dict()))
    tokens = torch.randint(0, args.vocab_size, (1, SEQ))
    with torch.no_grad():
        assert (native(tokens)[0] - hf(input_ids=tokens).logits).abs().max().item() <= 1e-4


def test_hf_impl_has_the_native_interface_and_init():
    args = tiny_args(pos="rope", impl="hf")
    torch.manual_seed(0)
    model = build_model(args).eval()
    assert isinstance(model, HFLlama)
    tokens = torch.randint(0, args.vocab_size, (2, 10))
    logits, _ = model(tokens)
    _, loss = model(tokens, tokens)
    assert logits.shape == (2, 10, args.vocab_size) and loss.ndim == 0
    torch.manual_seed(0)
    native = build_model(tiny_args(pos="rope")).eval()
    assert torch.allclose(native(tokens)[0], logits, atol=1e-4)  # same seed, same init, same function


@pytest.fixture(scope="module")
def tokenizer_models(corpus) -> dict[str, bytes]:
    return {kind: train_tokenizer(corpus, make_config(tokenizer=typed(kind, corpus)).tokenizer) for kind in KINDS}


@pytest.fixture(scope="module")
def tokenizer_model(tokenizer_models) -> bytes:
    return tokenizer_models["bpe"]


@pytest.mark.parametrize(
    ("impl", "kind"), [("native", "bpe"), ("hf", "bpe"), ("native", "unigram"), ("native", "char")]
)
def test_export_loads_offline_with_same_logits_and_token_ids(
    impl, kind, tokenizer_models, corpus, tmp_path, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer_model = tokenizer_models[kind]
    sp = spm.SentencePieceProcessor(model_proto=tokenizer_model)
    torch.manual_seed(0)
    args = tiny_args(pos="rope", vocab_size=sp.get_piece_size(), impl=impl, tie_embeddings=impl == "hf")
    save_checkpoint(tmp_path / "model.pt", build_model(args).eval(), tokenizer_model)
    cli_main(["export-hf", str(tmp_path / "model.pt"), str(tmp_path / "hf")])
    modes = {f.name: oct(f.stat().st_mode & 0o777) for f in (tmp_path / "hf").iterdir()}
    assert "model.safetensors" in modes and set(modes.values()) == {"0o644"}, modes

    hf_model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    exported = AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in [corpus, *TRICKY, NAMES]:
        ids = exported(text, add_special_tokens=False)["input_ids"]
        assert ids == sp.encode(text), f"{kind}: {text[:40]!r}"
        assert exported.decode(ids) == text
    assert any(sp.is_byte(i) for i in sp.encode(TRICKY[-1])), "the unseen characters should go through byte pieces"

    reloaded = model_from_checkpoint(load_checkpoint(tmp_path / "model.pt"))
    tokens = torch.tensor([sp.encode(corpus[:400])])
    with torch.no_grad():
        assert (reloaded(tokens)[0] - hf_model(input_ids=tokens).logits).abs().max().item() <= 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_exported_tokenizer_without_byte_fallback_gives_unk_where_sentencepiece_does(
    kind, corpus, tmp_path, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = typed(kind, corpus, byte_fallback=False)
    settings["vocab_size"] -= BYTE_PIECES  # the pieces that byte fallback would have added
    model = train_tokenizer(corpus, make_config(tokenizer=settings).tokenizer)
    sp = spm.SentencePieceProcessor(model_proto=model)
    hf_tokenizer(model).save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in [corpus, *TRICKY]:
        assert reloaded(text, add_special_tokens=False)["input_ids"] == sp.encode(text), f"{kind}: {text[:40]!r}"
    assert sp.unk_id() in sp.encode(TRICKY[-1])


def test_export_of_a_word_tokenizer_is_refused(corpus):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus.splitlines()), model_writer=model, model_type="word", vocab_size=60, minloglevel=2
    )
    with pytest.raises(
        ConfigError, match=r"tokenizer\.model_type=word has no Hugging Face export .* bpe, unigram, char"
    ):
        hf_tokenizer(model.getvalue())


@pytest.mark.integration  # trains a tokenizer on the real corpus
@pytest.mark.skipif(not os.environ.get(MIRROR_ENV), reason=f"{MIRROR_ENV} not set: no real corpus here")
@pytest.mark.parametrize("kind", KINDS)
def test_exported_tokenizer_gives_sentencepiece_ids_on_the_real_corpus(kind, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    text = (Path(os.environ[MIRROR_ENV]) / "tinyshakespeare.txt").read_text(encoding="utf-8")
    cfg = make_config(tokenizer={"model_type": kind})
    if kind == "char":  # one piece per character, the byte pieces and the control pieces
        cfg = make_config(tokenizer={"model_type": kind, "vocab_size": len(set(text)) + BYTE_PIECES + CONTROL_PIECES})
    model = train_tokenizer(text[: int(len(text) * cfg.data.train_fraction)], cfg.tokenizer)
    sp = spm.SentencePieceProcessor(model_proto=model)
    hf_tokenizer(model).save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    ids = reloaded(text, add_special_tokens=False)["input_ids"]
    assert reloaded.decode(ids) == text and len(ids) == len(sp.encode(text))
    # Paragraph by paragraph: over one megabyte string SentencePiece's unigram Viterbi sums scores in float32 and
    # picks the other of two near-tied splits in a few places; tokenizers (float64) and short texts agree.
    paragraphs = training_sentences(text)
    assert reloaded(paragraphs, add_special_tokens=False)["input_ids"] == sp.encode(paragraphs)


@pytest.mark.parametrize("pos", [name for name, entry in ENCODINGS.items() if not entry.hf_exportable])
def test_export_of_another_encoding_is_a_clear_error(pos, tokenizer_model, tmp_path):
    from llama_pe.commands.export import export_hf

    save_checkpoint(tmp_path / "other.pt", build_model(tiny_args(pos=pos, vocab_size=400)), tokenizer_model)
    message = rf"export-hf: model\.pos={pos} \(.*\) has no Hugging Face equivalent: LlamaForCausalLM computes "
    with pytest.raises(ConfigError, match=message + rf"model\.pos={hf_encoding()} only"):
        export_hf(tmp_path / "other.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()
