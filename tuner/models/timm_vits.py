"""timm-backed transformer families: vit, deit, swin, levit, crossvit, pit, convit.

Each builder constructs the timm model class directly with ``pretrained=False`` semantics (random
initialisation, nothing downloaded), so sizes can be chosen freely instead of from timm's named
ImageNet variants. Defaults are the "tiny" variants re-scaled for 64 px lensing images
(smaller patches than ImageNet's 16 px so that a 64 px image still yields 8x8 or more tokens).
"""

from __future__ import annotations

from torch import nn

from tuner.models.common import round_to_multiple, wrap_if_resized


def build_vit(*, img_size: int, in_chans: int, num_classes: int, drop_rate: float = 0.0,
              drop_path_rate: float = 0.1, patch_size: int = 8, embed_dim: int = 192,
              depth: int = 12, num_heads: int = 3, mlp_ratio: float = 4.0) -> nn.Module:
    """ViT-Tiny layout (192 wide, 12 deep, 3 heads) with 8 px patches.

    ``img_size`` need not be a multiple of ``patch_size``: the last partial row/column of patches
    is dropped by the strided patch convolution (at most ``patch_size - 1`` edge pixels).
    """
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
        embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
        drop_rate=drop_rate, drop_path_rate=drop_path_rate)


def build_deit(*, img_size: int, in_chans: int, num_classes: int, drop_rate: float = 0.0,
               drop_path_rate: float = 0.1, patch_size: int = 8, embed_dim: int = 192,
               depth: int = 12, num_heads: int = 3, mlp_ratio: float = 4.0) -> nn.Module:
    """DeiT-Tiny with its distillation token; the two heads' logits are averaged (no teacher)."""
    from timm.models.deit import VisionTransformerDistilled

    model = VisionTransformerDistilled(
        img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
        embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
        drop_rate=drop_rate, drop_path_rate=drop_path_rate)
    model.set_distilled_training(False)  # without a teacher, train on the averaged logits
    return model


def _swin_native_size(img_size: int, patch_size: int, window_size: int, n_stages: int) -> int:
    """Closest size to ``img_size`` whose feature maps fit Swin's windows at every stage.

    Stage i sees (img/patch)/2**i tokens per side; it must be an integer and either a multiple
    of the window or no larger than it (timm then shrinks the window to the whole map).
    """

    def fits(size: int) -> bool:
        if size % patch_size:
            return False
        side = size // patch_size
        for i in range(n_stages):
            if i and side % 2:
                return False
            side = side // 2 if i else side
            if side > window_size and side % window_size:
                return False
        return True

    for delta in range(img_size):
        for size in (img_size - delta, img_size + delta):
            if size >= patch_size and fits(size):
                return size
    raise ValueError(f"no image size near {img_size} fits swin patch {patch_size}, window {window_size}")


def build_swin(*, img_size: int, in_chans: int, num_classes: int, drop_rate: float = 0.0,
               drop_path_rate: float = 0.1, patch_size: int = 4, window_size: int = 4,
               embed_dim: int = 96, depths: tuple[int, ...] = (2, 2, 6, 2),
               num_heads: tuple[int, ...] = (3, 6, 12, 24), mlp_ratio: float = 4.0) -> nn.Module:
    """Swin-T widths with window 4 (64 px / patch 4 = 16 tokens per side, windows 4x4).

    Images whose size does not fit the windows at every stage are resized to the nearest size
    that does (150 px Model I images -> 128 px with the defaults).
    """
    from timm.models.swin_transformer import SwinTransformer

    depths, num_heads = tuple(depths), tuple(num_heads)
    if len(depths) != len(num_heads):
        raise ValueError(f"swin depths {depths} and num_heads {num_heads} must have the same length")
    native = _swin_native_size(img_size, patch_size, window_size, len(depths))
    model = SwinTransformer(
        img_size=native, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
        embed_dim=embed_dim, depths=depths, num_heads=num_heads, window_size=window_size,
        mlp_ratio=mlp_ratio, drop_rate=drop_rate, drop_path_rate=drop_path_rate)
    return wrap_if_resized(model, img_size, native)


def build_levit(*, img_size: int, in_chans: int, num_classes: int, drop_rate: float = 0.0,
                drop_path_rate: float = 0.0, stem_stride: int = 8,
                embed_dim: tuple[int, ...] = (128, 256, 384), key_dim: int = 16,
                num_heads: tuple[int, ...] = (4, 6, 8), depth: tuple[int, ...] = (2, 3, 4),
                mlp_ratio: float = 2.0) -> nn.Module:
    """LeViT-128S widths with an 8x stem (ImageNet's 16x stem leaves 4x4 tokens at 64 px).

    LeViT's attention biases are sized for a fixed token grid, so the image must be a multiple
    of ``stem_stride``; other sizes are resized to the nearest multiple (150 px -> 152 px).
    """
    from timm.models.levit import Levit

    if stem_stride not in (8, 16):
        raise ValueError(f"levit stem_stride must be 8 or 16, got {stem_stride}")
    native = round_to_multiple(img_size, stem_stride)
    model = Levit(
        img_size=native, in_chans=in_chans, num_classes=num_classes, embed_dim=tuple(embed_dim),
        key_dim=key_dim, num_heads=tuple(num_heads), depth=tuple(depth), mlp_ratio=mlp_ratio,
        stem_type=f"s{stem_stride}", drop_rate=drop_rate, drop_path_rate=drop_path_rate)
    return wrap_if_resized(model, img_size, native)


def build_crossvit(*, img_size: int, in_chans: int, num_classes: int, drop_rate: float = 0.0,
                   drop_path_rate: float = 0.1, patch_size: tuple[int, int] = (4, 8),
                   embed_dim: tuple[int, int] = (96, 192), depth: int = 4,
                   num_heads: tuple[int, int] = (3, 3), n_multiscale: int = 3) -> nn.Module:
    """CrossViT-Tiny: a fine (4 px) and a coarse (8 px) patch branch exchanging class tokens.

    ``depth`` is the number of transformer blocks of the large branch per multi-scale block,
    ``n_multiscale`` the number of multi-scale blocks (CrossViT-Ti: 4 and 3). The image must be a
    multiple of both patch sizes; other sizes are resized to the nearest one (150 -> 152 px).
    """
    from timm.models.crossvit import CrossVit

    patch_size = tuple(patch_size)
    native = round_to_multiple(img_size, max(patch_size))
    model = CrossVit(
        img_size=native, img_scale=(1.0, 1.0), patch_size=patch_size, in_chans=in_chans,
        num_classes=num_classes, embed_dim=tuple(embed_dim), num_heads=tuple(num_heads),
        depth=((1, depth, 0),) * n_multiscale, mlp_ratio=(4.0, 4.0, 1.0),
        drop_rate=drop_rate, drop_path_rate=drop_path_rate)
    return wrap_if_resized(model, img_size, native)


def build_pit(*, img_size: int, in_chans: int, num_classes: int, drop_rate: float = 0.0,
              drop_path_rate: float = 0.1, patch_size: int = 8, stride: int = 4,
              base_dim: int = 32, depth: tuple[int, ...] = (2, 6, 4),
              heads: tuple[int, ...] = (2, 4, 8), mlp_ratio: float = 4.0) -> nn.Module:
    """PiT-Ti: overlapping 8 px patches at stride 4, then two depthwise-conv pooling stages.

    ``base_dim`` is the width per head (stage width = base_dim * heads).
    """
    from timm.models.pit import PoolingVisionTransformer

    depth, heads = tuple(depth), tuple(heads)
    return PoolingVisionTransformer(
        img_size=img_size, patch_size=patch_size, stride=stride, base_dims=(base_dim,) * len(depth),
        depth=depth, heads=heads, mlp_ratio=mlp_ratio, num_classes=num_classes, in_chans=in_chans,
        drop_rate=drop_rate, drop_path_rate=drop_path_rate)


def build_convit(*, img_size: int, in_chans: int, num_classes: int, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.1, patch_size: int = 8, embed_dim: int = 192,
                 depth: int = 12, num_heads: int = 4, local_up_to_layer: int = 10,
                 locality_strength: float = 1.0) -> nn.Module:
    """ConViT-Tiny: the first ``local_up_to_layer`` blocks use gated positional self-attention."""
    from timm.models.convit import ConVit

    if not 0 <= local_up_to_layer <= depth:
        raise ValueError(f"convit local_up_to_layer must be in [0, depth={depth}], got {local_up_to_layer}")
    if embed_dim % num_heads:
        raise ValueError(f"convit embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
    native = round_to_multiple(img_size, patch_size)
    model = ConVit(  # timm's ConVit takes the width per head and multiplies it by num_heads
        img_size=native, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
        embed_dim=embed_dim // num_heads, depth=depth, num_heads=num_heads, local_up_to_layer=local_up_to_layer,
        locality_strength=locality_strength, drop_rate=drop_rate, drop_path_rate=drop_path_rate)
    return wrap_if_resized(model, img_size, native)
