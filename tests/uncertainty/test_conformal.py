import numpy as np
import pytest

from tuner.uncertainty.conformal import ConformalConfig, SplitConformal, all_label_scores, set_metrics


def _synthetic(n=6000, seed=0):
    """Predictions from a mis-calibrated model: labels drawn from softmax(z), probs from softmax(2z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3)) * 1.5
    true = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    y = (rng.uniform(size=(n, 1)) > np.cumsum(true, 1)).sum(1)
    probs = np.exp(2 * z) / np.exp(2 * z).sum(1, keepdims=True)
    return probs, y


@pytest.mark.parametrize("score", ["aps", "raps"])
@pytest.mark.parametrize("randomized", [True, False])
@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2])
def test_coverage_on_held_out_split(score, randomized, alpha):
    probs, y = _synthetic()
    cp = SplitConformal(score=score, alpha=alpha, randomized=randomized, lam=0.2, k_reg=1)
    cp.calibrate(probs[:3000], y[:3000])
    m = set_metrics(cp.predict_sets(probs[3000:]), y[3000:])
    assert m["coverage"] >= 1 - alpha - 0.02
    if randomized:
        assert m["set_size"] < 3.0  # not trivially the full label set
    else:
        assert m["empty_sets"] == 0  # the conservative sets always keep the top label


def test_aps_agrees_with_mapie():
    mapie_cls = pytest.importorskip("mapie.classification", reason="MAPIE is the reference implementation")
    from sklearn.base import BaseEstimator, ClassifierMixin

    class FixedProbs(ClassifierMixin, BaseEstimator):
        """A prefit 'classifier' whose inputs are already its probabilities."""

        def fit(self, X, y):
            self.classes_ = np.arange(3)
            return self

        def predict_proba(self, X):
            return np.asarray(X)

        def predict(self, X):
            return np.asarray(X).argmax(1)

    probs, y = _synthetic(4000, seed=1)
    ref = mapie_cls.SplitConformalClassifier(
        FixedProbs().fit(probs, y), confidence_level=0.9, conformity_score="aps", prefit=True, random_state=7
    )
    ref.conformalize(probs[:2000], y[:2000])
    _, ref_sets = ref.predict_set(probs[2000:], conformity_score_params={"include_last_label": True})
    # MAPIE randomises its calibration scores as cumsum - u p(y) with u from RandomState(7);
    # in our convention (mass above y + u p(y)) that is u' = 1 - u
    u = np.random.RandomState(7).uniform(size=2000)
    ours = SplitConformal(score="aps", alpha=0.1, randomized=False).calibrate(probs[:2000], y[:2000], u=1 - u)
    np.testing.assert_array_equal(ours.predict_sets(probs[2000:]), ref_sets[:, :, 0])


def _raps_reference(probs, y, u, alpha, lam, k_reg):
    """RAPS written from Angelopoulos et al. (2021), Algorithm 1-2, one image at a time."""
    scores = []
    for p, label, ui in zip(probs, y, u):
        order = list(np.argsort(-p, kind="stable"))
        o = order.index(label) + 1
        scores.append(sum(p[order[: o - 1]]) + ui * p[label] + lam * max(0, o - k_reg))
    n = len(scores)
    q = sorted(scores)[int(np.ceil((n + 1) * (1 - alpha))) - 1]
    return q


def test_raps_matches_reference():
    probs, y = _synthetic(3000, seed=2)
    u = np.random.default_rng(5).uniform(size=1500)
    cp = SplitConformal(score="raps", alpha=0.1, lam=0.1, k_reg=1).calibrate(probs[:1500], y[:1500], u=u)
    assert cp.threshold == pytest.approx(_raps_reference(probs[:1500], y[:1500], u, 0.1, 0.1, 1))
    ut = np.random.default_rng(6).uniform(size=1500)
    sets = cp.predict_sets(probs[1500:], u=ut)
    for p, s, ui in zip(probs[1500:1600], sets, ut):
        order = np.argsort(-p, kind="stable")
        expected = set()
        for rank, c in enumerate(order, start=1):
            if p[order[: rank - 1]].sum() + ui * p[c] + 0.1 * max(0, rank - 1) <= cp.threshold:
                expected.add(int(c))
        assert set(np.flatnonzero(s)) == expected


def test_scores_and_errors():
    p = np.array([[0.5, 0.3, 0.2]])
    np.testing.assert_allclose(all_label_scores(p, 1.0), [[0.5, 0.8, 1.0]])
    np.testing.assert_allclose(all_label_scores(p, 0.0, lam=0.1, k_reg=1), [[0.0, 0.6, 1.0]])
    with pytest.raises(ValueError, match="score must be one of"):
        ConformalConfig(score="lac")
    with pytest.raises(ValueError):
        ConformalConfig(alpha=1.5)
    with pytest.raises(RuntimeError, match="calibrate"):
        SplitConformal().predict_sets(p)
    m = set_metrics(np.array([[True, True, False], [False, False, True]]), [1, 0], ["x", "y", "z"])
    assert m["coverage"] == 0.5 and m["set_size"] == 1.5 and m["coverage_y"] == 1.0 and m["coverage_x"] == 0.0
