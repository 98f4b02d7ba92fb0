"""Uncertainty under an instrument shift on lensing data: a micro LeViT trained on Model II
(32 px), tested on its test images with extra noise (sigma 0.1 on the [0, 1] scale).

The shift makes the softmax *more* confident (it collapses towards one class), so total
predictive entropy falls for every single-network method; what rises for this briefly trained
(3-epoch) model is the epistemic part, the mutual information of MC dropout and of the
last-layer Laplace. These tests pin both facts. (For the 10-epoch model of
bench/uncertainty.py the softmax saturates further and only the ensembles' MI still
separates the shift; see docs/uncertainty.md.)
"""

import pytest
import torch

from tuner.uncertainty import Deterministic, LastLayerLaplace, MCDropout

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def preds(lensing_micro):
    d = lensing_micro
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        methods = {
            "plain": Deterministic(d.model),
            "mc_dropout": MCDropout(d.model, T=20, seed=0),
            "laplace": LastLayerLaplace(d.model).fit(d.train.images, d.train.labels),
        }
        return {name: (m.predict(d.test_images), m.predict(d.noisy_images)) for name, m in methods.items()}
    finally:
        torch.set_num_threads(threads)


def test_micro_model_learned_something(lensing_micro, preds):
    acc = (preds["plain"][0].probs.argmax(1) == lensing_micro.test_labels).float().mean()
    assert acc > 0.5  # chance is 1/3


def test_mutual_information_rises_under_noise_shift(preds):
    for name, factor in (("mc_dropout", 2.0), ("laplace", 3.0)):
        mi_in, mi_out = (p.mutual_information().mean() for p in preds[name])
        assert mi_out > factor * mi_in, (name, float(mi_in), float(mi_out))


def test_laplace_adds_more_entropy_out_of_distribution(preds):
    (plain_in, plain_out), (la_in, la_out) = preds["plain"], preds["laplace"]
    gain_in = la_in.entropy().mean() - plain_in.entropy().mean()
    gain_out = la_out.entropy().mean() - plain_out.entropy().mean()
    assert gain_in >= 0 and gain_out > 2 * gain_in


def test_softmax_is_overconfident_under_noise_shift(preds):
    # why the benchmark ranks OOD scores: total entropy is lower on the shifted images
    for name in ("plain", "mc_dropout", "laplace"):
        h_in, h_out = (p.entropy().mean() for p in preds[name])
        assert h_out < h_in, name
