import math

import numpy as np
import pytest
import torch

from tests.tuning.conftest import TinyNet, train_hparams
from tuner.training import loop


def test_lr_schedule_warms_up_then_decays_to_zero():
    factors = [loop.lr_factor(s, warmup_steps=10, total_steps=100) for s in range(100)]
    assert factors[0] == pytest.approx(0.1)
    assert factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))
    assert loop.lr_factor(100, warmup_steps=10, total_steps=100) == pytest.approx(0.0)


def test_augment_keeps_shape_and_mass_and_flip_only_is_exact():
    g = torch.Generator().manual_seed(1)
    x = torch.zeros(8, 1, 16, 16)
    x[:, :, 6:10, 6:10] = 1.0  # centred square: rotation keeps its brightness inside the frame
    out = loop.augment(x, train_hparams(aug_strength=1.0), g)
    assert out.shape == x.shape
    assert torch.allclose(out.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)), rtol=0.1)
    y = torch.arange(16.0).view(1, 1, 4, 4).repeat(32, 1, 1, 1)
    flipped = loop.augment(y, train_hparams(aug_rotation=False), torch.Generator().manual_seed(2))
    variants = [y[0], y[0].flip(-1), y[0].flip(-2), y[0].flip(-1).flip(-2)]
    for img in flipped:
        assert any(torch.allclose(img, v, atol=1e-5) for v in variants)
    assert not all(torch.allclose(img, y[0]) for img in flipped)  # some were flipped


def test_augment_off_is_identity():
    x = torch.rand(4, 1, 8, 8)
    hp = train_hparams(aug_rotation=False, aug_flip=False)
    assert loop.augment(x, hp, torch.Generator()) is x


def test_training_learns_a_separable_problem(tiny_model, separable_data):
    images, labels = separable_data
    hp = train_hparams(aug_rotation=False, aug_flip=False, lr=0.05)
    opt = loop.make_optimizer(tiny_model, hp)
    sched = loop.make_scheduler(opt, hp, steps_per_epoch=loop.steps_per_epoch(96, 16), max_epochs=8)
    device = torch.device("cpu")
    losses = []
    for epoch in range(8):
        stats = loop.train_one_epoch(tiny_model, images, labels, optimizer=opt, scheduler=sched,
                                     hp=hp, device=device, img_size=16,
                                     generator=torch.Generator().manual_seed(epoch),
                                     aug_generator=torch.Generator().manual_seed(epoch))
        losses.append(stats.train_loss)
        assert stats.images_per_second > 0 and stats.seconds > 0
    probs = loop.predict_proba(tiny_model, images, device=device, img_size=16)
    assert probs.shape == (96, 3) and np.allclose(probs.sum(1), 1.0)
    assert losses[-1] < losses[0]
    assert (probs.argmax(1) == labels.numpy()).mean() > 0.8


def test_nan_loss_raises_named_error(separable_data):
    images, labels = separable_data
    model = TinyNet()
    with torch.no_grad():
        model.head.weight.fill_(float("nan"))
    hp = train_hparams()
    opt = loop.make_optimizer(model, hp)
    sched = loop.make_scheduler(opt, hp, steps_per_epoch=6, max_epochs=1)
    with pytest.raises(loop.NonFiniteLossError, match="nan"):
        loop.train_one_epoch(model, images, labels, optimizer=opt, scheduler=sched, hp=hp,
                             device=torch.device("cpu"), img_size=16,
                             generator=torch.Generator(), aug_generator=torch.Generator())


def test_prepare_batch_resizes_to_model_size():
    x = loop.prepare_batch(torch.rand(2, 1, 32, 32), torch.device("cpu"), 16)
    assert x.shape == (2, 1, 16, 16)


def test_validation_loss_is_nll():
    probs = np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]])
    assert loop.cross_entropy_of_probs(probs, np.array([0, 1])) == pytest.approx(
        -(math.log(0.5) + math.log(0.8)) / 2)
