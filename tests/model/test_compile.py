"""train.compile: the model compiles as one graph (no graph breaks) and computes what it computes eagerly."""

import math

import pytest
import torch

from tests.model.conftest import VOCAB, learnable, tiny_model


@pytest.fixture(autouse=True)
def fresh_compiler():
    # Every encoding compiles Transformer.forward anew; past dynamo's limit of recompilations of one function a
    # fullgraph compile fails, so each test starts from an empty cache.
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _loss_and_grads(model, tokens):
    model.zero_grad(set_to_none=True)
    _, loss = model(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}


def test_compiled_training_step_equals_the_eager_one(pos):
    torch.manual_seed(0)
    model = tiny_model(pos=pos, **learnable(pos)).train()
    tokens = torch.randint(0, VOCAB, (4, 17), generator=torch.Generator().manual_seed(1))
    eager_loss, eager_grads = _loss_and_grads(model, tokens)
    compiled = torch.compile(model, fullgraph=True)  # fullgraph: a graph break is an error, not a silent slowdown
    loss, _ = _loss_and_grads(compiled, tokens)
    grads = {name: p.grad for name, p in model.named_parameters()}  # the compiled module shares the parameters
    torch.testing.assert_close(loss, eager_loss, rtol=1e-5, atol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], rtol=1e-4, atol=1e-5, msg=name)


def test_compiled_training_with_dropout_is_one_graph():
    torch.manual_seed(0)
    compiled = torch.compile(tiny_model(pos="abs_rel", dropout=0.1).train(), fullgraph=True)
    tokens = torch.randint(0, VOCAB, (4, 17))
    _, loss = compiled(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    # An untrained model guesses about uniformly (ln VOCAB), and every weight gets a gradient through the graph.
    assert abs(loss.item() - math.log(VOCAB)) < 0.5
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in compiled.parameters())
