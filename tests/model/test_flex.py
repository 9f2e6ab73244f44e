"""FlexAttention's path for the biased encodings computes what SDPA with the bias tensor does.

Its fused kernel runs on a GPU; on a CPU, FlexAttention runs eagerly and forward-only, which is enough to check
the score_mod's math against the bias tensor that SDPA adds.
"""

import pytest
import torch

from llama_pe.core.model import flex
from tests.model.conftest import BIASED, VOCAB, learnable, tiny_model

pytestmark = pytest.mark.filterwarnings("ignore:.*flex_attention.*:UserWarning")


@pytest.fixture
def flex_on_cpu(monkeypatch):
    monkeypatch.setattr(flex, "FLEX_DEVICES", ("cuda", "cpu"))


@pytest.mark.parametrize("pos", BIASED)
@pytest.mark.parametrize("last", [None, 5])  # every query, or the final block's queries at the last 5 positions
def test_flex_path_gives_the_logits_of_the_sdpa_path(pos, last, monkeypatch):
    model = tiny_model(pos=pos, **learnable(pos)).eval()
    with torch.no_grad():  # learned parameters moved off their init: the score_mod must read the live values
        for param in model.positions.parameters():
            param.mul_(torch.linspace(0.5, 2.0, param.numel()).view_as(param))
    tokens = torch.randint(0, VOCAB, (2, 20))
    with torch.no_grad():
        sdpa, _ = model(tokens, last=last)
        monkeypatch.setattr(flex, "FLEX_DEVICES", ("cuda", "cpu"))
        calls = []
        original = flex.biased_causal_attention
        monkeypatch.setattr(
            "llama_pe.core.model.layers.biased_causal_attention", lambda *a: calls.append(1) or original(*a)
        )
        fused, _ = model(tokens, last=last)
    assert len(calls) == model.args.n_layers  # every layer took the flex path
    torch.testing.assert_close(fused, sdpa, rtol=1e-5, atol=1e-5)


def test_rope_and_training_with_dropout_and_the_cache_keep_sdpa(flex_on_cpu):
    alibi = tiny_model(pos="alibi")
    assert flex.wants_flex(torch.device("cpu"), alibi.positions.spec.biased, dropout_active=False, cached=False)
    assert not flex.wants_flex(torch.device("cpu"), alibi.positions.spec.biased, dropout_active=True, cached=False)
    assert not flex.wants_flex(torch.device("cpu"), alibi.positions.spec.biased, dropout_active=False, cached=True)
    assert not tiny_model(pos="rope").positions.spec.biased and tiny_model(pos="rope").positions.score_mod(4, 4) is None
    assert not flex.wants_flex(torch.device("cpu"), False, dropout_active=False, cached=False)


def test_cpu_keeps_sdpa_by_default():
    alibi = tiny_model(pos="alibi")
    assert not flex.wants_flex(torch.device("cpu"), alibi.positions.spec.biased, dropout_active=False, cached=False)
