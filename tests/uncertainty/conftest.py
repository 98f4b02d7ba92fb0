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
