import numpy as np
import pytest
import torch

from tuner.metrics import ece, nll
from tuner.uncertainty import DeepEnsemble, collect_logits, ensemble_predict, greedy_hyper_ensemble


def test_ensemble_ece_not_above_members(micro):
    members = [collect_logits(m, micro.test.images).softmax(-1).numpy() for m in micro.models]
    pred = ensemble_predict(micro.models, micro.test.images)
    y = micro.test.labels.numpy()
    np.testing.assert_allclose(pred.probs.numpy(), np.mean(members, 0), atol=1e-6)
    assert pred.samples.shape == (3, len(y), 3) and pred.forward_passes == 3
    assert ece(pred.probs.numpy(), y) <= min(ece(p, y) for p in members)
    assert nll(pred.probs.numpy(), y) <= np.mean([nll(p, y) for p in members])


def test_greedy_selection_with_replacement():
    y = np.array([0, 1, 2, 0])
    good = np.full((4, 3), 0.1)
    good[np.arange(4), y] = 0.8
    bad = np.full((4, 3), 1 / 3)
    wrong = np.roll(good, 1, axis=1)
    picks, weights = greedy_hyper_ensemble([bad, good, wrong], y, k=4)
    assert picks[0] == 1  # the best single candidate starts
    assert weights[2] == 0  # a candidate that only hurts is never picked
    assert weights.sum() == pytest.approx(1.0)
    # picking again is allowed: the selection only adds members while it lowers the validation NLL
    mix = np.mean([[bad, good, wrong][i] for i in picks], 0)
    assert nll(mix, y) <= nll(good, y) + 1e-12


def test_hyper_ensemble_not_worse_than_best_member_on_val(micro):
    ens = DeepEnsemble.hyper(micro.models, micro.val.images, micro.val.labels, k=5)
    val = [collect_logits(m, micro.val.images).softmax(-1).numpy() for m in micro.models]
    y = micro.val.labels.numpy()
    assert nll(ens.predict(micro.val.images).probs.numpy(), y) <= min(nll(p, y) for p in val) + 1e-6
    assert sum(ens.weights) == pytest.approx(5)


def test_ensemble_rejects_bad_weights(micro):
    with pytest.raises(ValueError, match="non-negative"):
        ensemble_predict(micro.models, micro.test.images[:2], weights=[1, -1, 1])
    with pytest.raises(ValueError, match="at least one model"):
        ensemble_predict([], torch.zeros(1, 1, 16, 16))
