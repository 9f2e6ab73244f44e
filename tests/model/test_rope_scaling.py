"""RoPE context extension at evaluation: the native scaled frequencies against Hugging Face's, and by hand."""

import math

import pytest
import torch
from transformers import LlamaForCausalLM

from llama_pe.core.model.hf import hf_rope_parameters, hf_to_native, llama_config
from llama_pe.core.model.rope_scaling import RopeScaling, base_frequencies, scaled_frequencies
from llama_pe.core.model.transformer import Transformer
from llama_pe.errors import ConfigError
from llama_pe.positions.rope_scaling import ROPE_SCALING_METHODS
from tests.model.conftest import VOCAB, tiny_args, tiny_model

TRAIN = 16  # the tiny models' training context


@pytest.mark.parametrize("method", list(ROPE_SCALING_METHODS))
@pytest.mark.parametrize("multiple", [4, 8])
def test_native_scaled_rope_matches_hugging_face_llama(method, multiple):
    """The same weights, the same method and factor: LlamaForCausalLM with rope_parameters gives the same logits."""
    args = tiny_args(pos="rope")
    scaling = RopeScaling(method, factor=float(multiple), original_context=TRAIN)
    config = llama_config(args)
    config.rope_parameters = hf_rope_parameters(args.encoding["rope_theta"], args.head_dim, scaling)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    hf = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # sharper attention than a 0.02-std init gives, so that positions move the logits
        for layer in hf.model.layers:
            layer.self_attn.q_proj.weight.mul_(20)
            layer.self_attn.k_proj.weight.mul_(20)
    native = Transformer(args).eval()
    native.load_state_dict(hf_to_native(hf.state_dict()))
    tokens = torch.randint(0, VOCAB, (2, TRAIN * multiple))
    with torch.no_grad(), native.scaled_rope(scaling):
        ours, _ = native(tokens)
    with torch.no_grad():
        theirs = hf(input_ids=tokens).logits
        unscaled, _ = native(tokens)
    assert (ours - theirs).abs().max().item() <= 1e-4
    assert (unscaled - theirs).abs().max().item() > 1e-2  # the scaling changed the logits: the test can fail


def test_the_hf_impl_scales_with_hugging_faces_code_and_matches_native():
    torch.manual_seed(0)
    native = tiny_model(pos="rope").eval()
    torch.manual_seed(0)
    hf = tiny_model(pos="rope", impl="hf").eval()  # the same init draws
    scaling = RopeScaling("yarn", factor=4.0, original_context=TRAIN)
    tokens = torch.randint(0, VOCAB, (1, 4 * TRAIN))
    with torch.no_grad(), native.scaled_rope(scaling), hf.scaled_rope(scaling):
        torch.testing.assert_close(hf(tokens)[0], native(tokens)[0], rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # restored on leaving the block
        torch.testing.assert_close(hf(tokens)[0], native(tokens)[0], rtol=1e-4, atol=1e-4)
        assert native.positions.scaling is None


def test_frequencies_by_hand():
    theta, head_dim = 10000.0, 8
    base = base_frequencies(theta, head_dim)
    torch.testing.assert_close(base, torch.tensor([1.0, 0.1, 0.01, 0.001]))
    linear, factor = scaled_frequencies(theta, head_dim, RopeScaling("linear", 4.0, 64), seq_len=256)
    torch.testing.assert_close(linear, base / 4)
    assert factor == 1.0
    within, _ = scaled_frequencies(theta, head_dim, RopeScaling("dynamic", 4.0, 64), seq_len=64)
    torch.testing.assert_close(within, base)  # up to the training length, the training frequencies
    grown, _ = scaled_frequencies(theta, head_dim, RopeScaling("dynamic", 4.0, 64), seq_len=256)
    new_theta = theta * (4 * 256 / 64 - 3) ** (8 / 6)  # NTK-aware: the base grows with the sequence
    torch.testing.assert_close(grown, base_frequencies(new_theta, head_dim))
    for seq_len in (64, 256):  # static NTK-aware: alpha = factor at every length
        ntk, _ = scaled_frequencies(theta, head_dim, RopeScaling("ntk", 4.0, 64), seq_len=seq_len)
        torch.testing.assert_close(ntk, base_frequencies(theta * 4 ** (8 / 6), head_dim))
        assert ntk[0] == base[0] and ntk[-1] == pytest.approx(base[-1] / 4)  # the slowest interpolated by alpha
    yarn, attention = scaled_frequencies(theta, head_dim, RopeScaling("yarn", 4.0, 64), seq_len=256)
    assert attention == pytest.approx(0.1 * math.log(4) + 1)
    assert yarn[0] == base[0] and yarn[-1] == pytest.approx(base[-1] / 4)  # fast dims kept, slow ones interpolated


def test_bad_scalings_and_encodings_without_rotary_positions():
    with pytest.raises(
        ValueError, match=f"unknown RoPE scaling method 'xpos'; valid: {', '.join(ROPE_SCALING_METHODS)}$"
    ):
        RopeScaling("xpos", 2.0, 64)
    with pytest.raises(ValueError, match=r"RoPE scaling factor must be at least 1, got 0\.5"):
        RopeScaling("linear", 0.5, 64)
    alibi = tiny_model(pos="alibi")
    with pytest.raises(ConfigError, match=r"eval.rope_scaling: yarn scales rotary positions; model.pos=alibi has none"):
        alibi.scaled_rope(RopeScaling("yarn", 4.0, TRAIN)).__enter__()
