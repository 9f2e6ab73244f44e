"""The native rope model against transformers' LlamaForCausalLM, and the export that transformers loads."""

import pytest
import sentencepiece as spm
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from llama_pe.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from llama_pe.cli import main as cli_main
from llama_pe.data.tokenizer import train_tokenizer
from llama_pe.errors import ConfigError
from llama_pe.model import Transformer, build_model
from llama_pe.model.hf import HFLlama, hf_to_native, llama_config, native_to_hf
from tests.conftest import make_config
from tests.model.conftest import tiny_args

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
    logits, loss = model(tokens, tokens)
    assert logits.shape == (2, 10, args.vocab_size) and loss.ndim == 0
    torch.manual_seed(0)
    native = build_model(tiny_args(pos="rope")).eval()
    assert torch.allclose(native(tokens)[0], logits, atol=1e-4)  # same seed, same init, same function


@pytest.fixture(scope="module")
def tokenizer_model(corpus) -> bytes:
    return train_tokenizer(corpus, make_config(tokenizer={"vocab_size": 400}).tokenizer)


@pytest.mark.parametrize("impl", ["native", "hf"])
def test_export_loads_offline_with_same_logits_and_token_ids(impl, tokenizer_model, corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    model = build_model(tiny_args(pos="rope", vocab_size=400, impl=impl, tie_embeddings=impl == "hf")).eval()
    save_checkpoint(tmp_path / "model.pt", model, tokenizer_model)
    cli_main(["export-hf", str(tmp_path / "model.pt"), str(tmp_path / "hf")])

    hf_model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    hf_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    sp = spm.SentencePieceProcessor(model_proto=tokenizer_model)
    assert hf_tokenizer(corpus, add_special_tokens=False)["input_ids"] == sp.encode(corpus)
    assert hf_tokenizer.decode(sp.encode(corpus)) == corpus

    reloaded = model_from_checkpoint(load_checkpoint(tmp_path / "model.pt"))
    tokens = torch.tensor([sp.encode(corpus[:400])])
    with torch.no_grad():
        assert (reloaded(tokens)[0] - hf_model(input_ids=tokens).logits).abs().max().item() <= 1e-4


def test_export_of_another_encoding_is_a_clear_error(tokenizer_model, tmp_path):
    from llama_pe.export import export_hf

    save_checkpoint(tmp_path / "alibi.pt", build_model(tiny_args(pos="alibi", vocab_size=400)), tokenizer_model)
    with pytest.raises(ConfigError, match=r"model\.pos=alibi has no Hugging Face equivalent"):
        export_hf(tmp_path / "alibi.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists()
