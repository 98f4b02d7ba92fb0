"""Every registered family, in its micro profile: builds, trains one step, gives (B, 3) logits."""

import pytest
import torch
import torch.nn.functional as F

from tuner.models import build_model, family_info, list_families
from tuner.study.search_space import load_search_space


@pytest.mark.parametrize("family", list_families())
def test_micro_family_trains_one_step(family):
    space = load_search_space(family, "micro", check_build=False)
    cfg = space.sample(seed=1)
    size = space.img_size or 32
    torch.manual_seed(0)
    model = build_model(family, img_size=size, **cfg["model"])
    assert sum(p.numel() for p in model.parameters()) < 300_000
    x, y = torch.rand(4, 1, size, size), torch.tensor([0, 1, 2, 0])
    model.train()
    out = model(x)
    assert out.shape == (4, 3)
    loss = F.cross_entropy(out, y)
    assert torch.isfinite(loss)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.zero_grad()
    loss.backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        before = out.detach()
        model.train(False)
        after = model(x)
    assert torch.isfinite(after).all()
    assert not torch.allclose(before, after), "an optimizer step left the output unchanged"


@pytest.mark.parametrize("family", list_families())
def test_every_family_accepts_dropout_and_drop_path(family):
    info = family_info(family)
    assert {"drop_rate", "drop_path_rate"} <= set(info.defaults)
    assert info.origin in ("ours", "timm")


def test_unknown_family_lists_allowed():
    with pytest.raises(ValueError, match="allowed: .*swin"):
        build_model("vitt", img_size=32)


def test_unknown_hparam_lists_allowed():
    with pytest.raises(ValueError, match="not_a_knob.*allowed: .*depth"):
        build_model("scratch", img_size=32, not_a_knob=3)


def test_resize_for_fixed_size_architecture():
    """CoAtNet needs multiples of 32: a 48 px input is resized inside and still classified."""
    model = build_model("coatnet", img_size=48, embed_dim=(16, 32, 64), depths=(1, 1, 1), stem_width=8)
    assert model(torch.rand(2, 1, 48, 48)).shape == (2, 3)


def test_resnet_small_stem_keeps_resolution():
    small = build_model("resnet18", img_size=64, width=8, small_stem=True)
    imagenet = build_model("resnet18", img_size=64, width=8, small_stem=False)
    x = torch.rand(1, 1, 64, 64)
    assert small.forward_features(x).shape[-1] == 8  # /8 with the small stem
    assert imagenet.forward_features(x).shape[-1] == 2  # /32: the 2x2 map the stem option avoids


@pytest.mark.slow
@pytest.mark.parametrize("family", list_families())
def test_default_size_builds_at_64_and_150(family):
    for size in (64, 150):
        model = build_model(family, img_size=size).eval()
        with torch.no_grad():
            assert model(torch.rand(1, 1, size, size)).shape == (1, 3)
