"""Fair pairing: for one seed, every encoding (and Hugging Face's Llama) starts from the same shared weights."""

import torch

from llama_pe.core.model import build_model
from llama_pe.core.model.hf import hf_to_native
from llama_pe.positions.catalogue import ENCODINGS, hf_encoding
from tests.model.conftest import tiny_args


def _built(seed: int, **changes):
    torch.manual_seed(seed)
    model = build_model(tiny_args(**changes))
    return model, torch.get_rng_state()


def _shared(model) -> dict[str, torch.Tensor]:
    return {name: t for name, t in model.state_dict().items() if not name.startswith("positions.")}


def test_every_encoding_starts_from_the_same_shared_tensors_and_leaves_the_same_random_state():
    reference, reference_state = _built(3, pos="rope")
    shared = _shared(reference)
    assert len(shared) > 10
    for pos in ENCODINGS:
        model, state = _built(3, pos=pos)
        other = _shared(model)
        assert other.keys() == shared.keys(), pos
        for name, tensor in shared.items():
            assert torch.equal(other[name], tensor), f"{pos}: {name}"
        assert torch.equal(state, reference_state), f"{pos}: the dropout stream after the build differs"
    hf, _ = _built(3, pos=hf_encoding(), impl="hf")
    hf_shared = hf_to_native(hf.hf.state_dict())
    for name, tensor in shared.items():
        assert torch.equal(hf_shared[name], tensor), f"hf: {name}"


def test_another_seed_draws_other_shared_weights_and_own_parameters_come_from_their_own_stream():
    first, _ = _built(3, pos="t5")
    second, _ = _built(4, pos="t5")
    assert not torch.equal(first.tok_embeddings.weight, second.tok_embeddings.weight)
    assert not torch.equal(first.positions.table.weight, second.positions.table.weight)
    # The encoding's own tensors are not a copy of any shared one: they come from a stream of their own.
    own = first.positions.table.weight.flatten()[:8]
    for tensor in _shared(first).values():
        assert not torch.equal(tensor.flatten()[:8], own)
    # The depth-scaled init of the residual projections still holds.
    deep, _ = _built(0, pos="rope", dim=256, n_layers=8, n_heads=4, n_kv_heads=4)
    assert deep.layers[0].attention.wo.weight.std().item() < 0.6 * deep.layers[0].attention.wq.weight.std().item()
