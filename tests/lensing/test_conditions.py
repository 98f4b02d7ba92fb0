"""Observing conditions: draws within their ranges and recorded, the physics of each condition,
and default conditions changing nothing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tuner.lensing import get_preset, simulate_batch
from tuner.lensing.conditions import ConditionDraws, ObservingConditions, gaussian_taps_batched
from tuner.lensing.instrument import FWHM_TO_SIGMA, convolve_gaussian_psf, convolve_separable
from tuner.lensing.simulate import background_rms

RANGES = ObservingConditions(noise_scale=(0.5, 4.0), psf_fwhm_scale=(0.75, 1.5), source_mag_offset=(-1.0, 1.0),
                             subpixel_shift_px=0.5)


def _sim(labels, seed=0, preset="model_ii", **kw):
    return simulate_batch(preset, torch.as_tensor(labels, dtype=torch.int64),
                          generator=torch.Generator().manual_seed(seed), **kw)


def test_default_conditions_change_no_bit_and_draw_nothing():
    labels = [0, 1, 2, 1]
    g_none, g_default = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, pa = simulate_batch("model_ii", torch.tensor(labels), generator=g_none)
    b, pb = simulate_batch("model_ii", torch.tensor(labels), generator=g_default, conditions=ObservingConditions())
    assert torch.equal(a, b) and pa.keys() == pb.keys()
    for key in pa:
        torch.testing.assert_close(pa[key], pb[key], rtol=0, atol=0, equal_nan=True)
    assert torch.equal(g_none.get_state(), g_default.get_state())  # the random stream is untouched


def test_draws_stay_in_their_ranges_and_are_recorded():
    n = 300
    _, params = _sim([0, 1, 2] * (n // 3), seed=1, conditions=RANGES)
    fwhm = get_preset("model_ii").instrument.psf_fwhm_arcsec
    checks = {"noise_scale": (0.5, 4.0), "psf_fwhm_arcsec": (0.75 * fwhm, 1.5 * fwhm),
              "source_mag_offset": (-1.0, 1.0), "shift_x_px": (-0.5, 0.5), "shift_y_px": (-0.5, 0.5)}
    for key, (lo, hi) in checks.items():
        values = params[key]
        assert values.shape == (n,), key
        assert (values >= lo * (1 - 1e-6)).all() and (values <= hi * (1 + 1e-6)).all(), key
        assert values.std() > 0.2 * (hi - lo) / math.sqrt(12), key  # they do vary
    # log-uniform scales: half the draws below the geometric mean of the range
    below = (params["noise_scale"] < math.sqrt(0.5 * 4.0)).float().mean().item()
    assert 0.4 < below < 0.6
    s = params["noise_scale"]
    torch.testing.assert_close(params["exposure_s"], 2260.0 / s**2)
    torch.testing.assert_close(params["background_rms"], background_rms(get_preset("model_ii")) * s)


def test_same_seed_gives_the_same_systems_observed_differently():
    labels = [0, 1, 2]
    base, p0 = _sim(labels, seed=5)
    shifted, p1 = _sim(labels, seed=5, conditions=ObservingConditions.fixed(noise_scale=2.0))
    for key in ("source_x_arcsec", "source_y_arcsec", "subhalo_mass_msun", "m_axion_ev", "vortex_angle_rad"):
        torch.testing.assert_close(p0[key], p1[key], rtol=0, atol=0, equal_nan=True)
    assert not torch.equal(base, shifted)


@pytest.mark.parametrize("scale", [0.5, 2.0, 4.0])
def test_noise_scale_multiplies_the_background_rms(scale):
    labels = [0, 1, 2] * 4
    kw = dict(seed=2, normalize=False)
    clean, _ = _sim(labels, noise=False, **kw)
    noisy1, _ = _sim(labels, **kw)  # condition draws come after the noise normals: the same normals
    noisy, _ = _sim(labels, **kw, conditions=ObservingConditions.fixed(noise_scale=scale))
    corner = (slice(None), 0, slice(0, 12), slice(0, 12))  # far from the ring: background only
    rms1 = (noisy1 - clean)[corner].std().item()
    rms = (noisy - clean)[corner].std().item()
    assert rms / rms1 == pytest.approx(scale, rel=1e-4)  # the same normals, s times the rms
    assert rms == pytest.approx(scale * background_rms(get_preset("model_ii")), rel=0.08)


@pytest.mark.parametrize("preset", ["model_i", "model_ii"])
def test_magnitude_offset_scales_the_total_flux(preset):
    labels = [0, 1, 2]
    kw = dict(seed=4, noise=False, normalize=False, preset=preset)
    base, _ = _sim(labels, **kw)
    brighter, _ = _sim(labels, **kw, conditions=ObservingConditions.fixed(source_mag_offset=-1.0))
    fainter, _ = _sim(labels, **kw, conditions=ObservingConditions.fixed(source_mag_offset=2.5))
    ratio = brighter.sum(dim=(1, 2, 3)) / base.sum(dim=(1, 2, 3))
    torch.testing.assert_close(ratio, torch.full((3,), 10**0.4), rtol=1e-5, atol=0)
    torch.testing.assert_close(fainter.sum(dim=(1, 2, 3)) / base.sum(dim=(1, 2, 3)), torch.full((3,), 0.1),
                               rtol=1e-5, atol=0)


@pytest.mark.parametrize("sigma0", [0.16 * FWHM_TO_SIGMA / 0.101, 2.0])  # Model II's PSF; a well-sampled one
def test_psf_fwhm_measured_on_a_point_source_scales(sigma0):
    """A point source convolved with per-image kernels (sigma0 x scale px): each image equals
    scipy's gaussian_filter of it alone, and, where the PSF is well sampled, its second-moment
    FWHM is the scaled FWHM."""
    from scipy.ndimage import gaussian_filter

    scales = torch.tensor([0.75, 1.0, 1.5, 3.0], dtype=torch.float64)
    image = torch.zeros(4, 1, 61, 61, dtype=torch.float64)
    image[:, 0, 30, 30] = 1.0
    taps = gaussian_taps_batched(scales * sigma0, 5.0, float(scales.max()) * sigma0)
    out = convolve_separable(image, taps)
    for b in range(4):
        want = gaussian_filter(image[b, 0].numpy(), float(scales[b] * sigma0), mode="nearest", truncate=5.0)
        np.testing.assert_allclose(out[b, 0].numpy(), want, atol=1e-12)
    wide = convolve_separable(image, taps, method="fft")  # the FFT path takes per-image taps too
    torch.testing.assert_close(wide, out, atol=1e-12, rtol=0)
    if sigma0 < 1.0:
        return  # a 0.5-1 px sigma is undersampled: its pixel moments are not the continuous ones
    coords = torch.arange(61, dtype=torch.float64) - 30
    var = (out[:, 0].sum(dim=1) * coords**2).sum(dim=1)  # variance along x of the unit-flux PSF
    fwhm_px = torch.sqrt(var) / FWHM_TO_SIGMA
    torch.testing.assert_close(fwhm_px, scales * sigma0 / FWHM_TO_SIGMA, rtol=2e-3, atol=0)


def test_per_image_psf_equals_each_fixed_psf():
    labels = [0, 1, 2]
    scales = [0.75, 1.0, 1.5]
    kw = dict(seed=6, noise=False, normalize=False)
    mixed, params = _sim(labels, **kw, conditions=ConditionDraws.explicit(3, psf_fwhm_scale=scales))
    assert params["psf_fwhm_arcsec"].tolist() == pytest.approx([0.16 * s for s in scales])
    for b, scale in enumerate(scales):
        alone, _ = _sim(labels, **kw, conditions=ObservingConditions.fixed(psf_fwhm_scale=scale))
        torch.testing.assert_close(mixed[b], alone[b], rtol=0, atol=1e-6 * alone[b].max().item())


def test_whole_pixel_shift_is_a_roll_of_the_noise_free_image():
    labels = [0, 1, 2]
    kw = dict(seed=8, noise=False, normalize=False)
    base, _ = _sim(labels, **kw)
    dx, dy = [2.0, -3.0, 0.0], [1.0, 0.0, -2.0]
    moved, params = _sim(labels, **kw, conditions=ConditionDraws.explicit(3, shift_x_px=dx, shift_y_px=dy))
    assert params["shift_x_px"].tolist() == dx and params["shift_y_px"].tolist() == dy
    inner = (slice(None), 0, slice(8, -8), slice(8, -8))  # away from the edges (PSF radius 3 px + shift)
    for b in range(3):
        rolled = torch.roll(base[b], shifts=(int(dy[b]), int(dx[b])), dims=(-2, -1))
        err = (moved[b][inner[1:]] - rolled[inner[1:]]).abs().max() / base[b].max()
        assert err < 1e-4, (b, err.item())
    assert (moved[0] - base[0]).abs().max() > 0.1 * base[0].max()  # it did move


def test_subpixel_shift_moves_the_light_centroid():
    labels = [0, 0]
    kw = dict(seed=9, noise=False, normalize=False)
    base, _ = _sim(labels, **kw)
    moved, _ = _sim(labels, **kw, conditions=ConditionDraws.explicit(2, shift_x_px=[0.4, -0.25]))
    cols = torch.arange(64, dtype=torch.float32)
    centroid = lambda im: (im[:, 0].sum(dim=1) * cols).sum(dim=1) / im.sum(dim=(1, 2, 3))  # noqa: E731
    torch.testing.assert_close(centroid(moved) - centroid(base), torch.tensor([0.4, -0.25]), atol=0.02, rtol=0)


def test_conditions_validate_with_clear_messages(tmp_path):
    with pytest.raises(ValueError, match="lo must be <= hi"):
        ObservingConditions(noise_scale=(2.0, 1.0))
    with pytest.raises(ValueError, match="must be > 0"):
        ObservingConditions(psf_fwhm_scale=(0.0, 1.0))
    with pytest.raises(ValueError, match=">= 0"):
        ObservingConditions(subpixel_shift_px=-1)
    with pytest.raises(ValueError, match="finite"):
        ObservingConditions(source_mag_offset=(0, float("inf")))
    with pytest.raises(ValueError, match="out of preset 'model_ii'"):
        _sim([0], conditions=ObservingConditions(subpixel_shift_px=40))
    assert ObservingConditions().is_default and not ObservingConditions.fixed(noise_scale=2).is_default
    assert ObservingConditions(noise_scale=3) == ObservingConditions.fixed(noise_scale=3.0)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("noise_scale: [0.5, 2]\npsf_fwhm_scale: 1.2\nsubpixel_shift_px: 0.5\n")
    loaded = ObservingConditions.from_yaml(recipe)
    assert loaded.noise_scale == (0.5, 2.0) and loaded.psf_fwhm_scale == (1.2, 1.2) and loaded.varies_psf is False
    assert ObservingConditions.from_mapping(loaded.to_dict()) == loaded
    recipe.write_text("noise_scale: [2, 1]\nseeing: 3\n")
    with pytest.raises(ValueError, match=r"recipe.yaml: seeing: .*allowed fields: noise_scale") as info:
        ObservingConditions.from_yaml(recipe)
    assert "\n" not in str(info.value)


def test_float64_and_explicit_draws_shapes():
    images, _ = _sim([0, 1], dtype=torch.float64, conditions=RANGES)
    assert images.dtype == torch.float64 and torch.isfinite(images).all()
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        _sim([0, 1], conditions=ConditionDraws.explicit(3))


@pytest.mark.slow
@pytest.mark.filterwarnings("error:torch.compile failed")  # no silent eager fallback
def test_compiled_path_with_conditions_matches_eager():
    labels = [0, 1, 2, 1, 2, 0, 1]
    for conditions in (RANGES, ObservingConditions.fixed(noise_scale=2.0, psf_fwhm_scale=1.5)):
        kw = dict(seed=3, noise=False, normalize=False, conditions=conditions)
        eager, pe = _sim(labels, **kw)
        compiled, pc = _sim(labels, compiled=True, **kw)
        assert (compiled - eager).abs().max() / eager.max() < 1e-5
        for key in pe:
            torch.testing.assert_close(pe[key], pc[key], rtol=0, atol=0, equal_nan=True)
        noisy_eager, _ = _sim(labels, seed=3, conditions=conditions)
        noisy_compiled, _ = _sim(labels, seed=3, conditions=conditions, compiled=True)
        assert (noisy_compiled - noisy_eager).abs().max() < 1e-4


def test_convolve_gaussian_psf_shared_kernel_is_unchanged():
    """The shared-kernel path (every dataset so far) is the one the per-image code generalises."""
    image = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    taps = gaussian_taps_batched(torch.full((2,), 1.3, dtype=torch.float64), 4.0, 1.3).float()
    torch.testing.assert_close(convolve_separable(image, taps), convolve_gaussian_psf(image, 1.3, 4.0),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("base", ["model_i", "model_ii"])
def test_another_instrument_sees_the_same_systems_on_the_base_grid(base):
    from tuner.lensing.instrument import survey_background_rms
    from tuner.lensing.presets import with_instrument

    hst = with_instrument(base, "model_iii")
    grid = get_preset(base).instrument
    assert (hst.instrument.num_pix, hst.instrument.pixel_scale_arcsec) == (grid.num_pix, grid.pixel_scale_arcsec)
    assert hst.instrument.psf_fwhm_arcsec == 0.08 and hst.source.magnitude == 20.0 and hst.source.amp is None
    images, params = _sim([0, 1, 2], seed=12, preset=hst)
    _, own = _sim([0, 1, 2], seed=12, preset=base)
    assert images.shape == (3, 1, grid.num_pix, grid.num_pix)
    for key in ("source_x_arcsec", "subhalo_mass_msun", "m_axion_ev"):
        torch.testing.assert_close(params[key], own[key], rtol=0, atol=0, equal_nan=True)
    assert (params["exposure_s"] == 5400).all()
    want = survey_background_rms(read_noise_e=4.0, exposure_s=5400.0, num_exposures=1, sky_mag=22.3,
                                 zero_point=25.96, pixel_scale=grid.pixel_scale_arcsec)
    torch.testing.assert_close(params["background_rms"], torch.full((3,), want, dtype=torch.float32))
