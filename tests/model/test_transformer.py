import math

import pytest
import torch

from llama_pe.core.model import SIZES, build_model, model_args_from_config
from llama_pe.errors import ContextLengthError
from llama_pe.positions.catalogue import ENCODINGS
from llama_pe.settings.config import ConfigError
from tests.conftest import make_config
from tests.model.conftest import UNBOUNDED, VOCAB, learnable, tiny_args, tiny_model


def test_changing_a_later_token_changes_no_earlier_logit(pos):
    model = tiny_model(pos=pos).eval()
    tokens = torch.randint(0, VOCAB, (2, 12))
    changed = tokens.clone()
    changed[:, 8] = (changed[:, 8] + 1) % VOCAB
    before, _ = model(tokens)
    after, _ = model(changed)
    assert torch.equal(before[:, :8], after[:, :8])
    assert not torch.allclose(before[:, 8:], after[:, 8:])


def test_first_loss_is_near_uniform(pos):
    torch.manual_seed(1)
    model = build_model(tiny_args(pos=pos, vocab_size=4096, dim=64)).eval()
    tokens, targets = torch.randint(0, 4096, (2, 4, 16))
    _, loss = model(tokens, targets)
    assert abs(loss.item() - math.log(4096)) < 0.1


def test_tiny_model_overfits_one_batch(pos):
    model = tiny_model(pos=pos, **learnable(pos))
    tokens = torch.randint(0, VOCAB, (4, 17), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        _, loss = model(tokens[:, :-1], tokens[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2


@pytest.mark.parametrize("pos", UNBOUNDED)
def test_runs_at_four_times_the_training_context(pos):
    model = tiny_model(pos=pos, max_seq_len=16).eval()
    logits, _ = model(torch.randint(0, VOCAB, (1, 64)))
    assert logits.shape == (1, 64, VOCAB) and torch.isfinite(logits).all()


@pytest.mark.parametrize("pos", [name for name in ENCODINGS if name not in UNBOUNDED])
def test_a_bounded_encoding_refuses_to_run_past_its_table(pos):
    model = tiny_model(pos=pos, max_seq_len=16).eval()
    model(torch.randint(0, VOCAB, (1, 16)))
    message = rf"model\.pos={pos}: position 63 is past the 16 positions it can place \(train\.context; "
    with pytest.raises(ContextLengthError, match=message):
        model(torch.randint(0, VOCAB, (1, 64)))


def test_dropout_is_applied_the_same_way_to_every_variant(pos):
    model = tiny_model(pos=pos, dropout=0.5)
    tokens = torch.randint(0, VOCAB, (1, 8))
    model.train()
    assert not torch.equal(model(tokens)[0], model(tokens)[0])
    model.eval()
    assert torch.equal(model(tokens)[0], model(tokens)[0])


def test_init_is_scaled_by_depth():
    torch.manual_seed(0)
    model = build_model(tiny_args(dim=256, n_layers=8, n_heads=4, n_kv_heads=4))
    assert model.tok_embeddings.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.layers[0].attention.wo.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)
    assert model.layers[0].feed_forward.w2.weight.std().item() == pytest.approx(0.02 / math.sqrt(16), rel=0.05)


def test_weight_tying():
    tied, untied = tiny_model(tie_embeddings=True), tiny_model(tie_embeddings=False)
    assert tied.output.weight is tied.tok_embeddings.weight
    assert untied.num_params() - tied.num_params() == VOCAB * 32


@pytest.mark.parametrize(
    ("size", "expected"),
    [("tiny", 622_912), ("small", 3_147_456), ("base", 12_587_904), ("seed33m", 33_563_136)],
)
def test_preset_parameter_counts(size, expected):
    args = model_args_from_config(make_config(model={"size": size}).model, vocab_size=8192, context=64)
    assert build_model(args).num_params() == expected


def test_seed33m_is_the_original_studys_shape():
    args = model_args_from_config(make_config(model={"size": "seed33m"}).model, vocab_size=8192, context=32)
    assert (args.dim, args.n_layers, args.n_heads, args.n_kv_heads, args.hidden_dim) == (512, 8, 16, 8, 1536)
    assert not args.tie_embeddings


def test_params_override_the_preset():
    cfg = make_config(model={"size": "small", "dim": 96, "n_layers": 2, "dropout": 0.0}).model
    args = model_args_from_config(cfg, vocab_size=8192, context=64)
    assert (args.dim, args.n_layers, args.dropout, args.n_heads) == (96, 2, 0.0, SIZES["small"].n_heads)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dim": 30, "n_heads": 4}, r"model\.dim: 30 is not divisible by model\.n_heads=4"),
        ({"n_heads": 4, "n_kv_heads": 3}, r"model\.n_heads: 4 is not a multiple of model\.n_kv_heads=3"),
        ({"dim": 36, "n_heads": 4, "n_kv_heads": 4, "pos": "rope"}, r"head dimension must be even.*= 9"),
        ({"size": "huge"}, r"model\.size: unknown size 'huge'; valid sizes: tiny, small, base, seed33m"),
        ({"pos": "xpos"}, rf"model\.pos: unknown position encoding 'xpos'; valid: {', '.join(ENCODINGS)}$"),
        ({"impl": "hf", "pos": "alibi"}, r"model\.impl=hf supports model\.pos=rope only"),
    ],
)
def test_bad_model_settings_are_named(changes, message):
    with pytest.raises(ConfigError, match=message):
        args = model_args_from_config(make_config(model={"size": "tiny", **changes}).model, 256, 16)
        build_model(args)


def test_unknown_impl_is_a_config_error():
    with pytest.raises(ConfigError, match=r"model\.impl: expected one of native, hf; got 'jax'"):
        make_config(model={"impl": "jax"})


@pytest.mark.parametrize("impl", ["native", "hf"])
def test_logits_of_the_last_positions_are_those_of_the_full_forward(impl):
    model = tiny_model(impl=impl, pos="rope").eval()
    tokens = torch.randint(0, VOCAB, (2, 12))
    full, _ = model(tokens)
    last, _ = model(tokens, last=3)
    assert last.shape == (2, 3, VOCAB)
    torch.testing.assert_close(last, full[:, -3:], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("last", [1, 5, 11])
def test_the_final_block_attending_from_the_last_positions_only_changes_nothing(pos, last):
    """The final block runs its queries and feed-forward on the last positions only; every encoding, cached too."""
    model = tiny_model(pos=pos).eval()
    tokens = torch.randint(0, VOCAB, (2, 12))
    full, _ = model(tokens)
    pruned, _ = model(tokens, last=last)
    torch.testing.assert_close(pruned, full[:, -last:], rtol=1e-5, atol=1e-5)
    cache = model.new_cache()
    model(tokens[:, :4], cache=cache, last=1)  # a prompt, pruned, still fills every layer's cache
    continued, _ = model(tokens[:, 4:], cache=cache, last=last)  # 8 new tokens: at most 8 logits
    torch.testing.assert_close(continued, full[:, -min(last, 8) :], rtol=1e-5, atol=1e-5)
