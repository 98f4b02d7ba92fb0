"""Random draws of lens systems for the classes no_sub, cdm and axion (DeepLenseSim's recipe).

Every image gets the same sequence of draws whatever its class and whatever the simulation
flags, in a fixed order: exposure, source centre, CDM subhalos, axion vortex, noise normals.
So an image's randomness depends only on the generator state and its position in the batch.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from tuner.lensing.cosmology import einstein_radius_arcsec
from tuner.lensing.presets import CLASS_NAMES, Preset

NO_SUB, CDM, AXION = (CLASS_NAMES.index(c) for c in ("no_sub", "cdm", "axion"))


@dataclass(frozen=True)
class Draws:
    """All random numbers of a batch of B systems, already mapped to physical values.

    exposure_s, source_x, source_y, m_axion_ev, vortex_angle_rad: (B,); cdm_mass_msun,
    cdm_x, cdm_y: (B, N_cdm) [Msun, arcsec]; normals: (B, 1, H, W) standard normals for noise.
    m_axion_ev and the CDM draws exist for every row; the class decides which are used.
    """

    exposure_s: Tensor
    source_x: Tensor
    source_y: Tensor
    cdm_mass_msun: Tensor
    cdm_x: Tensor
    cdm_y: Tensor
    m_axion_ev: Tensor
    vortex_angle_rad: Tensor
    normals: Tensor


def _uniform(shape, lo: float, hi: float, g: torch.Generator, device, dtype) -> Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g, device=device, dtype=dtype)


def draw_systems(preset: Preset, batch: int, generator: torch.Generator, *, device, dtype) -> Draws:
    """Draw B systems of ``preset`` (see module docstring for the fixed order)."""
    inst, src, cdm, ax = preset.instrument, preset.source, preset.cdm, preset.axion
    kw = dict(device=device, dtype=dtype)
    u_exposure = torch.rand(batch, generator=generator, **kw)
    if inst.log10_exposure_range_s is not None:
        lo, hi = inst.log10_exposure_range_s
        exposure = torch.pow(10.0, lo + (hi - lo) * u_exposure)
    else:
        exposure = torch.full((batch,), inst.exposure_s * inst.num_exposures, **kw)
    r = src.center_range_arcsec
    source_xy = _uniform((batch, 2), -r, r, generator, device, dtype)
    # CDM: inverse-CDF draw of p(m) ~ m^slope on [m_min, m_max]; radius and angle uniform.
    u_mass = torch.rand((batch, cdm.n_subhalos), generator=generator, **kw)
    a = cdm.slope + 1.0
    lo_u, hi_u = cdm.mass_min_msun**a, cdm.mass_max_msun**a
    mass = torch.pow(lo_u + (hi_u - lo_u) * u_mass, 1.0 / a)
    radius = _uniform((batch, cdm.n_subhalos), cdm.r_min_arcsec, cdm.r_max_arcsec, generator, device, dtype)
    theta = _uniform((batch, cdm.n_subhalos), 0.0, 2 * math.pi, generator, device, dtype)
    # Axion: m_a log-uniform; vortex orientation uniform.
    log_m = _uniform((batch,), ax.log10_m_axion_min_ev, ax.log10_m_axion_max_ev, generator, device, dtype)
    angle = _uniform((batch,), 0.0, 2 * math.pi, generator, device, dtype)
    n = inst.num_pix
    normals = torch.randn((batch, 1, n, n), generator=generator, **kw)
    return Draws(
        exposure_s=exposure,
        source_x=source_xy[:, 0],
        source_y=source_xy[:, 1],
        cdm_mass_msun=mass,
        cdm_x=radius * torch.sin(theta),  # DeepLenseSim's (sin, cos) placement
        cdm_y=radius * torch.cos(theta),
        m_axion_ev=torch.pow(10.0, log_m),
        vortex_angle_rad=angle,
        normals=normals,
    )


def point_mass_theta_e_per_sqrt_msun(preset: Preset) -> float:
    """Einstein radius [arcsec] of 1 Msun; theta_E(M) = this * sqrt(M)."""
    c = preset.cosmology
    return _unit_einstein_radius(c.z_lens, c.z_source, c.distance_convention, c.h0, c.om0)


@functools.lru_cache(maxsize=64)
def _unit_einstein_radius(z_lens: float, z_source: float, convention: str, h0: float, om0: float) -> float:
    # cached: the distance quadrature costs ~ms and is the same for every batch of a preset
    return einstein_radius_arcsec(1.0, z_lens, z_source, convention=convention, h0=h0, om0=om0)


def host_theta_e_arcsec(preset: Preset) -> float:
    """Host SIE Einstein radius [arcsec] from the host mass (DeepLenseSim's recipe)."""
    return point_mass_theta_e_per_sqrt_msun(preset) * math.sqrt(preset.host.mass_msun)


def cdm_point_masses(preset: Preset, draws: Draws, rows: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """theta_E [arcsec], x, y [arcsec] and mass [Msun] of the CDM subhalos of ``rows``, each (R, 25)."""
    mass = draws.cdm_mass_msun[rows]
    theta_e = point_mass_theta_e_per_sqrt_msun(preset) * torch.sqrt(mass)
    return theta_e, draws.cdm_x[rows], draws.cdm_y[rows], mass


def axion_point_masses(preset: Preset, draws: Draws, rows: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """theta_E, x, y [arcsec] and mass [Msun] of the vortex point masses of ``rows``, each (R, N).

    N equal masses evenly spaced on a line of half-length coeff * 1e-22 eV / m_a through the
    centre, rotated by the drawn angle.
    """
    ax = preset.axion
    m_a = draws.m_axion_ev[rows]
    half = ax.length_coeff_arcsec * 1e-22 / m_a  # (R,)
    t = torch.linspace(-1.0, 1.0, ax.n_points, device=m_a.device, dtype=m_a.dtype)
    along = half[:, None] * t[None, :]
    ang = draws.vortex_angle_rad[rows, None]
    mass = torch.full_like(along, ax.total_mass_msun / ax.n_points)
    theta_e = point_mass_theta_e_per_sqrt_msun(preset) * torch.sqrt(mass)
    return theta_e, along * torch.cos(ang), along * torch.sin(ang), mass
