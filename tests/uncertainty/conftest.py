"""A micro image-classification problem for the uncertainty tests: 16 px images of three
classes (a bright blob in one of three places) plus noise; a tiny MLP with dropout trains on it
in about a second. The shifted set is the same task with five times the noise."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

SIZE = 16
CENTRES = ((4, 4), (4, 11), (11, 8))


def make_split(n: int, noise: float, seed: int) -> SimpleNamespace:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    centres = torch.tensor(CENTRES, dtype=torch.float32)[labels]  # (n, 2)
    jitter = torch.randn(n, 2, generator=g) * 1.5
    cy, cx = (centres + jitter).unbind(1)
    blob = torch.exp(-((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2) / 8.0)
    images = blob + noise * torch.randn(n, SIZE, SIZE, generator=g)
    return SimpleNamespace(images=images[:, None].float(), labels=labels, meta=SimpleNamespace(class_names=("a", "b", "c")))


class TinyNet(nn.Module):
    def __init__(self, drop: float = 0.3):
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 64), nn.ReLU())
        self.mlp = nn.Sequential(nn.Dropout(drop), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(drop))
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        return self.head(self.mlp(self.features(x)))


def train_tiny(train, seed: int, steps: int = 150, drop: float = 0.3) -> nn.Module:
    torch.manual_seed(seed)
    model = TinyNet(drop)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, train.labels.shape[0], (128,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(train.images[idx]), train.labels[idx]).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def micro():
    """Splits (train/val/test/shift) and three independently seeded trained models."""
    threads = torch.get_num_threads()
    # one thread: tiny matrices gain nothing from two, and lose a lot on a shared CPU
    torch.set_num_threads(1)
    try:
        yield _build()
    finally:
        torch.set_num_threads(threads)


def _build() -> SimpleNamespace:
    with torch.random.fork_rng():
        train = make_split(1200, noise=0.5, seed=1)
        data = SimpleNamespace(
            train=train,
            val=make_split(600, noise=0.5, seed=2),
            test=make_split(600, noise=0.5, seed=3),
            shift=make_split(600, noise=2.5, seed=4),
        )
        data.models = [train_tiny(train, seed=s) for s in range(3)]
    return data


# ---- lensing micro problem -------------------------------------------------------------------
# A micro LeViT (the levit micro profile's architecture) trained 3 epochs on simulated Model II
# images at 32 px (1680 training images): ~60% test accuracy, a few seconds of CPU.
LEVIT_MICRO = dict(embed_dim=[32, 48], num_heads=[2, 3], depth=[1, 1], key_dim=8, stem_stride=8, drop_rate=0.2)
LEVIT_TRAIN = dict(lr=2e-3, weight_decay=0.01, warmup_epochs=0, batch_size=32, label_smoothing=0.0,
                   aug_rotation=True, aug_flip=True, aug_strength=0.5)


def add_noise(images: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    """Images (N, 1, H, W) in [0, 1] + N(0, sigma^2) per pixel, then min-max normalised per image."""
    g = torch.Generator().manual_seed(seed)
    x = images + sigma * torch.randn(images.shape, generator=g)
    lo, hi = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def train_levit_micro(train, *, epochs: int, seed: int) -> nn.Module:
    from tuner.models import build_model
    from tuner.study.search_space import TrainHParams
    from tuner.training.loop import train_epochs

    torch.manual_seed(seed)
    model = build_model("levit", img_size=32, **LEVIT_MICRO)
    return train_epochs(model, train.images, train.labels, TrainHParams(**LEVIT_TRAIN), epochs=epochs,
                        seed=seed, img_size=32)


@pytest.fixture(scope="session")
def lensing_micro(tmp_path_factory):
    """Model II at 32 px (800 per class: train/val/test 1680/360/360), its test images with extra
    noise sigma 0.1 on the [0, 1] scale (re-normalised), and one trained micro LeViT."""
    from tuner.data import ensure_simulated, load_split

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            root = ensure_simulated(tmp_path_factory.mktemp("lensing") / "model_ii", "model_ii", 800, seed=0, img_size=32)
            train, test = (load_split(root, s) for s in ("train", "test"))
            train = SimpleNamespace(images=train.images.clone(), labels=train.labels.clone())
            data = SimpleNamespace(
                train=train, test_images=test.images.clone(), test_labels=test.labels.clone(),
                noisy_images=add_noise(test.images.clone(), 0.1, seed=123),
                model=train_levit_micro(train, epochs=3, seed=0),
            )
        yield data
    finally:
        torch.set_num_threads(threads)
