"""The ``torch.compile`` path of :func:`tuner.lensing.simulate_batch`: the whole per-image
pipeline (point-mass sum, ray-trace, Sersic, binning, PSF, noise, normalisation) as one static
graph per preset, class and flag combination, run in fixed chunks of rows.

Inductor fuses the (C, P, N) point-mass broadcast and its reduction into one loop and the
observe steps into a few passes over each chunk; the last chunk of a class is padded by
repeating a row, so shapes stay static.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from tuner.lensing.instrument import observe
from tuner.lensing.profiles import point_mass_deflection_dense, sersic_ellipse_fixed_shape

RECOMPILE_LIMIT = 64


def render_chunk(
    x, y, host_ax, host_ay, psf_taps, source_x, source_y, exposure_s, normals, bkg, theta_e=None, center_x=None,
    center_y=None, flux_scale=None, *, shape: tuple[tuple[str, float], ...], static: tuple[tuple[str, object], ...],
) -> Tensor:
    """The whole pipeline for C images of one class, fused by ``torch.compile``: (C, 1, n, n).

    Subhalo deflection (none when ``theta_e`` is None), ray-trace, Sersic, source flux scale
    (observing conditions; none when None), binning, PSF, noise, normalisation. Every per-image
    step is row-wise, so chunks of a batch are independent; ``shape`` (the Sersic shape) and
    ``static`` (observe's fixed settings) are constants of the compiled graph. The grid, host
    deflection and PSF taps are shared ((1, P), (K,)) or per image ((C, P), (C, K)).
    """
    bx, by = x - host_ax, y - host_ay
    if theta_e is not None:
        px, py = point_mass_deflection_dense(x, y, theta_e, center_x, center_y)
        bx, by = bx - px, by - py
    sb = sersic_ellipse_fixed_shape(bx, by, source_x, source_y, **dict(shape))
    if flux_scale is not None:
        sb = sb * flux_scale.reshape(-1, 1)
    return observe(sb, psf_taps=psf_taps, background_rms=bkg, exposure_s=exposure_s, normals=normals,
                   **dict(static))


def _enough_recompiles():
    """Scoped dynamo setting: one static graph per (preset, class, flags, dtype, device) is
    intended; dynamo's default limit (8) would silently fall back to eager, which for the
    dense point-mass form materialises (C, P, N) and is many times slower."""
    return torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT)


@functools.lru_cache(maxsize=32)
def _compiled_render(shape: tuple, static: tuple, deterministic: bool):
    # Inductor's deterministic mode (used on GPUs) picks reduction configs without timing them:
    # timed choices can differ between processes, and with them the float32 rounding of a sum.
    options = {"deterministic": True} if deterministic else None
    return torch.compile(functools.partial(render_chunk, shape=shape, static=static), dynamic=False,
                         options=options)


def render_compiled(shared: dict[str, Tensor], per_image: dict[str, Tensor], smooth_rows: Tensor, groups,
                     shape: dict, static: dict, chunk: int) -> Tensor:
    """Compiled path: the smooth rows and every substructure class in fixed chunks of ``chunk``
    rows (the last one padded by repeating a real row), so each (preset, class, flags) compiles
    once. ``shared``: :func:`render_chunk` arguments common to all images; ``per_image``: its
    (B, ...) arguments, cut into the chunks."""
    bkg = per_image["bkg"]
    n = static["num_pix"]
    out = torch.empty((bkg.shape[0], 1, n, n), device=bkg.device, dtype=bkg.dtype)
    fn = _compiled_render(tuple(shape.items()), tuple(static.items()), bkg.device.type == "cuda")
    with _enough_recompiles():
        for rows, *masses in [(smooth_rows,), *[g[:4] for g in groups]]:
            per_row = {key: value[rows] for key, value in per_image.items()}
            per_row.update(zip(("theta_e", "center_x", "center_y"), masses))
            for lo in range(0, rows.numel(), chunk):
                part = slice(lo, min(lo + chunk, rows.numel()))
                pad = chunk - (part.stop - part.start)
                args = {key: value[part] for key, value in per_row.items()}
                if pad:  # the padding rows' output is dropped
                    args = {key: torch.cat([a, a[-1:].expand(pad, *a.shape[1:])]) for key, a in args.items()}
                out.index_copy_(0, rows[part], fn(**shared, **args)[: chunk - pad])
    return out
