import copy

import pytest
import torch
from torch import nn

from tuner.uncertainty import MCDropout, mc_dropout_predict


def test_only_dropout_layers_sample_and_modes_are_restored(micro):
    base = copy.deepcopy(micro.models[0])
    model = nn.Sequential(base.features, nn.BatchNorm1d(64), base.mlp, base.head)
    model.train()
    seen = {}

    def record(name):
        def hook(mod, inputs, output):
            seen.setdefault(name, mod.training)
        return hook

    hooks = [mod.register_forward_hook(record(name)) for name, mod in model.named_modules() if name]
    pred = mc_dropout_predict(model, micro.test.images[:50], T=4)
    for h in hooks:
        h.remove()
    for name, mod in model.named_modules():
        if name:
            assert seen[name] == isinstance(mod, nn.Dropout), name
            assert mod.training, "previous (train) mode must be restored"
    assert pred.samples.shape == (4, 50, 3)
    assert pred.forward_passes == 4
    torch.testing.assert_close(pred.probs, pred.samples.mean(0))


def test_mc_dropout_is_seeded_and_stochastic(micro):
    model = micro.models[0]
    a = mc_dropout_predict(model, micro.test.images[:100], T=5, seed=3)
    b = mc_dropout_predict(model, micro.test.images[:100], T=5, seed=3)
    torch.testing.assert_close(a.samples, b.samples)
    assert (a.samples[0] - a.samples[1]).abs().max() > 1e-3
    assert float(a.mutual_information().mean()) > 0


def test_mc_dropout_entropy_higher_on_shifted_data(micro):
    method = MCDropout(micro.models[0], T=20)
    h_in = method.predict(micro.test.images).entropy().mean()
    h_out = method.predict(micro.shift.images).entropy().mean()
    assert h_out > 1.5 * h_in


def test_mc_dropout_needs_dropout():
    with pytest.raises(ValueError, match="drop_rate > 0"):
        MCDropout(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)))
    with pytest.raises(ValueError, match="T .* must be >= 1"):
        mc_dropout_predict(nn.Sequential(nn.Dropout(0.5)), torch.zeros(1, 1, 2, 2), T=0)
