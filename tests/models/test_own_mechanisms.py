"""The characteristic mechanism of each family written here."""

import torch

from tuner.models.cct import SequencePooling
from tuner.models.cswin import CrossShapedAttention, stripe_mask
from tuner.models.cvt import ConvAttention, ConvProjection
from tuner.models.dpt import DeformablePatchEmbedding
from tuner.models.scratch import MultiHeadSelfAttention


def test_cswin_stripe_masks_form_a_cross():
    h = w = 4
    horizontal, vertical = stripe_mask(h, w, 1, True), stripe_mask(h, w, 1, False)
    centre = 1 * w + 2  # token at row 1, col 2
    assert horizontal[centre].reshape(h, w)[1].all() and horizontal[centre].sum() == w
    assert vertical[centre].reshape(h, w)[:, 2].all() and vertical[centre].sum() == h
    cross = (horizontal | vertical)[centre].reshape(h, w)
    assert cross.sum() == h + w - 1 and not cross[0, 0]
    assert stripe_mask(h, w, 2, True)[0].sum() == 2 * w  # stripes of width 2


def test_cswin_attention_is_local_to_the_cross():
    torch.manual_seed(0)
    attn = CrossShapedAttention(dim=8, num_heads=2, split_size=1)
    x = torch.randn(1, 16, 8)
    x2 = x.clone()
    x2[0, 0 * 4 + 0] += 5.0  # change token (0, 0): outside the cross of (2, 2)
    out, out2 = attn(x, 4, 4), attn(x2, 4, 4)
    far = 2 * 4 + 2  # its LePE 3x3 neighbourhood excludes (0, 0) too
    assert torch.allclose(out[0, far], out2[0, far], atol=1e-6)
    assert not torch.allclose(out[0, 0 * 4 + 2], out2[0, 0 * 4 + 2])  # same row: sees the change


def test_dpt_offsets_start_regular_and_are_learned():
    torch.manual_seed(0)
    embed = DeformablePatchEmbedding(c_in=3, dim=8, patch=2, k=2)
    x = torch.randn(1, 3, 8, 8)
    pts = embed.sampling_points(x)  # (1, 4, 4, 4, 2)
    assert pts.shape == (1, 4, 4, 4, 2)
    # at init: the four samples of patch (0, 0) sit at the pixel centres of the regular 2x2 patch
    assert torch.allclose(pts[0, 0, 0], torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    tokens, h, w = embed(x)
    tokens.square().sum().backward()
    assert embed.predict.weight.grad.abs().sum() > 0  # the offset predictor receives gradient
    with torch.no_grad():
        embed.predict.bias.copy_(torch.tensor([0.5, -0.25, 0.0, 0.0]))
    assert torch.allclose(embed.sampling_points(x) - pts, torch.tensor([0.5, -0.25]).expand_as(pts))


def test_cvt_projections_are_convolutions_and_squeeze_keys():
    torch.manual_seed(0)
    proj = ConvProjection(dim=8, stride=2)
    assert isinstance(proj.depthwise, torch.nn.Conv2d) and proj.depthwise.groups == 8
    assert proj(torch.randn(2, 16, 8), 4, 4).shape == (2, 4, 8)  # 4x4 map -> 2x2 keys
    # Convolutions see the 2D layout: unlike plain attention, permuting tokens does not just
    # permute the output.
    conv_attn, plain = ConvAttention(8, 2, kv_stride=1).eval(), MultiHeadSelfAttention(8, 2).eval()
    x, perm = torch.randn(1, 16, 8), torch.randperm(16)
    assert torch.allclose(plain(x)[:, perm], plain(x[:, perm]), atol=1e-5)
    assert not torch.allclose(conv_attn(x, 4, 4)[:, perm], conv_attn(x[:, perm], 4, 4), atol=1e-3)


def test_cct_sequence_pooling_is_a_learned_weighted_mean():
    torch.manual_seed(0)
    pool = SequencePooling(dim=6)
    x = torch.randn(2, 5, 6)
    w = pool.weights(x)
    assert w.shape == (2, 5) and torch.allclose(w.sum(-1), torch.ones(2))
    assert torch.allclose(pool(x), (w[..., None] * x).sum(1), atol=1e-6)
    with torch.no_grad():  # a score that favours one feature makes the pooling favour that token
        pool.score.weight.zero_()
        pool.score.weight[0, 0] = 100.0
    x[:, 3, 0] = 10.0
    assert (pool.weights(x).argmax(-1) == 3).all()
