import numpy as np
import pytest

from tuner import metrics


def _random_problem(n=2000, c=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[y]
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return p, y


def test_binary_auc_matches_pairwise_definition():
    rng = np.random.default_rng(1)
    s = rng.integers(0, 5, 300).astype(float)  # many ties
    pos = rng.random(300) < 0.4
    diff = s[pos][:, None] - s[~pos][None, :]
    expected = np.mean((diff > 0) + 0.5 * (diff == 0))
    assert metrics.binary_auc(s, pos) == pytest.approx(expected, abs=1e-12)


def test_auc_perfect_and_reversed():
    y = np.array([0, 0, 1, 1])
    assert metrics.binary_auc([0.1, 0.2, 0.8, 0.9], y == 1) == 1.0
    assert metrics.binary_auc([0.9, 0.8, 0.2, 0.1], y == 1) == 0.0


def test_roc_curve_area_equals_auc():
    p, y = _random_problem()
    fpr, tpr = metrics.roc_curve(p[:, 1], y == 1)
    assert fpr[0] == 0 and tpr[-1] == 1
    assert np.trapezoid(tpr, fpr) == pytest.approx(metrics.binary_auc(p[:, 1], y == 1), abs=1e-9)


def test_confusion_and_accuracy():
    p = np.array([[0.9, 0.1, 0], [0.2, 0.7, 0.1], [0.5, 0.2, 0.3]])
    y = np.array([0, 1, 2])
    cm = metrics.confusion_matrix(p, y)
    assert cm.tolist() == [[1, 0, 0], [0, 1, 0], [1, 0, 0]]
    assert metrics.accuracy(p, y) == pytest.approx(2 / 3)


def test_ece_zero_for_calibrated_bins_and_positive_for_overconfident():
    p, y = _random_problem(n=20000)
    sharp = p**4 / (p**4).sum(1, keepdims=True)
    assert metrics.ece(sharp, y) > metrics.ece(p, y)
    assert metrics.mce(p, y) >= metrics.ece(p, y)


def test_nll_brier_known_values():
    p = np.array([[0.5, 0.5], [0.25, 0.75]])
    y = np.array([0, 1])
    assert metrics.nll(p, y) == pytest.approx(-(np.log(0.5) + np.log(0.75)) / 2)
    assert metrics.brier(p, y) == pytest.approx((0.5 + 0.125) / 2)


def test_aurc_lower_when_confidence_ranks_errors_last():
    p, y = _random_problem()
    good = metrics.aurc(p, y)
    bad = metrics.aurc(p, y, confidence=-p.max(1))
    assert good < bad


def test_bad_shapes_rejected():
    with pytest.raises(ValueError, match="expected probs"):
        metrics.accuracy(np.zeros((3, 2)), np.zeros(4))


def test_fpr_at_tpr():
    import numpy as np

    from tuner.metrics import fpr_at_tpr

    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    positives = np.array([1, 1, 0, 1, 0, 0], dtype=bool)
    assert fpr_at_tpr(scores, positives, 0.6) == 0.0  # 2 of 3 positives above every negative
    assert fpr_at_tpr(scores, positives, 0.95) == 1 / 3  # the third needs one negative in
    assert np.isnan(fpr_at_tpr(scores, np.ones(6, bool)))
