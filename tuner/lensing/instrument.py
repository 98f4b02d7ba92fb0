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


def gaussian_taps(sigma_px: float, truncate: float) -> list[float]:
    """Normalised sampled Gaussian of radius int(truncate*sigma + 0.5) px (scipy.ndimage), as floats."""
    if sigma_px <= 0:
        raise ValueError(f"PSF sigma must be > 0 px, got {sigma_px}")
    radius = int(truncate * sigma_px + 0.5)
    weights = [math.exp(-0.5 * (x / sigma_px) ** 2) for x in range(-radius, radius + 1)]
    total = math.fsum(weights)
    return [w / total for w in weights]


def gaussian_kernel_1d(sigma_px: float, truncate: float, *, device="cpu", dtype=torch.float32) -> Tensor:
    """:func:`gaussian_taps` as a (K,) tensor."""
    return torch.tensor(gaussian_taps(sigma_px, truncate), dtype=torch.float64).to(device=device, dtype=dtype)


def convolve_gaussian_psf(image: Tensor, sigma_px: float, truncate: float, method: str = "auto") -> Tensor:
    """Convolve (B, 1, H, W) with a truncated Gaussian, edges padded like scipy mode='nearest'.

    Equals ``scipy.ndimage.gaussian_filter(img, sigma_px, mode='nearest', truncate=truncate)``.
    The kernel sums to 1, so flux is conserved up to edge effects. See
    :func:`convolve_separable` for ``method``.
    """
    taps = gaussian_kernel_1d(sigma_px, truncate, device=image.device, dtype=image.dtype)
    return convolve_separable(image, taps, method)


def convolve_separable(image: Tensor, taps: Tensor, method: str = "auto") -> Tensor:
    """Convolve (B, 1, H, W) with the separable kernel taps (x) taps, replicated edges.

    ``taps``: (K,) odd-length 1-D kernel shared by every image, or (B, K) one kernel per image
    (observing conditions: per-image seeing). ``method``: "direct" (a weighted sum of shifted
    views per axis: far cheaper on CPU than conv2d with a 1 x K kernel, and fusable by
    torch.compile), "fft" (one 2-D FFT product of the edge-padded image; better for wide
    kernels) or "auto" (FFT above 31 taps).
    """
    if method not in ("auto", "direct", "fft"):
        raise ValueError(f"unknown convolution method {method!r}; allowed: auto, direct, fft")
    k = taps.shape[-1]
    r = (k - 1) // 2
    # tap t as a scalar (shared kernel) or a (B, 1, 1, 1) column (one kernel per image)
    tap = (lambda t: taps[t]) if taps.ndim == 1 else (lambda t: taps[:, t].reshape(-1, 1, 1, 1))
    if r == 0:
        return image * tap(0)
    padded = F.pad(image, (r, r, r, r), mode="replicate")
    h, w = image.shape[-2:]
    if method == "direct" or (method == "auto" and k <= 31):
        rows = padded[..., 0:w] * tap(0)
        for t in range(1, k):
            rows = rows + padded[..., t : t + w] * tap(t)
        out = rows[..., 0:h, :] * tap(0)
        for t in range(1, k):
            out = out + rows[..., t : t + h, :] * tap(t)
        return out
    hp, wp = padded.shape[-2:]
    kernel = torch.zeros((*taps.shape[:-1], hp, wp), dtype=image.dtype, device=image.device)
    kernel[..., :k, :k] = taps.unsqueeze(-1) * taps.unsqueeze(-2)
    if taps.ndim == 2:
        kernel = kernel.unsqueeze(1)  # (B, 1, hp, wp)
    # circular convolution of the padded image; the valid part starts at offset 2r.
    out = torch.fft.irfft2(torch.fft.rfft2(padded) * torch.fft.rfft2(kernel), s=(hp, wp))
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
    """Noisy image: model + sqrt(background_rms^2 + max(model, 0) / t) z.

    Background and (Gaussian-approximated) Poisson noise, as lenstronomy's
    ``noise_for_model``, which draws them as two independent normals; their sum is one normal
    of the summed variance, so one standard normal per pixel gives the same distribution for
    half the random numbers. Counts per pixel are large here. Drawing from fixed standard
    normals ``normals`` (B, 1, H, W) keeps the random stream independent of the model (so an
    image without substructure gets the very same noise draws). background_rms and
    exposure_s are (B,); image units are counts per second per pixel.
    """
    bkg = background_rms.reshape(-1, 1, 1, 1)
    t = exposure_s.reshape(-1, 1, 1, 1)
    sigma = torch.sqrt(bkg * bkg + image.clamp(min=0) / t)
    return torch.addcmul(image, sigma, normals)


def observe(
    sb: Tensor, *, num_pix: int, supersampling: int, pixel_area: float, psf_taps: Tensor,
    background_rms: Tensor, exposure_s: Tensor, normals: Tensor, noise: bool, normalize: bool,
) -> Tensor:
    """The instrument: (B, P) sub-pixel surface brightness -> (B, 1, n, n) observed image.

    Bins the supersampled grid (times the pixel area [arcsec^2]: flux per pixel), convolves
    with the separable PSF ``psf_taps`` (K,), optionally adds noise and min-max normalises.
    """
    image = bin_supersampled(sb, num_pix, supersampling) * pixel_area
    image = convolve_separable(image, psf_taps)
    if noise:
        image = add_noise(image, background_rms=background_rms, exposure_s=exposure_s, normals=normals)
    if normalize:
        lo = image.amin(dim=(1, 2, 3), keepdim=True)
        hi = image.amax(dim=(1, 2, 3), keepdim=True)
        image = (image - lo) / (hi - lo).clamp(min=torch.finfo(image.dtype).tiny)
    return image
