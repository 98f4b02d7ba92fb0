"""Flat Lambda-CDM distances and point-mass Einstein radii (numpy, float64).

Distances are computed once per preset (not per image), so plain numpy is enough; the
result enters the torch code as a Python float. No astropy needed: the comoving distance
integral of a flat, radiation-free Lambda-CDM universe is evaluated with 64-point
Gauss-Legendre quadrature (agrees with astropy's FlatLambdaCDM(Tcmb0=0) to ~1e-12).
"""

from __future__ import annotations

import numpy as np

SPEED_OF_LIGHT_KM_S = 299_792.458
GRAVITATIONAL_CONSTANT_SI = 6.67430e-11  # m^3 kg^-1 s^-2 (CODATA 2018, as astropy)
SPEED_OF_LIGHT_SI = 299_792_458.0  # m/s
SOLAR_MASS_KG = 1.988409870698051e30  # IAU 2015 nominal, as astropy.constants.M_sun
MEGAPARSEC_M = 3.0856775814913673e22
RAD_TO_ARCSEC_DEEPLENSE = 206265.0  # DeepLenseSim's rounded factor, kept for its theta_E

DISTANCE_CONVENTIONS = ("deeplense_luminosity", "angular_diameter")


def comoving_distance_mpc(z: float, h0: float = 70.0, om0: float = 0.3) -> float:
    """Line-of-sight comoving distance [Mpc] to redshift ``z`` in flat LCDM (no radiation).

    D_C = c/H0 * int_0^z dz' / E(z'),  E(z) = sqrt(Om0 (1+z)^3 + 1 - Om0).
    """
    if z < 0:
        raise ValueError(f"redshift must be >= 0, got {z}")
    nodes, weights = np.polynomial.legendre.leggauss(64)
    zz = 0.5 * z * (nodes + 1.0)
    e_z = np.sqrt(om0 * (1.0 + zz) ** 3 + (1.0 - om0))
    integral = 0.5 * z * np.sum(weights / e_z)
    return float(SPEED_OF_LIGHT_KM_S / h0 * integral)


def luminosity_distance_mpc(z: float, h0: float = 70.0, om0: float = 0.3) -> float:
    """Luminosity distance [Mpc]: D_L = (1 + z) D_C (flat universe)."""
    return (1.0 + z) * comoving_distance_mpc(z, h0, om0)


def angular_diameter_distance_mpc(z: float, h0: float = 70.0, om0: float = 0.3) -> float:
    """Angular-diameter distance [Mpc]: D_A = D_C / (1 + z) (flat universe)."""
    return comoving_distance_mpc(z, h0, om0) / (1.0 + z)


def angular_diameter_distance_between_mpc(
    z1: float, z2: float, h0: float = 70.0, om0: float = 0.3
) -> float:
    """Angular-diameter distance [Mpc] from z1 to z2 > z1: (D_C(z2) - D_C(z1)) / (1 + z2)."""
    return (comoving_distance_mpc(z2, h0, om0) - comoving_distance_mpc(z1, h0, om0)) / (1.0 + z2)


def lensing_distance_ratio_mpc(
    z_lens: float, z_source: float, *, convention: str, h0: float = 70.0, om0: float = 0.3
) -> float:
    """D_ls / (D_l D_s) [1/Mpc] in the chosen distance convention.

    ``"deeplense_luminosity"`` reproduces DeepLenseSim's ``mass_to_radius``: luminosity
    distances and D_ls = D_L(z_s) - D_L(z_l). ``"angular_diameter"`` is the physical one.
    """
    if z_source <= z_lens:
        raise ValueError(f"source redshift {z_source} must exceed lens redshift {z_lens}")
    if convention == "deeplense_luminosity":
        d_l = luminosity_distance_mpc(z_lens, h0, om0)
        d_s = luminosity_distance_mpc(z_source, h0, om0)
        d_ls = d_s - d_l
    elif convention == "angular_diameter":
        d_l = angular_diameter_distance_mpc(z_lens, h0, om0)
        d_s = angular_diameter_distance_mpc(z_source, h0, om0)
        d_ls = angular_diameter_distance_between_mpc(z_lens, z_source, h0, om0)
    else:
        raise ValueError(f"unknown distance convention {convention!r}; allowed: {DISTANCE_CONVENTIONS}")
    return d_ls / (d_l * d_s)


def einstein_radius_arcsec(
    mass_msun: float | np.ndarray,
    z_lens: float,
    z_source: float,
    *,
    convention: str = "deeplense_luminosity",
    h0: float = 70.0,
    om0: float = 0.3,
) -> float | np.ndarray:
    """Point-mass Einstein radius [arcsec]: theta_E = sqrt(4 G M / c^2 * D_ls / (D_l D_s)).

    DeepLenseSim uses this formula for the host SIE too (M = 1e12 Msun gives 1.2815" in the
    deeplense_luminosity convention, 1.6645" with angular-diameter distances).
    """
    ratio_per_m = lensing_distance_ratio_mpc(z_lens, z_source, convention=convention, h0=h0, om0=om0) / MEGAPARSEC_M
    mass_kg = np.asarray(mass_msun, dtype=np.float64) * SOLAR_MASS_KG
    theta_rad = np.sqrt(4.0 * GRAVITATIONAL_CONSTANT_SI * mass_kg / SPEED_OF_LIGHT_SI**2 * ratio_per_m)
    out = theta_rad * RAD_TO_ARCSEC_DEEPLENSE
    return float(out) if out.ndim == 0 else out
