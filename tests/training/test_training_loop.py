import math

import numpy as np
import pytest
import torch

from tests.training.conftest import TinyNet, train_hparams
from tuner.models import io
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
    probs = io.predict_probs(tiny_model, images, 16, device=device)
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
    x = io.prepare_batch(torch.rand(2, 1, 32, 32), torch.device("cpu"), 16)
    assert x.shape == (2, 1, 16, 16)


def test_validation_loss_is_nll():
    probs = np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]])
    assert loop.cross_entropy_of_probs(probs, np.array([0, 1])) == pytest.approx(
        -(math.log(0.5) + math.log(0.8)) / 2)


def test_cpu_batches_follow_the_cpu_generator_as_before(separable_data):
    """CPU data + CPU generator: batch k is images[randperm(N, generator)][k*B:(k+1)*B], the
    order every seeded and resumed run has drawn so far."""
    images, labels = separable_data
    model = TinyNet()
    seen = []
    model.register_forward_pre_hook(lambda _, args: seen.append(args[0].clone()))
    hp = train_hparams(aug_rotation=False, aug_flip=False)
    opt = loop.make_optimizer(model, hp)
    sched = loop.make_scheduler(opt, hp, steps_per_epoch=6, max_epochs=1)
    loop.train_one_epoch(model, images, labels, optimizer=opt, scheduler=sched, hp=hp,
                         device=torch.device("cpu"), img_size=16,
                         generator=torch.Generator().manual_seed(7), aug_generator=torch.Generator())
    order = torch.randperm(96, generator=torch.Generator().manual_seed(7))
    assert len(seen) == 6
    for k, batch in enumerate(seen):
        assert torch.equal(batch, images[order[k * 16:(k + 1) * 16]])


def test_to_device_on_cpu_returns_the_inputs_without_copying(separable_data):
    images, labels = separable_data
    x, y = loop.to_device(images, labels, torch.device("cpu"))
    assert x is images and y is labels
    x, y = loop.to_device(images, labels, "cpu")
    assert x is images and y is labels


@pytest.mark.parametrize("compile", [False, True])
def test_prepared_model_weights_load_into_a_fresh_model(compile):
    """prepare_model compiles in place (lazily: nothing is compiled until the first call), so
    the module it returns has the plain state_dict keys of an uncompiled model."""
    torch.manual_seed(1)
    model = loop.prepare_model(TinyNet(), torch.device("cpu"), compile=compile)
    fresh = TinyNet()
    fresh.load_state_dict(model.state_dict(), strict=True)
    assert loop.unwrap(model) is model
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, model.state_dict()[name])


def test_unwrap_returns_the_module_inside_a_compile_wrapper():
    model = TinyNet()
    assert loop.unwrap(torch.compile(model)) is model  # lazy: compiles nothing


def test_optimizer_is_not_fused_on_cpu(tiny_model):
    opt = loop.make_optimizer(tiny_model, train_hparams())
    assert not opt.defaults.get("fused")


# --- CUDA only: the device-resident path -------------------------------------------------------

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _device_epoch(model, images, labels, hp, *, seed: int = 0):
    """One epoch of ``model`` (already prepared on CUDA) on device-resident data."""
    device = torch.device("cuda")
    opt = loop.make_optimizer(model, hp)
    sched = loop.make_scheduler(opt, hp, steps_per_epoch=loop.steps_per_epoch(len(labels), hp.batch_size),
                                max_epochs=1)
    stats = loop.train_one_epoch(
        model, images, labels, optimizer=opt, scheduler=sched, hp=hp, device=device, img_size=16,
        generator=torch.Generator(device=device).manual_seed(seed),
        aug_generator=torch.Generator(device=device).manual_seed(seed + 1))
    return stats, opt


@cuda_only
def test_device_resident_epoch_trains_with_finite_loss(separable_data):
    images, labels = loop.to_device(*separable_data, torch.device("cuda"))
    assert images.is_cuda and labels.is_cuda
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    assert torch.equal(images.cpu(), separable_data[0]) and torch.equal(labels.cpu(), separable_data[1])
    torch.manual_seed(0)
    model = loop.prepare_model(TinyNet(), torch.device("cuda"), convolutional=True)
    assert torch.backends.cudnn.benchmark
    stats, _ = _device_epoch(model, images, labels, train_hparams(lr=0.05))
    assert math.isfinite(stats.train_loss) and stats.images_per_second > 0
    probs = io.predict_probs(model, images, 16, device=torch.device("cuda"))
    assert probs.shape == (96, 3) and np.allclose(probs.sum(1), 1.0)


@cuda_only
def test_no_host_sync_inside_the_step_loop():
    """80 steps (two NaN-check blocks and a tail) and a prediction with every synchronising CUDA
    call an error, except the loop's one planned sync per epoch / prediction."""
    g = torch.Generator().manual_seed(0)
    images, labels = loop.to_device(torch.rand(320, 1, 16, 16, generator=g), torch.arange(320) % 3,
                                    torch.device("cuda"))
    torch.manual_seed(0)
    model = loop.prepare_model(TinyNet(), torch.device("cuda"))
    hp = train_hparams(batch_size=4)
    _device_epoch(model, images, labels, hp)  # first calls: lazy CUDA/cuDNN set-up, bf16 probe
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        stats, _ = _device_epoch(model, images, labels, hp)
        io.predict_probs(model, images, 16, device=torch.device("cuda"))
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert math.isfinite(stats.train_loss)


@cuda_only
def test_nan_on_the_device_is_named_before_the_epoch_ends(separable_data):
    images, labels = loop.to_device(*separable_data, torch.device("cuda"))
    model = loop.prepare_model(TinyNet(), torch.device("cuda"))
    with torch.no_grad():
        model.head.weight.fill_(float("nan"))
    with pytest.raises(loop.NonFiniteLossError, match="nan at step 0 of the epoch"):
        _device_epoch(model, images, labels, train_hparams())


@cuda_only
def test_fused_adamw_on_cuda():
    model = loop.prepare_model(TinyNet(), torch.device("cuda"))
    opt = loop.make_optimizer(model, train_hparams())
    assert opt.defaults["fused"] is True
    assert all(group["fused"] for group in opt.param_groups)


@cuda_only
def test_compiled_and_eager_models_give_close_logits():
    torch.manual_seed(0)
    eager = TinyNet()
    compiled = TinyNet()
    compiled.load_state_dict(eager.state_dict())
    eager = loop.prepare_model(eager, torch.device("cuda")).eval()
    compiled = loop.prepare_model(compiled, torch.device("cuda"), compile=True).eval()
    x = torch.rand(8, 1, 16, 16, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.allclose(compiled(x), eager(x), rtol=1e-3, atol=1e-3)
    TinyNet().load_state_dict(compiled.state_dict(), strict=True)
