import numpy as np
import pytest
import torch

from tuner.metrics import nll
from tuner.uncertainty import TemperatureScaled, TemperatureScaler, collect_logits


def _overconfident_logits(n=3000, factor=4.0, seed=0):
    """Labels drawn from softmax(z): z is calibrated; factor * z is over-confident."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 3, generator=g) * 2.0
    labels = torch.multinomial(z.softmax(-1), 1, generator=g).squeeze(1)
    return factor * z, labels


def test_temperature_lowers_nll_and_keeps_argmax():
    logits, labels = _overconfident_logits()
    scaler = TemperatureScaler().fit(logits, labels)
    before = nll(logits.softmax(-1).numpy(), labels.numpy())
    after = nll(scaler.scale(logits).numpy(), labels.numpy())
    assert after < before - 0.1
    # the true temperature is the over-confidence factor
    assert scaler.temperature == pytest.approx(4.0, rel=0.1)
    assert torch.equal(scaler.scale(logits).argmax(1), logits.argmax(1))


def test_temperature_on_trained_model_lowers_val_nll(micro):
    model = micro.models[0]
    method = TemperatureScaled.fit(model, micro.val.images, micro.val.labels)
    logits = collect_logits(model, micro.val.images)
    plain = logits.softmax(-1).numpy()
    scaled = method.predict(micro.val.images).probs.numpy()
    assert nll(scaled, micro.val.labels) <= nll(plain, micro.val.labels) + 1e-9
    np.testing.assert_array_equal(scaled.argmax(1), plain.argmax(1))


def test_temperature_rejects_bad_input():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        TemperatureScaler(0.0)
    with pytest.raises(ValueError, match=r"expected logits \(N, C\)"):
        TemperatureScaler().fit(torch.zeros(5, 3), torch.zeros(4, dtype=torch.long))
