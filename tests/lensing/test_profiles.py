"""Deflections and source light against lenstronomy 1.14 and analytic results."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tuner.lensing.profiles import (
    point_mass_deflection,
    sersic_ellipse,
    sersic_ellipse_fixed_shape,
    sersic_total_flux,
    shear_deflection,
    sie_deflection,
)


def _t(*vals, dtype=torch.float64):
    return [torch.tensor([v], dtype=dtype) for v in vals]


def _assert_close_where_large(ours, ref, rtol=1e-4, floor=1e-3):
    ours, ref = np.asarray(ours, dtype=np.float64).ravel(), np.asarray(ref).ravel()
    big = np.abs(ref) > floor
    assert big.sum() > 100, "test grid has too few pixels with a sizeable deflection"
    rel = np.abs(ours[big] - ref[big]) / np.abs(ref[big])
    assert rel.max() < rtol, f"max relative error {rel.max():.2e}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("e1,e2", [(0.1, 0.0), (-0.2, 0.15), (0.0, 0.0)])
def test_sie_matches_lenstronomy(grid64, dtype, e1, e2):
    from lenstronomy.LensModel.Profiles.sie import SIE

    xs, ys, x, y = grid64
    kw = {"theta_E": 1.2815, "e1": e1, "e2": e2, "center_x": 0.05, "center_y": -0.1}
    ref_x, ref_y = SIE().derivatives(xs, ys, **kw)
    ax, ay = sie_deflection(x.to(dtype), y.to(dtype), *_t(*kw.values(), dtype=dtype))
    _assert_close_where_large(ax, ref_x)
    _assert_close_where_large(ay, ref_y)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_shear_matches_lenstronomy(grid64, dtype):
    from lenstronomy.LensModel.Profiles.shear import Shear

    xs, ys, x, y = grid64
    ref_x, ref_y = Shear().derivatives(xs, ys, gamma1=0.05, gamma2=-0.03)
    ax, ay = shear_deflection(x.to(dtype), y.to(dtype), *_t(0.05, -0.03, dtype=dtype))
    _assert_close_where_large(ax, ref_x)
    _assert_close_where_large(ay, ref_y)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_point_masses_match_lenstronomy(grid64, dtype):
    from lenstronomy.LensModel.lens_model import LensModel

    xs, ys, x, y = grid64
    rng = np.random.default_rng(1)
    te, cx, cy = rng.uniform(0.01, 0.2, 7), rng.uniform(-2, 2, 7), rng.uniform(-2, 2, 7)
    kwargs = [{"theta_E": a, "center_x": b, "center_y": c} for a, b, c in zip(te, cx, cy)]
    ref_x, ref_y = LensModel(["POINT_MASS"] * 7).alpha(xs, ys, kwargs)
    as_t = [torch.tensor(v[None, :], dtype=dtype) for v in (te, cx, cy)]
    ax, ay = point_mass_deflection(x.to(dtype), y.to(dtype), *as_t)
    _assert_close_where_large(ax, ref_x)
    _assert_close_where_large(ay, ref_y)


def test_zero_mass_padding_adds_nothing(grid64):
    _, _, x, y = grid64
    te = torch.tensor([[0.1, 0.0, 0.0]], dtype=torch.float64)
    cx, cy = torch.tensor([[0.3, 0.0, 1.0]], dtype=torch.float64), torch.tensor([[0.2, 0.0, -1.0]], dtype=torch.float64)
    padded = point_mass_deflection(x, y, te, cx, cy)
    single = point_mass_deflection(x, y, te[:, :1], cx[:, :1], cy[:, :1])
    assert torch.equal(padded[0], single[0]) and torch.equal(padded[1], single[1])


def test_point_mass_analytic_value():
    # |alpha| = theta_E^2 / r, pointing away from the mass: at (3, 4) from a 0.5" mass, 0.05".
    x, y = torch.tensor([[3.0]], dtype=torch.float64), torch.tensor([[4.0]], dtype=torch.float64)
    ax, ay = point_mass_deflection(x, y, *[torch.tensor([[v]], dtype=torch.float64) for v in (0.5, 0.0, 0.0)])
    assert ax.item() == pytest.approx(0.25 * 3 / 25, rel=1e-12)
    assert ay.item() == pytest.approx(0.25 * 4 / 25, rel=1e-12)


def test_sis_limit_has_constant_magnitude_theta_e():
    # A round SIE is an SIS: |alpha| = theta_E everywhere (away from the centre).
    ang = torch.linspace(0, 2 * math.pi, 37, dtype=torch.float64)
    r = torch.tensor([0.3, 1.0, 4.0], dtype=torch.float64)
    x = (r[:, None] * torch.cos(ang)).reshape(1, -1)
    y = (r[:, None] * torch.sin(ang)).reshape(1, -1)
    ax, ay = sie_deflection(x, y, *_t(1.3, 0.0, 0.0, 0.0, 0.0))
    torch.testing.assert_close(torch.hypot(ax, ay), torch.full_like(ax, 1.3), rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sersic_matches_lenstronomy(grid64, dtype):
    from lenstronomy.LightModel.light_model import LightModel

    xs, ys, x, y = grid64
    kw = {"amp": 20.0, "R_sersic": 0.25, "n_sersic": 1.0, "e1": -0.1, "e2": 0.1, "center_x": 0.2, "center_y": -0.3}
    ref = LightModel(["SERSIC_ELLIPSE"]).surface_brightness(xs, ys, [kw])
    ours = sersic_ellipse(x.to(dtype), y.to(dtype), *_t(*kw.values(), dtype=dtype))
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    np.testing.assert_allclose(ours.double().numpy().ravel(), ref, rtol=tol, atol=tol * ref.max())


@pytest.mark.parametrize("n", [1.0, 2.5])
def test_sersic_fixed_shape_matches_lenstronomy(grid64, n):
    """The simulator's constant-folded Sersic (shape shared by a batch, centres per image)."""
    from lenstronomy.LightModel.light_model import LightModel

    xs, ys, x, y = grid64
    shape = {"amp": 20.0, "R_sersic": 0.25, "n_sersic": n, "e1": -0.1, "e2": 0.1}
    centres = [(0.2, -0.3), (-0.1, 0.05)]
    ours = sersic_ellipse_fixed_shape(
        x.float(), y.float(), torch.tensor([c[0] for c in centres]), torch.tensor([c[1] for c in centres]),
        amp=20.0, r_sersic=0.25, n_sersic=n, e1=-0.1, e2=0.1,
    )
    assert ours.shape == (2, x.shape[-1])
    for row, (cx, cy) in zip(ours, centres):
        ref = LightModel(["SERSIC_ELLIPSE"]).surface_brightness(xs, ys, [{**shape, "center_x": cx, "center_y": cy}])
        np.testing.assert_allclose(row.double().numpy(), ref, rtol=1e-5, atol=1e-5 * ref.max())


@pytest.mark.parametrize("n", [1.0, 2.5, 4.0])
def test_sersic_total_flux_matches_lenstronomy(n):
    from lenstronomy.LightModel.light_model import LightModel

    kw = {"amp": 3.0, "R_sersic": 0.4, "n_sersic": n, "e1": 0.1, "e2": 0.0, "center_x": 0.0, "center_y": 0.0}
    ref = LightModel(["SERSIC_ELLIPSE"]).total_flux([kw])[0]
    ours = sersic_total_flux(*_t(3.0, 0.4, n))
    assert ours.item() == pytest.approx(ref, rel=1e-10)


def test_dense_point_mass_form_equals_loop(grid64):
    from tuner.lensing.profiles import point_mass_deflection_dense

    _, _, x, y = grid64
    g = torch.Generator().manual_seed(2)
    te, cx, cy = (torch.rand((3, 5), generator=g, dtype=torch.float64) for _ in range(3))
    loop = point_mass_deflection(x, y, te, cx, cy)
    dense = point_mass_deflection_dense(x, y, te, cx, cy)
    for a, b in zip(loop, dense):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_point_mass_blocks_do_not_change_the_sum(grid64):
    _, _, x, y = grid64
    g = torch.Generator().manual_seed(4)
    te, cx, cy = (torch.rand((5, 3), generator=g, dtype=torch.float64) for _ in range(3))
    whole = point_mass_deflection(x, y, te, cx, cy)
    blocked = point_mass_deflection(x, y, te, cx, cy, block_elements=2 * x.shape[1])  # blocks of 2 images
    for a, b in zip(whole, blocked):
        assert torch.equal(a, b)
