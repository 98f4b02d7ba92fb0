"""Lens deflections and source light, with lenstronomy 1.14's conventions.

All functions are pure and batched: coordinates ``x, y`` are (B, P) or (1, P) tensors in
arcsec (P = pixels, flattened), per-image parameters are (B,) tensors (arcsec, or
dimensionless ellipticities), per-subhalo parameters are (B, N) tensors. Outputs broadcast
to (B, P). Nothing here allocates a (B, N, P) tensor.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# lenstronomy's numerical floors (SIE core, point-mass radius, Sersic inner radius).
SIE_SMOOTHING_ARCSEC = 1e-10
POINT_MASS_R2_MIN_ARCSEC2 = 1e-24
SERSIC_SMOOTHING_ARCSEC = 1e-4
_Q_MAX = 0.99999999


def _col(t: Tensor) -> Tensor:
    """(B,) -> (B, 1) so that per-image parameters broadcast against (B, P) coordinates."""
    return t.reshape(-1, 1)


def ellipticity_to_phi_q(e1: Tensor, e2: Tensor) -> tuple[Tensor, Tensor]:
    """Position angle phi [rad] and axis ratio q = minor/major from ellipticities (e1, e2)."""
    phi = torch.atan2(e2, e1) / 2
    c = torch.sqrt(e1 * e1 + e2 * e2).clamp(max=0.9999)
    return phi, (1 - c) / (1 + c)


def sie_deflection(
    x: Tensor, y: Tensor, theta_e: Tensor, e1: Tensor, e2: Tensor, center_x: Tensor, center_y: Tensor
) -> tuple[Tensor, Tensor]:
    """Deflection [arcsec] of a singular isothermal ellipsoid (Keeton & Kochanek 1998, eq. 8ff).

    theta_e is lenstronomy's product-averaged Einstein radius [arcsec]; (e1, e2) its
    ellipticity. Shape constants are formed in float64 so that nearly round lenses (q -> 1)
    stay finite in float32.
    """
    dtype = x.dtype
    phi, q = ellipticity_to_phi_q(e1.double(), e2.double())
    q = q.clamp(max=_Q_MAX)
    theta_major = theta_e.double() / torch.sqrt((1 + q * q) / (2 * q))
    b = theta_major * torch.sqrt((1 + q * q) / 2)
    s = SIE_SMOOTHING_ARCSEC / torch.sqrt(q)
    k = torch.sqrt(1 - q * q)
    cos_p, sin_p = _col(torch.cos(phi).to(dtype)), _col(torch.sin(phi).to(dtype))
    q_, s_, k_ = _col(q.to(dtype)), _col(s.to(dtype)), _col(k.to(dtype))
    amp = _col((b / k).to(dtype))
    dx, dy = x - _col(center_x), y - _col(center_y)
    xr = dx * cos_p + dy * sin_p  # major-axis frame
    yr = -dx * sin_p + dy * cos_p
    psi = torch.sqrt(q_ * q_ * (s_ * s_ + xr * xr) + yr * yr)
    fx = amp * torch.atan(k_ * xr / (psi + s_))
    fy = amp * torch.atanh(k_ * yr / (psi + q_ * q_ * s_))
    return fx * cos_p - fy * sin_p, fx * sin_p + fy * cos_p


def shear_deflection(x: Tensor, y: Tensor, gamma1: Tensor, gamma2: Tensor) -> tuple[Tensor, Tensor]:
    """External shear deflection [arcsec], zero at the origin: (g1 x + g2 y, g2 x - g1 y)."""
    g1, g2 = _col(gamma1), _col(gamma2)
    return g1 * x + g2 * y, g2 * x - g1 * y


def point_mass_deflection(
    x: Tensor, y: Tensor, theta_e: Tensor, center_x: Tensor, center_y: Tensor, *, block_elements: int = 1 << 18
) -> tuple[Tensor, Tensor]:
    """Summed deflection [arcsec] of N point masses: sum_k theta_E,k^2 (r - r_k) / |r - r_k|^2.

    theta_e, center_x, center_y: (B, N); zero theta_e pads a class to a fixed N. Subhalos are
    accumulated one at a time into (B, P) buffers, so memory stays O(B P) for any N; images
    go through in blocks of about ``block_elements`` pixels so the buffers stay in cache
    (measured ~1.7x faster at 150 px than one pass over the whole batch).
    """
    shape = torch.broadcast_shapes(x.shape, (theta_e.shape[0], 1))
    ax = torch.empty(shape, dtype=x.dtype, device=x.device)
    ay = torch.empty_like(ax)
    step = max(1, block_elements // shape[1])
    for lo in range(0, shape[0], step):
        hi = min(lo + step, shape[0])
        xb = x if x.shape[0] == 1 else x[lo:hi]
        yb = y if y.shape[0] == 1 else y[lo:hi]
        _accumulate_point_masses(xb, yb, theta_e[lo:hi], center_x[lo:hi], center_y[lo:hi], ax[lo:hi], ay[lo:hi])
    return ax, ay


def _accumulate_point_masses(x, y, theta_e, center_x, center_y, ax: Tensor, ay: Tensor) -> None:
    """Writes the point-mass deflection of one block of images into ax, ay (in place)."""
    ax.zero_()
    ay.zero_()
    dx, dy, r2 = torch.empty_like(ax), torch.empty_like(ax), torch.empty_like(ax)
    te2 = theta_e * theta_e
    for k in range(theta_e.shape[1]):
        torch.sub(x, center_x[:, k : k + 1], out=dx)
        torch.sub(y, center_y[:, k : k + 1], out=dy)
        torch.mul(dx, dx, out=r2)
        r2.addcmul_(dy, dy).clamp_(min=POINT_MASS_R2_MIN_ARCSEC2)
        torch.div(te2[:, k : k + 1], r2, out=r2)  # r2 now holds theta_E^2 / r^2
        ax.addcmul_(r2, dx)
        ay.addcmul_(r2, dy)


def point_mass_deflection_dense(
    x: Tensor, y: Tensor, theta_e: Tensor, center_x: Tensor, center_y: Tensor
) -> tuple[Tensor, Tensor]:
    """Same sum as :func:`point_mass_deflection`, written as one (B, P, N) broadcast.

    Meant for ``torch.compile``: inductor fuses the broadcast and the reduction over the last
    (contiguous) axis into one loop, so the (B, P, N) tensor is never stored. In eager mode it
    is materialised; use :func:`point_mass_deflection` there.
    """
    dx = x.unsqueeze(-1) - center_x.unsqueeze(1)  # (B, P, N)
    dy = y.unsqueeze(-1) - center_y.unsqueeze(1)
    f = (theta_e * theta_e).unsqueeze(1) / (dx * dx + dy * dy).clamp(min=POINT_MASS_R2_MIN_ARCSEC2)
    return (f * dx).sum(-1), (f * dy).sum(-1)


def sersic_b_n(n: Tensor | float) -> Tensor | float:
    """lenstronomy's approximation b_n = 1.9992 n - 0.3271 (floored at 1e-5)."""
    if isinstance(n, Tensor):
        return (1.9992 * n - 0.3271).clamp(min=1e-5)
    return max(1.9992 * n - 0.3271, 1e-5)


def sersic_ellipse(
    x: Tensor,
    y: Tensor,
    amp: Tensor,
    r_sersic: Tensor,
    n_sersic: Tensor,
    e1: Tensor,
    e2: Tensor,
    center_x: Tensor,
    center_y: Tensor,
) -> Tensor:
    """Elliptical Sersic surface brightness: amp exp(-b_n ((R / R_s)^(1/n) - 1)).

    amp is the surface brightness at R_s (image units per arcsec^2); R is lenstronomy's
    product-average elliptical radius [arcsec]. Returns (B, P).
    """
    e1c, e2c = _col(e1), _col(e2)
    norm = torch.sqrt(torch.abs(1 - e1c * e1c - e2c * e2c).clamp(min=1e-6))
    dx, dy = x - _col(center_x), y - _col(center_y)
    xe = ((1 - e1c) * dx - e2c * dy) / norm
    ye = (-e2c * dx + (1 + e1c) * dy) / norm
    r = torch.sqrt(xe * xe + ye * ye).clamp(min=SERSIC_SMOOTHING_ARCSEC)
    r_s = _col(r_sersic).clamp(min=SERSIC_SMOOTHING_ARCSEC)
    n = _col(n_sersic)
    bn = sersic_b_n(n)
    return _col(amp) * torch.exp(-bn * (torch.pow(r / r_s, 1.0 / n) - 1))


def sersic_ellipse_fixed_shape(
    x: Tensor, y: Tensor, center_x: Tensor, center_y: Tensor, *, amp: float, r_sersic: float, n_sersic: float,
    e1: float, e2: float,
) -> Tensor:
    """:func:`sersic_ellipse` for a source whose shape (amp, R_s, n, e1, e2) is the same for
    every image, given as Python floats; only the centres (B,) vary. Returns (B, P).

    The shape constants are folded into a few float64 coefficients once, so the per-pixel work
    is two affine maps, a square root and one exp (n = 1 skips the power): the cheap form of the
    same formula, and under ``torch.compile`` the constants specialise the fused kernel.
    """
    norm = math.sqrt(max(abs(1 - e1 * e1 - e2 * e2), 1e-6))
    r_s = max(r_sersic, SERSIC_SMOOTHING_ARCSEC)
    scale = 1.0 / (norm * r_s)  # elliptical radius in units of R_s
    dx, dy = x - _col(center_x), y - _col(center_y)
    xe = dx * ((1 - e1) * scale) - dy * (e2 * scale)
    ye = dy * ((1 + e1) * scale) - dx * (e2 * scale)
    t = torch.sqrt(xe * xe + ye * ye).clamp(min=SERSIC_SMOOTHING_ARCSEC / r_s)
    if n_sersic != 1.0:
        t = torch.pow(t, 1.0 / n_sersic)
    bn = sersic_b_n(n_sersic)
    return amp * torch.exp(-bn * (t - 1))


def sersic_total_flux(amp: Tensor, r_sersic: Tensor, n_sersic: Tensor) -> Tensor:
    """Total flux of the Sersic profile: amp R_s^2 2 pi n e^{b_n} b_n^{-2n} Gamma(2n)."""
    bn = sersic_b_n(n_sersic)
    return (
        amp * r_sersic**2 * 2 * math.pi * n_sersic * torch.exp(bn) * bn ** (-2 * n_sersic)
        * torch.exp(torch.lgamma(2 * n_sersic))
    )
