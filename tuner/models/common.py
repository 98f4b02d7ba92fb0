"""Small pieces shared by builders: input resizing for fixed-size architectures."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def round_to_multiple(size: int, multiple: int) -> int:
    """Nearest multiple of ``multiple`` to ``size`` (ties round up), at least ``multiple``."""
    return max(multiple, int((size + multiple / 2) // multiple) * multiple)


class ResizeInput(nn.Module):
    """Bilinearly resize (B, C, H, W) inputs to ``size`` x ``size`` before ``model``.

    Used by architectures whose strides or attention windows only fit some image sizes
    (e.g. 150 px Model I images -> 160 px for a /32 network). Bilinear resampling of a
    smooth lensed arc neither invents nor erases structure beyond the pixel scale.
    """

    def __init__(self, model: nn.Module, size: int):
        super().__init__()
        self.model = model
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.model(x)


def wrap_if_resized(model: nn.Module, img_size: int, native: int) -> nn.Module:
    """``model`` itself when it was built for ``img_size``, else wrapped in ResizeInput."""
    return model if native == img_size else ResizeInput(model, native)
