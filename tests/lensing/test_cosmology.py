"""Distances against astropy and DeepLense's Einstein radius convention."""

from __future__ import annotations

import pytest

from tuner.lensing.cosmology import (
    angular_diameter_distance_between_mpc,
    angular_diameter_distance_mpc,
    einstein_radius_arcsec,
    luminosity_distance_mpc,
)


@pytest.mark.parametrize("z", [0.1, 0.5, 1.0, 2.5])
def test_distances_match_astropy(z):
    from astropy.cosmology import FlatLambdaCDM

    cosmo = FlatLambdaCDM(H0=70, Om0=0.3, Ob0=0.05)
    assert luminosity_distance_mpc(z) == pytest.approx(cosmo.luminosity_distance(z).value, rel=1e-9)
    assert angular_diameter_distance_mpc(z) == pytest.approx(cosmo.angular_diameter_distance(z).value, rel=1e-9)
    assert angular_diameter_distance_between_mpc(0.5, z + 0.6) == pytest.approx(
        cosmo.angular_diameter_distance(0.5, z + 0.6).value, rel=1e-9)


def test_deeplense_host_einstein_radius():
    assert einstein_radius_arcsec(1e12, 0.5, 1.0) == pytest.approx(1.2815, abs=1e-4)
    assert einstein_radius_arcsec(1e12, 0.5, 1.0, convention="angular_diameter") == pytest.approx(1.6645, abs=1e-4)


def test_bad_convention_and_redshifts_are_rejected():
    with pytest.raises(ValueError, match="allowed"):
        einstein_radius_arcsec(1e12, 0.5, 1.0, convention="comoving")
    with pytest.raises(ValueError, match="must exceed"):
        einstein_radius_arcsec(1e12, 1.0, 0.5)
