"""timm-backed convolution/attention hybrids and the CNN baseline.

Families: coatnet, maxvit, efficientformerv2, mobilevit, resnet18. Built from timm's model
classes with explicit widths (random initialisation, nothing downloaded).
"""

from __future__ import annotations

from torch import nn

from tuner.models.common import round_to_multiple, wrap_if_resized


def _maxxvit(img_size: int, in_chans: int, num_classes: int, block: str, embed_dim, depths,
             stem_width: int, drop_rate: float, drop_path_rate: float) -> nn.Module:
    """A timm MaxxVit with CoAtNet ('C' conv, 'T' transformer) or MaxViT ('M') stages."""
    from timm.models.maxxvit import MaxxVit, MaxxVitCfg, _rw_max_cfg

    embed_dim, depths = tuple(embed_dim), tuple(depths)
    if len(embed_dim) != len(depths):
        raise ValueError(f"embed_dim {embed_dim} and depths {depths} must have the same length")
    n = len(depths)
    if block == "coat":  # conv stages first, attention in the last half (CoAtNet's C-C-T-T)
        block_type = tuple("C" if i < (n + 1) // 2 else "T" for i in range(n))
    else:
        block_type = ("M",) * n
    # Attention heads are 32 channels wide (timm's dim_head); CoAtNet's attention stages see
    # their input width, MaxViT's (after an MBConv) their output width.
    widths_in = (stem_width,) + embed_dim[:-1]
    for i, kind in enumerate(block_type):
        widths = (embed_dim[i],) if kind == "M" else (widths_in[i], embed_dim[i]) if kind == "T" else ()
        if any(c % 32 for c in widths):
            raise ValueError(f"{block}: attention stage {i} needs input and output widths that are "
                             f"multiples of 32, got {widths_in[i]} -> {embed_dim[i]}")
    # The stem halves the image and each stage halves it again: a /2**(n+1) network. Windows
    # and grids are img_size/32 by timm's rule, so sizes must be multiples of 32 and of the
    # total stride; other sizes (150 px) are resized to the nearest such multiple (160 px).
    stride = max(32, 2 ** (n + 1))
    native = round_to_multiple(img_size, stride)
    cfg = MaxxVitCfg(embed_dim=embed_dim, depths=depths, block_type=block_type,
                     stem_width=(stem_width // 2, stem_width),
                     **_rw_max_cfg(stride_mode="pool" if block == "coat" else "dw",
                                   conv_output_bias=block == "coat", conv_attn_ratio=0.25))
    model = MaxxVit(cfg, img_size=native, in_chans=in_chans, num_classes=num_classes,
                    drop_rate=drop_rate, drop_path_rate=drop_path_rate)
    return wrap_if_resized(model, img_size, native)


def build_coatnet(*, img_size: int, in_chans: int, num_classes: int, drop_rate: float = 0.0,
                  drop_path_rate: float = 0.1, embed_dim: tuple[int, ...] = (64, 128, 256, 512),
                  depths: tuple[int, ...] = (3, 4, 6, 3), stem_width: int = 64) -> nn.Module:
    """CoAtNet-nano (timm ``coatnet_nano_rw``): MBConv stages, then relative-attention stages.

    Sizes must be multiples of 32 (timm derives attention windows from img_size/32); others
    are resized inside the model to the nearest multiple (150 px -> 160 px).
    """
    return _maxxvit(img_size, in_chans, num_classes, "coat", embed_dim, depths, stem_width,
                    drop_rate, drop_path_rate)


def build_maxvit(*, img_size: int, in_chans: int, num_classes: int, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.1, embed_dim: tuple[int, ...] = (64, 128, 256, 512),
                 depths: tuple[int, ...] = (1, 2, 3, 1), stem_width: int = 64) -> nn.Module:
    """MaxViT-nano (timm ``maxvit_nano_rw``): MBConv + block attention + grid attention.

    Block and grid partitions are img_size/32 pixels of the stage's map, so sizes must be
    multiples of 32; others are resized inside the model (150 px -> 160 px).
    """
    return _maxxvit(img_size, in_chans, num_classes, "max", embed_dim, depths, stem_width,
                    drop_rate, drop_path_rate)


def build_efficientformerv2(*, img_size: int, in_chans: int, num_classes: int,
                            drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                            embed_dims: tuple[int, ...] = (32, 48, 96, 176),
                            depths: tuple[int, ...] = (2, 2, 6, 4), num_vit: int = 2) -> nn.Module:
    """EfficientFormerV2-S0; ``num_vit`` attention blocks end each of the last two stages.

    The network is /32 with attention biases sized at build time: sizes must be multiples of 32,
    others are resized inside the model (150 px -> 160 px).
    """
    from timm.models.efficientformer_v2 import EfficientFormerV2

    embed_dims, depths = tuple(embed_dims), tuple(depths)
    if len(embed_dims) != 4 or len(depths) != 4:
        raise ValueError(f"efficientformerv2 needs 4 stages, got embed_dims {embed_dims}, depths {depths}")
    if not 0 <= num_vit <= min(depths[2:]):
        raise ValueError(f"efficientformerv2 num_vit must be in [0, {min(depths[2:])}], got {num_vit}")
    native = round_to_multiple(img_size, 32)
    model = EfficientFormerV2(
        depths=depths, in_chans=in_chans, img_size=native, embed_dims=embed_dims,
        downsamples=(False, True, True, True), mlp_ratios=4, num_vit=num_vit,
        num_classes=num_classes, drop_rate=drop_rate, drop_path_rate=drop_path_rate,
        distillation=False)
    return wrap_if_resized(model, img_size, native)


def build_mobilevit(*, img_size: int, in_chans: int, num_classes: int, drop_rate: float = 0.0,
                    drop_path_rate: float = 0.0, channels: tuple[int, ...] = (16, 24, 48, 64, 80),
                    transformer_dims: tuple[int, int, int] = (64, 80, 96),
                    transformer_depths: tuple[int, int, int] = (2, 4, 3), patch_size: int = 2,
                    num_features: int = 320) -> nn.Module:
    """MobileViT-XXS: inverted residuals, then three MobileViT blocks (unfold -> transformer).

    The network is /16 after its stem and patches of ``patch_size`` are unfolded at every
    MobileViT stage, so sizes must be multiples of 16 * patch_size; others are resized (150 -> 160).
    """
    from timm.models.byobnet import ByobNet, ByoModelCfg
    from timm.models.mobilevit import _inverted_residual_block, _mobilevit_block

    if len(channels) != 5 or len(transformer_dims) != 3 or len(transformer_depths) != 3:
        raise ValueError("mobilevit needs 5 channels, 3 transformer_dims and 3 transformer_depths, "
                         f"got {channels}, {transformer_dims}, {transformer_depths}")
    c = tuple(channels)
    cfg = ByoModelCfg(
        blocks=(
            _inverted_residual_block(d=1, c=c[0], s=1, br=2.0),
            _inverted_residual_block(d=3, c=c[1], s=2, br=2.0),
            *(_mobilevit_block(d=1, c=c[i + 2], s=2, transformer_dim=transformer_dims[i],
                               transformer_depth=transformer_depths[i], patch_size=patch_size, br=2.0)
              for i in range(3)),
        ),
        stem_chs=c[0], stem_type="3x3", stem_pool="", downsample="", act_layer="silu",
        num_features=num_features,
    )
    native = round_to_multiple(img_size, 16 * patch_size)
    model = ByobNet(cfg, num_classes=num_classes, in_chans=in_chans, img_size=native,
                    drop_rate=drop_rate, drop_path_rate=drop_path_rate)
    return wrap_if_resized(model, img_size, native)


def build_resnet18(*, img_size: int, in_chans: int, num_classes: int, drop_rate: float = 0.0,
                   drop_path_rate: float = 0.0, width: int = 64,
                   layers: tuple[int, ...] = (2, 2, 2, 2), small_stem: bool = True) -> nn.Module:
    """ResNet-18 (BasicBlocks, stage widths ``width`` x (1, 2, 4, 8)); any image size.

    ``small_stem`` replaces the ImageNet stem (7x7 stride-2 conv + max-pool, /4) with one 3x3
    stride-1 conv, as for CIFAR: the ImageNet stem leaves a 2x2 map at 64 px after the last stage.
    """
    import torch.nn as tnn
    from timm.models.resnet import BasicBlock, ResNet

    layers = tuple(layers)
    channels = tuple(width * 2 ** i for i in range(len(layers)))
    if small_stem and width % 2:
        raise ValueError(f"resnet18 width must be even with small_stem, got {width}")
    # timm sizes the stem output as 2 * stem_width only for its "deep" stem (64 otherwise); the
    # deep stem is asked for here just to get a `width`-channel stem, then replaced below.
    model = ResNet(block=BasicBlock, layers=layers, channels=channels, in_chans=in_chans,
                   num_classes=num_classes, stem_type="deep" if small_stem else "",
                   stem_width=width // 2 if small_stem else 64, drop_rate=drop_rate,
                   drop_path_rate=drop_path_rate)
    if small_stem:
        model.conv1 = tnn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = tnn.Identity()
    return model
