"""simulate_batch: agreement with lenstronomy's image model, reproducibility, contract."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from tuner.lensing import CLASS_NAMES, PRESETS, get_preset, simulate_batch
from tuner.lensing.simulate import background_rms

PARAM_KEYS = ("label", "m_axion_ev", "n_subhalos", "subhalo_mass_msun", "source_x_arcsec",
              "source_y_arcsec", "exposure_s", "theta_e_arcsec")


def _sim(preset, labels, seed=0, **kw):
    return simulate_batch(preset, torch.as_tensor(labels, dtype=torch.int64),
                          generator=torch.Generator().manual_seed(seed), **kw)


@pytest.mark.parametrize("preset", ["model_i", "model_ii", "model_iii"])
@pytest.mark.parametrize("label", [0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_noise_free_image_matches_lenstronomy(lenstronomy_reference, preset, label, dtype):
    seed = 11 + label
    ref = lenstronomy_reference(preset, label, seed, dtype=dtype)
    ours, _ = _sim(preset, [label], seed=seed, dtype=dtype, noise=False, normalize=False)
    diff = np.abs(ours[0, 0].double().numpy() - ref).max() / ref.max()
    assert diff < (1e-6 if dtype == torch.float64 else 1e-3), f"max |diff| = {diff:.2e} of the peak"


def test_contract_shapes_and_parameters():
    labels = [0, 1, 2, 2, 1]
    images, params = _sim("model_ii", labels)
    assert images.shape == (5, 1, 64, 64) and images.dtype == torch.float32
    assert images.amin().item() == 0.0 and images.amax().item() == 1.0
    for key in PARAM_KEYS:
        assert params[key].shape == (5,), key
    assert params["label"].tolist() == labels
    assert params["n_subhalos"].tolist() == [0, 25, 100, 100, 25]
    assert torch.isnan(params["m_axion_ev"][:2]).all() and (params["m_axion_ev"][2:4] > 0).all()
    assert params["subhalo_mass_msun"][2].item() == pytest.approx(3e10, rel=1e-5)
    assert params["subhalo_mass_msun"][0].item() == 0.0
    assert (params["source_x_arcsec"].abs() <= 0.35).all()
    assert params["theta_e_arcsec"][0].item() == pytest.approx(1.2815, abs=1e-4)
    assert params["exposure_s"][0].item() == pytest.approx(2260.0)


def test_model_i_exposure_and_sizes():
    images, params = _sim("model_i", [0, 1, 2, 0])
    assert images.shape == (4, 1, 150, 150)
    assert ((params["exposure_s"] >= 1e3) & (params["exposure_s"] <= 10**3.5)).all()
    assert PRESETS["model_iii"].image_size == 64 and CLASS_NAMES == ("no_sub", "cdm", "axion")


def test_same_seed_same_bits_and_different_seed_differs():
    a, pa = _sim("model_ii", [0, 1, 2], seed=4)
    b, pb = _sim("model_ii", [0, 1, 2], seed=4)
    c, _ = _sim("model_ii", [0, 1, 2], seed=5)
    assert torch.equal(a, b)
    for key in pa:
        torch.testing.assert_close(pa[key], pb[key], rtol=0, atol=0, equal_nan=True)
    assert not torch.equal(a, c)


def test_draws_do_not_depend_on_flags_or_class():
    with_sub, _ = _sim("model_ii", [1, 2], seed=7, normalize=False)
    without, _ = _sim("model_ii", [1, 2], seed=7, normalize=False, substructure=False)
    as_no_sub, _ = _sim("model_ii", [0, 0], seed=7, normalize=False)
    torch.testing.assert_close(without, as_no_sub, rtol=0, atol=0)  # same host, source and noise
    clean_sub, _ = _sim("model_ii", [1, 2], seed=7, normalize=False, noise=False)
    clean_without, _ = _sim("model_ii", [1, 2], seed=7, normalize=False, noise=False, substructure=False)
    # the same normals feed both noise realisations: only the Poisson amplitude differs
    noise_sub, noise_without = with_sub - clean_sub, without - clean_without
    assert (noise_sub - noise_without).std() < 0.3 * noise_without.std()


def test_float64_path():
    images, params = _sim("model_ii", [1, 2], dtype=torch.float64)
    assert images.dtype == torch.float64 and params["source_x_arcsec"].dtype == torch.float64
    assert torch.isfinite(images).all()


@pytest.mark.parametrize("preset", ["model_i", "model_ii"])
@pytest.mark.parametrize("label", [1, 2])
def test_classes_are_learnable(preset, label):
    """Substructure changes the image by more than the noise rms near the Einstein ring."""
    p = get_preset(preset)
    n, dp = p.instrument.num_pix, p.instrument.pixel_scale_arcsec
    c = (torch.arange(n) - (n - 1) / 2) * dp
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    ring = (torch.hypot(xx, yy) - 1.2815).abs() < 0.5
    kw = dict(seed=21, noise=False, normalize=False)
    sub, params = _sim(preset, [label] * 48, **kw)
    smooth, _ = _sim(preset, [label] * 48, substructure=False, **kw)
    rms = torch.sqrt(background_rms(p) ** 2 + smooth.clamp(min=0) / params["exposure_s"].view(-1, 1, 1, 1))
    significance = ((sub - smooth).abs() / rms)[:, 0][:, ring].amax(dim=1)
    assert (significance > 1).float().mean().item() > 0.8


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="model_i, model_ii, model_iii"):
        get_preset("model_iv")
    with pytest.raises(ValueError, match="model_iv"):
        _sim("model_iv", [0])
    with pytest.raises(ValueError, match="0..2"):
        _sim("model_ii", [0, 3])
    with pytest.raises(ValueError, match="int64"):
        simulate_batch("model_ii", torch.tensor([0.0]), generator=torch.Generator())
    if not torch.cuda.is_available():
        return
    with pytest.raises(ValueError, match="generator"):
        _sim("model_ii", [0], device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu_physics():
    labels = torch.tensor([0, 1, 2])
    g = torch.Generator(device="cuda").manual_seed(0)
    images, params = simulate_batch("model_ii", labels, generator=g, device="cuda")
    assert images.device.type == "cuda" and images.shape == (3, 1, 64, 64)
    g2 = torch.Generator(device="cuda").manual_seed(0)
    again, _ = simulate_batch("model_ii", labels, generator=g2, device="cuda")
    assert torch.equal(images, again)
    assert math.isclose(params["theta_e_arcsec"][0].item(), 1.2815, abs_tol=1e-4)


@pytest.mark.slow
def test_compiled_path_matches_eager():
    """torch.compile of the hot step (mixed classes, padded last chunk) gives the eager image."""
    labels = [0, 1, 2, 1, 2, 0, 1]
    kw = dict(seed=3, noise=False, normalize=False)
    eager, _ = _sim("model_ii", labels, **kw)
    compiled, _ = _sim("model_ii", labels, compiled=True, **kw)
    assert (compiled - eager).abs().max() / eager.max() < 1e-5
    noisy_eager, _ = _sim("model_ii", labels, seed=3)
    noisy_compiled, _ = _sim("model_ii", labels, seed=3, compiled=True)
    assert (noisy_compiled - noisy_eager).abs().max() < 1e-4  # normalised images


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_large_block_compiled_matches_eager():
    """The dataset's CUDA setting (2048 images, compiled, chunks of CUDA_COMPILED_CHUNK) gives
    the eager images to float32 rounding and exactly the same parameters."""
    labels = torch.from_numpy(np.random.default_rng(0).integers(0, 3, 2048))

    def run(**kw):
        g = torch.Generator(device="cuda").manual_seed(3)
        return simulate_batch("model_ii", labels, generator=g, device="cuda", **kw)

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile failed")  # no silent eager fallback
        compiled, params_compiled = run(compiled=True, noise=False, normalize=False)
        noisy_compiled, _ = run(compiled=True)
    eager, params_eager = run(noise=False, normalize=False)
    noisy_eager, _ = run()
    assert ((compiled - eager).abs().amax() / eager.amax()).item() < 1e-5
    assert (noisy_compiled - noisy_eager).abs().amax().item() < 1e-4  # normalised images
    for key in params_eager:
        torch.testing.assert_close(params_compiled[key], params_eager[key], rtol=0, atol=0, equal_nan=True)
