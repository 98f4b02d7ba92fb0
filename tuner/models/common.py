"""Small pieces shared by builders: input resizing for fixed-size architectures."""

from __future__ import annotations

import torch
from torch import nn

from tuner.data.preprocess import resample


def round_to_multiple(size: int, multiple: int) -> int:
    """Nearest multiple of ``multiple`` to ``size`` (ties round up), at least ``multiple``."""
    return max(multiple, int((size + multiple / 2) // multiple) * multiple)


class ResizeInput(nn.Module):
    """Resample (B, C, H, W) inputs to ``size`` x ``size`` before ``model``, with the image
    preparation's resampling (:func:`tuner.data.preprocess.resample`: area average to shrink,
    bilinear to enlarge).

    Used by architectures whose strides or attention windows only fit some image sizes
    (e.g. 150 px Model I images -> 160 px for a /32 network).
    """

    def __init__(self, model: nn.Module, size: int):
        super().__init__()
        self.model = model
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(resample(x, self.size))


def wrap_if_resized(model: nn.Module, img_size: int, native: int) -> nn.Module:
    """``model`` itself when it was built for ``img_size``, else wrapped in ResizeInput."""
    return model if native == img_size else ResizeInput(model, native)
