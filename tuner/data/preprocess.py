"""The one image preparation of lenstune: what the dataset writer does to simulated images, what
a trial does to a batch before its network sees it, and what a registered model does to a
user's raw images.

``prepare_images(images, size)`` takes a (N, 1, H, W) batch to (N, 1, size, size):
- the same size: not resampled;
- smaller: the area average, what ``lenstune simulate --img-size`` writes: for an integer factor
  (64 -> 32) the mean of each factor x factor block, otherwise (150 -> 64) the mean over each
  output pixel's footprint (PyTorch's ``area``/adaptive average), a box filter, so no aliasing;
- larger: bilinear interpolation;
then, when ``normalize`` is on, each image is min-max normalised to [0, 1], as the DeepLense
datasets are. Raw images of the size a model was trained from (normalised or not: raw counts,
another scale or offset) therefore reach the network exactly as its training images did. On
images that are min-max normalised already (every stored dataset) the normalisation changes no
bit: their minimum is exactly 0 and their maximum exactly 1.

Architectures whose strides or windows fit only some sizes resample inside the network with
:func:`resample` too (``tuner.models.common.ResizeInput``), so there is one resampling method.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# What this preparation is called where it is recorded (dataset meta, checkpoints, models).
METHOD = "area average to shrink, bilinear to enlarge; then per-image min-max to [0, 1]"


def minmax_per_image(images: torch.Tensor) -> torch.Tensor:
    """Each image of (N, C, H, W) scaled to [0, 1] by its own minimum and maximum."""
    lo = images.amin(dim=(1, 2, 3), keepdim=True)
    hi = images.amax(dim=(1, 2, 3), keepdim=True)
    return (images - lo) / (hi - lo).clamp_min(torch.finfo(images.dtype).tiny)


def resample(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, size, size): area average to shrink, bilinear to enlarge;
    unchanged when already that size."""
    if images.shape[-2:] == (size, size):
        return images
    if min(images.shape[-2:]) >= size:
        return F.interpolate(images, size=(size, size), mode="area")
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def prepare_images(images: torch.Tensor, size: int, *, normalize: bool = True) -> torch.Tensor:
    """The preparation in the module docstring: resample (N, 1, H, W) to ``size`` and, if
    ``normalize``, min-max each image."""
    out = resample(images, size)
    return minmax_per_image(out) if normalize else out
