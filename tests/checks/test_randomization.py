import copy

import pytest
import torch
from torch import nn

from helpers import make_tiny_cnn
from sanitycheck.checks import get_check
from sanitycheck.checks.data_randomization import DataRandomization
from sanitycheck.checks.randomization import (ROOT, CascadingRandomization, IndependentRandomization,
                                              parameter_layers, randomize_layer_)
from sanitycheck.errors import ConfigError, ModelError
from sanitycheck.registry import CHECKS


class TinyTransformer(nn.Module):
    """Parameters that reset_parameters misses: a raw positional embedding on the root module,
    MultiheadAttention's packed in-projection, an embedding table and LayerNorm affine parameters."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.pos = nn.Parameter(torch.zeros(5, 8))
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens):
        h = self.emb(tokens) + self.pos
        h, _ = self.attn(h, h, h)
        return self.head(self.norm(h).mean(1))


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_layers_in_forward_execution_order(tiny_cnn, tiny_batch):
    assert parameter_layers(tiny_cnn, tiny_batch[0]) == ["conv1", "conv2", "fc1", "fc2"]


def test_parameters_on_container_modules_are_found_and_ordered():
    model = TinyTransformer().eval()
    tokens = torch.randint(0, 10, (2, 5))
    assert parameter_layers(model, tokens) == ["emb", ROOT, "attn", "attn.out_proj", "norm", "head"]


def test_every_parameter_is_reinitialized_even_those_reset_parameters_misses():
    model = TinyTransformer().eval()
    tokens = torch.randint(0, 10, (2, 5))
    work = copy.deepcopy(model)
    for state in CascadingRandomization().states(work, seed=0, example_input=tokens):
        pass
    final = state.model
    for (name, before), (_, after) in zip(model.named_parameters(), final.named_parameters()):
        assert not torch.equal(before, after), f"{name} was not re-initialized"


def test_cascading_randomizes_from_the_logits_down_one_more_layer_per_step(tiny_cnn, tiny_batch):
    original = _state(tiny_cnn)
    seen = []
    for state in CascadingRandomization().states(tiny_cnn, seed=0, example_input=tiny_batch[0]):
        changed = [n for n in ("conv1", "conv2", "fc1", "fc2")
                   if not torch.equal(getattr(state.model, n).weight, getattr(tiny_cnn, n).weight)]
        seen.append((state.step, changed))
    assert seen == [("fc2", ["fc2"]), ("fc1", ["fc1", "fc2"]), ("conv2", ["conv2", "fc1", "fc2"]),
                    ("conv1", ["conv1", "conv2", "fc1", "fc2"])]
    assert _same(original, _state(tiny_cnn)), "the original model was mutated"


def test_independent_randomizes_exactly_one_layer_per_step(tiny_cnn, tiny_batch):
    original = _state(tiny_cnn)
    steps = []
    for state in IndependentRandomization().states(tiny_cnn, seed=0, example_input=tiny_batch[0]):
        changed = [n for n in ("conv1", "conv2", "fc1", "fc2")
                   if not torch.equal(getattr(state.model, n).weight, getattr(tiny_cnn, n).weight)]
        assert changed == [state.step]
        steps.append(state.step)
    assert steps == ["fc2", "fc1", "conv2", "conv1"]
    assert _same(original, _state(tiny_cnn))


def test_layer_randomization_depends_on_seed_and_layer_name_only(tiny_cnn, tiny_batch):
    x = tiny_batch[0]
    casc = {s.step: copy.deepcopy(s.model.fc1.weight) for s in
            CascadingRandomization().states(tiny_cnn, seed=3, example_input=x)}
    indep = {s.step: copy.deepcopy(s.model.fc1.weight) for s in
             IndependentRandomization().states(tiny_cnn, seed=3, example_input=x)}
    assert torch.equal(casc["fc1"], indep["fc1"])  # same (seed, layer) -> same draw, whatever the order
    other = next(s for s in IndependentRandomization().states(tiny_cnn, seed=4, example_input=x) if s.step == "fc1")
    assert not torch.equal(other.model.fc1.weight, indep["fc1"])


def test_randomization_leaves_the_global_rng_alone(tiny_cnn, tiny_batch):
    before = torch.random.get_rng_state()
    for _ in CascadingRandomization().states(tiny_cnn, seed=0, example_input=tiny_batch[0]):
        pass
    assert torch.equal(before, torch.random.get_rng_state())


def test_randomized_weights_follow_pytorch_default_scale():
    layer = nn.Linear(400, 10)
    randomize_layer_(layer, seed=0, layer_name="fc")
    bound = 1 / 400 ** 0.5
    assert layer.weight.abs().max() <= bound and layer.weight.std() > bound / 3
    assert layer.bias.abs().max() <= bound


def test_unknown_layer_names_are_rejected(tiny_cnn, tiny_batch):
    with pytest.raises(ConfigError, match="fc9"):
        list(CascadingRandomization(layers=["fc9"]).states(tiny_cnn, seed=0, example_input=tiny_batch[0]))


def test_data_randomization_needs_a_zoo_model_or_a_given_random_label_model(tiny_cnn, tiny_batch):
    with pytest.raises(ModelError, match="not a zoo model"):
        list(DataRandomization().states(tiny_cnn, seed=0, example_input=tiny_batch[0], context={}))
    other = make_tiny_cnn(seed=1)
    states = list(DataRandomization().states(tiny_cnn, seed=0, example_input=tiny_batch[0],
                                             context={"random_label_model": other}))
    assert [s.step for s in states] == ["random_labels"] and states[0].model is other


def _model_interventions():
    """Registered checks that produce model states (evaluations and audits score maps instead)."""
    return [n for n in CHECKS.names() if getattr(CHECKS.get(n), "unit", None) == "state"]


@pytest.mark.parametrize("name", _model_interventions())
def test_no_check_mutates_the_original_model(name, tiny_cnn, tiny_batch):
    original = _state(tiny_cnn)
    check = get_check(name)
    context = {"random_label_model": make_tiny_cnn(seed=1)}
    for state in check.states(tiny_cnn, seed=0, example_input=tiny_batch[0], context=context):
        state.model(tiny_batch[0])
        assert state.model is not tiny_cnn
    assert _same(original, _state(tiny_cnn))
    assert not tiny_cnn.training


def test_group_depth_randomizes_whole_blocks_per_step_in_forward_order():
    import torch.nn as nn

    from sanitycheck.checks.randomization import CascadingRandomization, IndependentRandomization

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x):
            return self.b(self.a(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([Block(), Block()])
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            for b in self.blocks:
                x = b(x)
            return self.head(x)

    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(2, 4)
    check = CascadingRandomization(group_depth=2)
    assert check.steps(net, x) == ["head", "blocks.1", "blocks.0"]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    seen = []
    for state in check.states(net, seed=0, example_input=x):
        changed = {k.rsplit(".", 1)[0] for k, v in state.model.state_dict().items() if not torch.equal(v, before[k])}
        seen.append(changed)
    assert seen[0] == {"head"} and seen[1] == {"head", "blocks.1.a", "blocks.1.b"}
    assert seen[2] == {"head", "blocks.1.a", "blocks.1.b", "blocks.0.a", "blocks.0.b"}
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # the original is untouched
    ind = [{k.rsplit(".", 1)[0] for k, v in s.model.state_dict().items() if not torch.equal(v, before[k])}
           for s in IndependentRandomization(group_depth=2).states(net, seed=0, example_input=x)]
    assert ind == [{"head"}, {"blocks.1.a", "blocks.1.b"}, {"blocks.0.a", "blocks.0.b"}]
