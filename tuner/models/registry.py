"""Family registry: one name -> one builder function.

A builder is a plain function ``build(*, img_size, in_chans, num_classes, **hparams) -> nn.Module``.
Its keyword arguments *are* the family's hyperparameters: their defaults describe the family's
default ("tiny", GPU-sized) model, and the accepted names are read from the signature, so the
registry, the search-space validation and the CLI table can never disagree with the code.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

# family -> (origin, module, builder function, one-line summary). A constant table, imported
# lazily: listing families never imports timm or builds anything.
_FAMILIES: dict[str, tuple[str, str, str, str]] = {
    "vit": ("timm", "tuner.models.timm_vits", "build_vit", "Vision Transformer (Dosovitskiy 2021)"),
    "deit": ("timm", "tuner.models.timm_vits", "build_deit", "DeiT: ViT with a distillation token"),
    "swin": ("timm", "tuner.models.timm_vits", "build_swin", "Swin: shifted-window attention"),
    "levit": ("timm", "tuner.models.timm_vits", "build_levit", "LeViT: conv stem + attention with BN"),
    "crossvit": ("timm", "tuner.models.timm_vits", "build_crossvit", "CrossViT: two patch sizes, cross-attention"),
    "pit": ("timm", "tuner.models.timm_vits", "build_pit", "PiT: pooling-based vision transformer"),
    "convit": ("timm", "tuner.models.timm_vits", "build_convit", "ConViT: gated positional self-attention"),
    "coatnet": ("timm", "tuner.models.timm_hybrids", "build_coatnet", "CoAtNet: MBConv stages then attention"),
    "maxvit": ("timm", "tuner.models.timm_hybrids", "build_maxvit", "MaxViT: block + grid attention"),
    "efficientformerv2": (
        "timm", "tuner.models.timm_hybrids", "build_efficientformerv2", "EfficientFormerV2: mobile hybrid"),
    "mobilevit": ("timm", "tuner.models.timm_hybrids", "build_mobilevit", "MobileViT: convs + local transformers"),
    "resnet18": ("timm", "tuner.models.timm_hybrids", "build_resnet18", "ResNet-18 CNN baseline"),
    "cswin": ("ours", "tuner.models.cswin", "build_cswin", "CSWin: cross-shaped window attention"),
    "dpt": ("ours", "tuner.models.dpt", "build_dpt", "DPT: deformable patch embedding transformer"),
    "cvt": ("ours", "tuner.models.cvt", "build_cvt", "CvT: convolutional token embedding + projections"),
    "cct": ("ours", "tuner.models.cct", "build_cct", "CCT: conv tokenizer + sequence pooling"),
    "scratch": ("ours", "tuner.models.scratch", "build_scratch", "plain transformer encoder from first principles"),
}

# Arguments every builder takes that are not hyperparameters of the search.
_STRUCTURAL = ("img_size", "in_chans", "num_classes")


@dataclass(frozen=True)
class FamilyInfo:
    """What the registry knows about one family.

    Attributes:
        name: registry name, e.g. ``"swin"``.
        origin: ``"ours"`` (written in this package) or ``"timm"``.
        summary: one-line description.
        defaults: hyperparameter name -> default value (the family's default size).
        builder: the build function.
    """

    name: str
    origin: str
    summary: str
    defaults: dict[str, Any]
    builder: Callable[..., nn.Module]

    @property
    def hparams(self) -> tuple[str, ...]:
        """Names of the accepted hyperparameters, sorted."""
        return tuple(sorted(self.defaults))


def list_families() -> list[str]:
    """Names of all registered families, in registry order (timm first, then ours)."""
    return list(_FAMILIES)


def family_info(family: str) -> FamilyInfo:
    """Registry entry of ``family``; ValueError naming the allowed families if unknown."""
    if family not in _FAMILIES:
        raise ValueError(f"unknown model family {family!r}; allowed: {', '.join(_FAMILIES)}")
    origin, module_name, func_name, summary = _FAMILIES[family]
    builder = getattr(importlib.import_module(module_name), func_name)
    params = inspect.signature(builder).parameters
    defaults = {
        name: p.default for name, p in params.items()
        if name not in _STRUCTURAL and p.default is not inspect.Parameter.empty
    }
    return FamilyInfo(family, origin, summary, defaults, builder)


def check_img_size(img_size: int) -> None:
    """ValueError unless ``img_size`` (pixels) is an integer >= 16, the smallest every family builds at."""
    if not isinstance(img_size, int) or img_size < 16:
        raise ValueError(f"img_size must be an integer >= 16 pixels, got {img_size!r}")


def build_model(family: str, *, img_size: int, in_chans: int = 1, num_classes: int = 3,
                **hparams: Any) -> nn.Module:
    """Build a randomly initialised model of ``family`` (never downloads weights).

    Args:
        family: one of ``list_families()``.
        img_size: input height = width in pixels; families that need another size resize
            inside the model (their builder's docstring says so).
        in_chans: input channels (1 for lensing images).
        num_classes: output logits.
        **hparams: the family's hyperparameters (see ``family_info(family).defaults``); every
            family accepts ``drop_rate`` (dropout before the head) and ``drop_path_rate``.

    Returns:
        a module mapping (B, in_chans, img_size, img_size) -> (B, num_classes) logits.
    """
    info = family_info(family)
    unknown = sorted(set(hparams) - set(info.defaults))
    if unknown:
        raise ValueError(
            f"family {family!r} does not accept hyperparameter(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(info.hparams)}")
    check_img_size(img_size)
    return info.builder(img_size=img_size, in_chans=in_chans, num_classes=num_classes, **hparams)
