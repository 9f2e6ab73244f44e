import pytest
import torch

from llama_pe.core.generate import generate
from llama_pe.core.model.layers import KVCache
from tests.model.conftest import VOCAB, tiny_model


def test_greedy_with_and_without_cache_give_identical_tokens(pos):
    model = tiny_model(pos=pos, max_seq_len=16)
    prompt = [5, 17, 42]
    # 40 tokens: past the 16-position table, so learned also exercises its restart on the last window.
    cached = generate(model, prompt, max_new_tokens=40, temperature=0.0, use_cache=True)
    uncached = generate(model, prompt, max_new_tokens=40, temperature=0.0, use_cache=False)
    assert cached == uncached and len(cached) == 40


def test_greedy_with_and_without_cache_agree_for_the_hf_reference():
    model = tiny_model(pos="rope", impl="hf")
    prompt = [1, 2, 3, 4]
    cached = generate(model, prompt, max_new_tokens=20, temperature=0.0, use_cache=True)
    assert cached == generate(model, prompt, max_new_tokens=20, temperature=0.0, use_cache=False)


def test_cached_logits_equal_full_logits(pos):
    model = tiny_model(pos=pos).eval()
    tokens = torch.randint(0, VOCAB, (1, 12))
    full, _ = model(tokens)
    cache: KVCache = model.new_cache()
    first, _ = model(tokens[:, :7], cache=cache)
    rest, _ = model(tokens[:, 7:], cache=cache)
    assert torch.allclose(torch.cat((first, rest), dim=1), full, atol=1e-5)


def test_sampling_is_seeded():
    model = tiny_model(pos="alibi")
    a = generate(model, [3], max_new_tokens=15, temperature=1.0, top_k=20, seed=1)
    b = generate(model, [3], max_new_tokens=15, temperature=1.0, top_k=20, seed=1)
    c = generate(model, [3], max_new_tokens=15, temperature=1.0, top_k=20, seed=2)
    assert a == b and a != c


def test_top_k_one_is_greedy():
    model = tiny_model(pos="rope")
    assert generate(model, [3, 4], 10, temperature=0.8, top_k=1) == generate(model, [3, 4], 10, temperature=0.0)


def test_empty_prompt_is_an_error():
    with pytest.raises(ValueError, match="at least one token"):
        generate(tiny_model(), [], 5)
