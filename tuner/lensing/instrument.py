"""The instrument: pixel grids, supersampling, Gaussian PSF and noise (lenstronomy conventions).

Images are (B, 1, H, W) tensors; pixel (i, j) is centred at x = (j - (n-1)/2) * pixel_scale,
y = (i - (n-1)/2) * pixel_scale [arcsec] (x along columns, y along rows, lenstronomy's
``inverse=False`` grid).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def pixel_grid(
    num_pix: int, pixel_scale: float, supersampling: int = 1, *, device="cpu", dtype=torch.float32
) -> tuple[Tensor, Tensor]:
    """Flattened ray-shooting coordinates [arcsec] of a (num_pix*s)^2 grid, each (1, P).

    Sub-pixel centres sit at offsets ((k + 1/2)/s - 1/2) * pixel_scale inside each pixel, as
    lenstronomy's ``make_subgrid``. Row-major order of the (n*s, n*s) supersampled image.
    """
    n, s = num_pix, supersampling
    idx = torch.arange(n * s, dtype=torch.float64)
    coord = ((idx + 0.5) / s - 0.5 - (n - 1) / 2) * pixel_scale  # float64, then cast once
    yy, xx = torch.meshgrid(coord, coord, indexing="ij")
    to = dict(device=device, dtype=dtype)
    return xx.reshape(1, -1).to(**to), yy.reshape(1, -1).to(**to)


def bin_supersampled(flux: Tensor, num_pix: int, supersampling: int) -> Tensor:
    """(B, P_super) sub-pixel values -> (B, 1, n, n) pixel means (lenstronomy ``re_size``)."""
    b, n, s = flux.shape[0], num_pix, supersampling
    img = flux.reshape(b, 1, n * s, n * s)
    return img if s == 1 else F.avg_pool2d(img, kernel_size=s)


def gaussian_kernel_1d(sigma_px: float, truncate: float, *, device="cpu", dtype=torch.float32) -> Tensor:
    """Normalised sampled Gaussian of radius int(truncate*sigma + 0.5) px (scipy.ndimage)."""
    if sigma_px <= 0:
        raise ValueError(f"PSF sigma must be > 0 px, got {sigma_px}")
    radius = int(truncate * sigma_px + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma_px) ** 2)
    return (k / k.sum()).to(device=device, dtype=dtype)


def convolve_gaussian_psf(image: Tensor, sigma_px: float, truncate: float, method: str = "auto") -> Tensor:
    """Convolve (B, 1, H, W) with a truncated Gaussian, edges padded like scipy mode='nearest'.

    ``method``: "direct" (separable, cheap for small kernels), "fft" (one 2-D FFT product of
    the replicate-padded image; better for wide kernels) or "auto" (FFT above a 31-tap
    kernel). Both equal ``scipy.ndimage.gaussian_filter(img, sigma_px, mode='nearest',
    truncate=truncate)``. The kernel sums to 1, so flux is conserved up to edge effects.
    """
    if method not in ("auto", "direct", "fft"):
        raise ValueError(f"unknown convolution method {method!r}; allowed: auto, direct, fft")
    k1 = gaussian_kernel_1d(sigma_px, truncate, device=image.device, dtype=image.dtype)
    r = (k1.numel() - 1) // 2
    if r == 0:
        return image
    padded = F.pad(image, (r, r, r, r), mode="replicate")
    if method == "direct" or (method == "auto" and k1.numel() <= 31):
        # A weighted sum of shifted views per axis: for a handful of taps this is far cheaper
        # on CPU than conv2d with a 1 x K kernel.
        h, w = image.shape[-2:]
        rows = padded[..., 0:w] * k1[0]
        for t in range(1, k1.numel()):
            rows = rows.add_(padded[..., t : t + w], alpha=float(k1[t]))
        out = rows[..., 0:h, :] * k1[0]
        for t in range(1, k1.numel()):
            out = out.add_(rows[..., t : t + h, :], alpha=float(k1[t]))
        return out
    hp, wp = padded.shape[-2:]
    kernel = torch.zeros(hp, wp, dtype=image.dtype, device=image.device)
    kernel[: 2 * r + 1, : 2 * r + 1] = torch.outer(k1, k1)
    # circular convolution of the padded image; the valid part starts at offset 2r.
    out = torch.fft.irfft2(torch.fft.rfft2(padded) * torch.fft.rfft2(kernel), s=(hp, wp))
    h, w = image.shape[-2:]
    return out[..., 2 * r : 2 * r + h, 2 * r : 2 * r + w]


def magnitude_to_cps(magnitude: float, zero_point: float) -> float:
    """Counts per second of a source of the given magnitude: 10^(-0.4 (m - zp))."""
    return 10.0 ** (-0.4 * (magnitude - zero_point))


def survey_background_rms(
    *, read_noise_e: float, exposure_s: float, num_exposures: int, sky_mag: float, zero_point: float,
    pixel_scale: float,
) -> float:
    """Gaussian background rms [e-/s per pixel] from read noise and sky over the co-added exposure.

    sigma = sqrt(N rn^2 + t_tot sky_cps dpix^2) / t_tot (lenstronomy ``data_util.bkg_noise``).
    """
    t_tot = num_exposures * exposure_s
    sky_per_pixel = magnitude_to_cps(sky_mag, zero_point) * pixel_scale**2
    return math.sqrt(num_exposures * read_noise_e**2 + t_tot * sky_per_pixel) / t_tot


def add_noise(
    image: Tensor, *, background_rms: Tensor, exposure_s: Tensor, normals: Tensor
) -> Tensor:
    """Noisy image: model + background_rms z1 + sqrt(max(model, 0) t) / t z2.

    The Poisson term uses its Gaussian approximation, as lenstronomy's ``noise_for_model``:
    counts per pixel are large here, and drawing from fixed standard normals ``normals``
    (B, 2, H, W) keeps the random stream independent of the model (so an image without
    substructure gets the very same noise draws). background_rms and exposure_s are (B,);
    image units are counts per second per pixel.
    """
    bkg = background_rms.reshape(-1, 1, 1, 1)
    t = exposure_s.reshape(-1, 1, 1, 1)
    poisson_sigma = torch.sqrt(image.clamp(min=0) / t)
    return torch.addcmul(image, bkg, normals[:, :1]).addcmul_(poisson_sigma, normals[:, 1:2])
