import copy

import pytest
import torch
from torch import nn

from tuner.uncertainty import LastLayerLaplace

laplace = pytest.importorskip("laplace", reason="laplace-torch is the reference implementation")


@pytest.fixture(scope="module")
def double_model(micro):
    return copy.deepcopy(micro.models[0]).double()


@pytest.mark.parametrize("structure", ["full", "kron"])
def test_matches_laplace_torch(micro, double_model, structure):
    x, y = micro.train.images[:400].double(), micro.train.labels[:400]
    ref = laplace.Laplace(double_model, "classification", subset_of_weights="last_layer", hessian_structure=structure)
    ref.fit(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=100))
    ours = LastLayerLaplace(double_model, hessian_structure=structure).fit(x, y, optimize_prior=False)
    for lam in (0.1, 1.0, 30.0):
        expected = float(ref.log_marginal_likelihood(torch.tensor(lam, dtype=torch.float64)))
        assert ours.log_marginal_likelihood(lam) == pytest.approx(expected, rel=1e-6, abs=1e-5)
    ref.prior_precision = ours.prior_precision = 2.0
    xt = micro.shift.images[:50].double()
    torch.testing.assert_close(
        ours.predict(xt).probs.double(), ref(xt, pred_type="glm", link_approx="probit"), atol=1e-6, rtol=0
    )
    # laplace-torch climbs the evidence by gradient steps; ours solves the 1-D problem exactly
    ref.optimize_prior_precision(pred_type="glm", method="marglik", prior_structure="scalar", n_steps=300)
    assert ours.optimize_prior_precision() == pytest.approx(float(ref.prior_precision), rel=0.05)


def test_laplace_entropy_higher_on_shifted_data(micro):
    la = LastLayerLaplace(micro.models[0]).fit(micro.train.images, micro.train.labels)
    h_in = la.predict(micro.test.images).entropy().mean()
    h_out = la.predict(micro.shift.images).entropy().mean()
    assert h_out > h_in
    pred = la.predict(micro.test.images[:20], link="mc", n_samples=50)
    assert pred.samples.shape == (50, 20, 3) and pred.forward_passes == 1
    torch.testing.assert_close(pred.probs, pred.samples.mean(0))


def test_evidence_is_maximised(micro):
    la = LastLayerLaplace(micro.models[0], hessian_structure="kron").fit(micro.val.images, micro.val.labels)
    best = la.log_marginal_likelihood()
    for factor in (0.5, 2.0):
        assert la.log_marginal_likelihood(la.prior_precision * factor) < best


def test_last_layer_must_produce_the_output(micro):
    with pytest.raises(ValueError, match="not an nn.Linear"):
        LastLayerLaplace(micro.models[0], last_layer="features")
    la = LastLayerLaplace(micro.models[0], last_layer="mlp.1")
    with pytest.raises(ValueError, match="not the output of last_layer"):
        la.fit(micro.val.images[:10], micro.val.labels[:10])
    with pytest.raises(RuntimeError, match="call fit"):
        LastLayerLaplace(micro.models[0]).log_marginal_likelihood()
    with pytest.raises(ValueError, match="hessian_structure"):
        LastLayerLaplace(nn.Linear(2, 3), hessian_structure="diag")
