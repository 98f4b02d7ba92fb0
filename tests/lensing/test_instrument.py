"""Pixel grid, PSF and noise against lenstronomy/scipy and the noise model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tuner.lensing.instrument import (
    add_noise,
    bin_supersampled,
    convolve_gaussian_psf,
    magnitude_to_cps,
    pixel_grid,
    survey_background_rms,
)


@pytest.mark.parametrize("supersampling", [1, 3])
def test_pixel_grid_matches_lenstronomy(supersampling):
    from lenstronomy.Util import util

    n, dp = 9, 0.1
    x, y = pixel_grid(n, dp, supersampling, dtype=torch.float64)
    ref_x, ref_y = util.make_grid(n, dp, supersampling)
    # lenstronomy's subgrid is ordered like its image (row = y); compare as sorted sets per axis
    # and through the binned pixel centres.
    np.testing.assert_allclose(np.sort(x.numpy().ravel()), np.sort(ref_x), atol=1e-12)
    np.testing.assert_allclose(np.sort(y.numpy().ravel()), np.sort(ref_y), atol=1e-12)
    centres = bin_supersampled(x, n, supersampling)[0, 0]
    base = (np.arange(n) - (n - 1) / 2) * dp
    np.testing.assert_allclose(centres.numpy(), np.tile(base, (n, 1)), atol=1e-12)


@pytest.mark.parametrize("method", ["direct", "fft"])
@pytest.mark.parametrize("sigma,truncate", [(0.74, 3.0), (0.67, 5.0), (6.0, 4.0)])
def test_psf_matches_scipy_nearest(method, sigma, truncate):
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    img = rng.random((2, 1, 40, 33))
    ours = convolve_gaussian_psf(torch.from_numpy(img), sigma, truncate, method=method)
    ref = np.stack([gaussian_filter(im[0], sigma, mode="nearest", truncate=truncate) for im in img])[:, None]
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-12)


@pytest.mark.parametrize("method", ["direct", "fft"])
def test_psf_conserves_flux(method):
    img = torch.zeros(1, 1, 64, 64, dtype=torch.float64)
    img[0, 0, 30, 25] = 7.0  # a point far from the edges
    out = convolve_gaussian_psf(img, 1.5, 5.0, method=method)
    assert out.sum().item() == pytest.approx(7.0, rel=1e-12)
    assert out.max().item() < 7.0 / 10  # and it really spread the light


def test_bad_psf_method_is_rejected():
    with pytest.raises(ValueError, match="allowed"):
        convolve_gaussian_psf(torch.zeros(1, 1, 8, 8), 1.0, 3.0, method="spline")


def test_noise_variance_matches_model():
    g = torch.Generator().manual_seed(3)
    model = torch.linspace(0.0, 0.5, 128).repeat(128, 1).reshape(1, 1, 128, 128).repeat(8, 1, 1, 1).double()
    normals = torch.randn((8, 1, 128, 128), generator=g, dtype=torch.float64)
    bkg, t = torch.full((8,), 0.01, dtype=torch.float64), torch.full((8,), 1500.0, dtype=torch.float64)
    noisy = add_noise(model, background_rms=bkg, exposure_s=t, normals=normals)
    resid = (noisy - model)[..., 64:]  # columns where Poisson and background both matter
    expected = 0.01**2 + model[..., 64:] / 1500.0
    ratio = (resid**2).mean() / expected.mean()
    assert abs(ratio.item() - 1) < 0.05
    low = (noisy - model)[..., :1]  # model ~ 0: background only
    assert abs((low.std() / 0.01).item() - 1) < 0.05


def test_survey_background_matches_lenstronomy():
    from lenstronomy.SimulationAPI.observation_api import SingleBand

    band = SingleBand(pixel_scale=0.101, exposure_time=565.0, magnitude_zero_point=24.0, read_noise=4.2,
                      ccd_gain=3.1, sky_brightness=22.35, seeing=0.16, num_exposures=4, psf_type="GAUSSIAN")
    ours = survey_background_rms(read_noise_e=4.2, exposure_s=565.0, num_exposures=4, sky_mag=22.35,
                                 zero_point=24.0, pixel_scale=0.101)
    assert ours == pytest.approx(band.background_noise, rel=1e-12)
    assert magnitude_to_cps(20.0, 24.0) == pytest.approx(band.magnitude2cps(20.0), rel=1e-12)


@pytest.mark.parametrize("preset_name", ["model_ii", "model_iii"])
def test_magnitude_to_amplitude_matches_lenstronomy_simapi(preset_name):
    from lenstronomy.SimulationAPI.sim_api import SimAPI

    from tuner.lensing import get_preset
    from tuner.lensing.simulate import background_rms, source_amplitude

    p = get_preset(preset_name)
    inst, src = p.instrument, p.source
    band = {"pixel_scale": inst.pixel_scale_arcsec, "exposure_time": inst.exposure_s,
            "magnitude_zero_point": inst.zero_point_mag, "read_noise": inst.read_noise_e,
            "ccd_gain": inst.gain_e_per_adu, "sky_brightness": inst.sky_mag_per_arcsec2,
            "seeing": inst.psf_fwhm_arcsec, "num_exposures": inst.num_exposures, "psf_type": "GAUSSIAN"}
    sim = SimAPI(num_pix=inst.num_pix, kwargs_single_band=band, kwargs_model={"source_light_model_list": ["SERSIC_ELLIPSE"]})
    kwargs_mag = [{"magnitude": src.magnitude, "R_sersic": src.r_sersic_arcsec, "n_sersic": src.n_sersic,
                   "e1": src.e1, "e2": src.e2, "center_x": 0.0, "center_y": 0.0}]
    _, kwargs_amp, _ = sim.magnitude2amplitude(None, kwargs_mag)
    assert source_amplitude(p) == pytest.approx(kwargs_amp[0]["amp"], rel=1e-10)
    assert background_rms(p) == pytest.approx(sim.background_noise, rel=1e-12)
