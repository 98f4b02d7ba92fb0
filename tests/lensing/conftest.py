"""Fixtures for the simulator tests: lenstronomy 1.14 reference models on our pixel grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tuner.lensing import get_preset
from tuner.lensing.populations import AXION, CDM, axion_point_masses, cdm_point_masses, draw_systems, host_theta_e_arcsec
from tuner.lensing.simulate import source_amplitude


def lenstronomy_image(preset_name: str, label: int, seed: int, dtype=torch.float64) -> np.ndarray:
    """Noise-free lenstronomy image (counts/s per pixel) of the system our simulator draws
    first from a CPU generator seeded with ``seed`` (draws made in ``dtype``)."""
    from lenstronomy.Data.imaging_data import ImageData
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LensModel.lens_model import LensModel
    from lenstronomy.LightModel.light_model import LightModel

    p = get_preset(preset_name)
    inst, host, src = p.instrument, p.host, p.source
    g = torch.Generator().manual_seed(seed)
    draws = draw_systems(p, 1, g, device="cpu", dtype=dtype)
    rows = torch.tensor([0])
    kwargs_lens = [
        {"theta_E": host_theta_e_arcsec(p), "e1": host.e1, "e2": host.e2, "center_x": 0.0, "center_y": 0.0},
        {"gamma1": host.gamma1, "gamma2": host.gamma2, "ra_0": 0.0, "dec_0": 0.0},
    ]
    models = ["SIE", "SHEAR"]
    if label in (CDM, AXION):
        make = cdm_point_masses if label == CDM else axion_point_masses
        te, cx, cy, _ = (t[0].double().numpy() for t in make(p, draws, rows))
        for t, xx, yy in zip(te, cx, cy):
            models.append("POINT_MASS")
            kwargs_lens.append({"theta_E": float(t), "center_x": float(xx), "center_y": float(yy)})
    kwargs_source = [{
        "amp": source_amplitude(p), "R_sersic": src.r_sersic_arcsec, "n_sersic": src.n_sersic,
        "e1": src.e1, "e2": src.e2,
        "center_x": float(draws.source_x[0]), "center_y": float(draws.source_y[0]),
    }]
    n, dp = inst.num_pix, inst.pixel_scale_arcsec
    data = ImageData(
        image_data=np.zeros((n, n)), ra_at_xy_0=-(n - 1) / 2 * dp, dec_at_xy_0=-(n - 1) / 2 * dp,
        transform_pix2angle=np.diag([dp, dp]),
    )
    psf = PSF(psf_type="GAUSSIAN", fwhm=inst.psf_fwhm_arcsec, truncation=inst.psf_truncation_sigma)
    model = ImageModel(
        data, psf, lens_model_class=LensModel(models), source_model_class=LightModel(["SERSIC_ELLIPSE"]),
        kwargs_numerics={"supersampling_factor": inst.supersampling, "supersampling_convolution": False},
    )
    return model.image(kwargs_lens, kwargs_source)


@pytest.fixture
def lenstronomy_reference():
    return lenstronomy_image


@pytest.fixture
def grid64():
    """A 64x64 grid over +-2.5 arcsec in float64 numpy and torch (1, P)."""
    c = np.linspace(-2.5, 2.5, 64)
    xx, yy = np.meshgrid(c, c)
    return xx.ravel(), yy.ravel(), torch.from_numpy(xx.reshape(1, -1)), torch.from_numpy(yy.reshape(1, -1))
