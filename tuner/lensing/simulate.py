"""simulate_batch: draw, ray-trace, observe. Tensors in, tensors out, any device and dtype."""

from __future__ import annotations

import functools
import math
import warnings

import torch
from torch import Tensor

from tuner.lensing.instrument import (
    FWHM_TO_SIGMA,
    add_noise,
    bin_supersampled,
    convolve_separable,
    gaussian_kernel_1d,
    magnitude_to_cps,
    pixel_grid,
    survey_background_rms,
)
from tuner.lensing.populations import (
    AXION,
    CDM,
    Draws,
    axion_point_masses,
    cdm_point_masses,
    draw_systems,
    host_theta_e_arcsec,
)
from tuner.lensing.presets import CLASS_NAMES, Preset, get_preset
from tuner.lensing.profiles import (
    point_mass_deflection,
    point_mass_deflection_dense,
    sersic_ellipse,
    sersic_total_flux,
    shear_deflection,
    sie_deflection,
)


RECOMPILE_LIMIT = 64


def source_amplitude(preset: Preset) -> float:
    """Sersic amplitude (surface brightness at R_sersic, counts/s per arcsec^2) of the preset.

    With a magnitude, amp = 10^(-0.4 (m - zp)) / total_flux(amp=1), as lenstronomy's
    ``SimAPI.magnitude2amplitude``.
    """
    src = preset.source
    if src.amp is not None:
        return src.amp
    zp = preset.instrument.zero_point_mag
    if src.magnitude is None or zp is None:
        raise ValueError(f"preset {preset.name!r}: source needs amp, or magnitude and a zero point")
    unit = sersic_total_flux(
        torch.tensor(1.0, dtype=torch.float64),
        torch.tensor(src.r_sersic_arcsec, dtype=torch.float64),
        torch.tensor(src.n_sersic, dtype=torch.float64),
    )
    return magnitude_to_cps(src.magnitude, zp) / float(unit)


def background_rms(preset: Preset) -> float:
    """Gaussian background rms per pixel in image units (counts/s)."""
    inst = preset.instrument
    if inst.noise_model == "background_poisson":
        return float(inst.background_rms)
    return survey_background_rms(
        read_noise_e=inst.read_noise_e, exposure_s=inst.exposure_s, num_exposures=inst.num_exposures,
        sky_mag=inst.sky_mag_per_arcsec2, zero_point=inst.zero_point_mag, pixel_scale=inst.pixel_scale_arcsec,
    )


def _subhalo_groups(preset: Preset, draws: Draws, labels: Tensor) -> list[tuple[Tensor, Tensor, Tensor, Tensor, Tensor]]:
    """Per substructure class: (rows, theta_E, x, y, mass); each class keeps its own fixed N."""
    groups = []
    for cls, make in ((CDM, cdm_point_masses), (AXION, axion_point_masses)):
        rows = torch.nonzero(labels == cls).squeeze(1)
        if rows.numel():
            groups.append((rows, *make(preset, draws, rows)))
    return groups


def _host_deflection(x: Tensor, y: Tensor, preset: Preset) -> tuple[Tensor, Tensor]:
    """SIE + shear deflection (1, P): the host is the same for every image, so once per batch."""
    host = preset.host
    one = [torch.tensor([v], device=x.device, dtype=x.dtype)
           for v in (host_theta_e_arcsec(preset), host.e1, host.e2, 0.0, 0.0, host.gamma1, host.gamma2)]
    ax, ay = sie_deflection(x, y, *one[:5])
    sx, sy = shear_deflection(x, y, *one[5:])
    return ax + sx, ay + sy


def _source_params(preset: Preset, draws: Draws, rows: Tensor | slice) -> list[Tensor]:
    """Sersic arguments (amp, R, n, e1, e2, x, y) for ``rows``, each (R,)."""
    src, cx = preset.source, draws.source_x[rows]
    consts = [torch.full_like(cx, v) for v in
              (source_amplitude(preset), src.r_sersic_arcsec, src.n_sersic, src.e1, src.e2)]
    return [*consts, cx, draws.source_y[rows]]


def trace_and_shade(x, y, host_ax, host_ay, theta_e, center_x, center_y, *source) -> Tensor:
    """Fused hot step for ``torch.compile``: subhalo deflection, ray-trace, Sersic. (C, P)."""
    px, py = point_mass_deflection_dense(x, y, theta_e, center_x, center_y)
    return sersic_ellipse(x - host_ax - px, y - host_ay - py, *source)


def _enough_recompiles():
    """Scoped dynamo setting: one static graph per (grid size, point-mass count, dtype, device)
    is intended; dynamo's default limit (8) would silently fall back to eager, which for the
    dense point-mass form materialises (C, P, N) and is many times slower."""
    return torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT)


@functools.lru_cache(maxsize=1)
def _compiled_trace_and_shade():
    return torch.compile(trace_and_shade, dynamic=False)


def _shade_compiled(x, y, hx, hy, preset: Preset, draws: Draws, labels: Tensor, groups, chunk: int) -> Tensor:
    """Compiled path: every class in fixed chunks of ``chunk`` rows (the last one padded), so
    each (preset, class) compiles once; smooth lenses carry one zero point mass."""
    b = labels.shape[0]
    out = torch.empty((b, x.shape[1]), device=x.device, dtype=x.dtype)
    in_group = torch.zeros(b, dtype=torch.bool, device=labels.device)
    for rows, *_ in groups:
        in_group[rows] = True
    smooth_rows = torch.nonzero(~in_group).squeeze(1)
    zeros = torch.zeros((smooth_rows.numel(), 1), device=x.device, dtype=x.dtype)
    fn = _compiled_trace_and_shade()
    with _enough_recompiles():
        for rows, theta_e, cx, cy, _ in [(smooth_rows, zeros, zeros, zeros, None), *groups]:
            source = _source_params(preset, draws, rows)
            for lo in range(0, rows.numel(), chunk):
                part = slice(lo, min(lo + chunk, rows.numel()))
                pad = chunk - (part.stop - part.start)
                args = [theta_e[part], cx[part], cy[part]] + [s[part] for s in source]
                if pad:  # repeat the last row to a full chunk; the padding rows' output is dropped
                    args = [torch.cat([a, a[-1:].expand(pad, *a.shape[1:])]) for a in args]
                out.index_copy_(0, rows[part], fn(x, y, hx, hy, *args)[: chunk - pad])
    return out


def lensed_surface_brightness(
    x: Tensor, y: Tensor, preset: Preset, draws: Draws, labels: Tensor, groups, *, compiled: bool = False,
    chunk: int = 16,
) -> Tensor:
    """Source surface brightness seen at the image-plane points (x, y) [arcsec]: (B, P).

    ``groups`` lists the subhalos per class (empty for a smooth lens). ``compiled`` runs the
    fused step under ``torch.compile``; if compilation fails it warns and runs eagerly.
    """
    hx, hy = _host_deflection(x, y, preset)
    if compiled:
        try:
            return _shade_compiled(x, y, hx, hy, preset, draws, labels, groups, chunk)
        except Exception as exc:  # inductor/compiler missing or broken: eager gives the same result
            warnings.warn(f"torch.compile failed ({type(exc).__name__}: {exc}); falling back to eager", stacklevel=3)
    ax = hx.expand(labels.shape[0], -1).clone()
    ay = hy.expand(labels.shape[0], -1).clone()
    for rows, theta_e, cx, cy, _ in groups:
        px, py = point_mass_deflection(x, y, theta_e, cx, cy)
        ax.index_add_(0, rows, px)
        ay.index_add_(0, rows, py)
    return sersic_ellipse(x - ax, y - ay, *_source_params(preset, draws, slice(None)))


def observe(
    sb: Tensor, *, num_pix: int, supersampling: int, pixel_area: float, psf_taps: Tensor,
    background_rms: Tensor, exposure_s: Tensor, normals: Tensor, noise: bool, normalize: bool,
) -> Tensor:
    """The instrument: (B, P) sub-pixel surface brightness -> (B, 1, n, n) observed image.

    Bins the supersampled grid (times the pixel area [arcsec^2]: flux per pixel), convolves
    with the separable PSF ``psf_taps`` (K,), optionally adds noise and min-max normalises.
    """
    image = bin_supersampled(sb, num_pix, supersampling) * pixel_area
    image = convolve_separable(image, psf_taps)
    if noise:
        image = add_noise(image, background_rms=background_rms, exposure_s=exposure_s, normals=normals)
    if normalize:
        lo = image.amin(dim=(1, 2, 3), keepdim=True)
        hi = image.amax(dim=(1, 2, 3), keepdim=True)
        image = (image - lo) / (hi - lo).clamp(min=torch.finfo(image.dtype).tiny)
    return image


@functools.lru_cache(maxsize=1)
def _compiled_observe():
    return torch.compile(observe)


def _check_inputs(labels: Tensor, generator: torch.Generator, device: torch.device) -> None:
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.dtype != torch.int64:
        raise ValueError(f"labels must be a 1-D int64 tensor, got {getattr(labels, 'dtype', type(labels))} "
                         f"of shape {tuple(getattr(labels, 'shape', ()))}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(CLASS_NAMES)):
        raise ValueError(f"labels must be in 0..{len(CLASS_NAMES) - 1} ({', '.join(CLASS_NAMES)}), "
                         f"got values {sorted(set(labels.tolist()))}")
    if generator.device.type != device.type:
        raise ValueError(f"generator lives on {generator.device}, but device is {device}: "
                         "create it with torch.Generator(device=device)")


def simulate_batch(
    preset: str | Preset,
    labels: Tensor,
    *,
    generator: torch.Generator,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    substructure: bool = True,
    noise: bool = True,
    normalize: bool = True,
    compiled: bool = False,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Simulate one lensing image per label.

    Args:
        preset: preset name ("model_i", "model_ii", "model_iii") or a Preset.
        labels: (B,) int64 class indices into CLASS_NAMES.
        generator: torch.Generator on ``device``; the only source of randomness.
        substructure: False renders the same systems without subhalos/vortex (same draws).
        noise: False returns the noise-free model (same draws consumed).
        normalize: min-max normalise each image to [0, 1] (DeepLense convention).
        compiled: run the ray-tracing + source step under ``torch.compile`` (several times
            faster for large batches; the first call per preset and class compiles for
            seconds; falls back to eager with a warning if compilation fails).

    Returns:
        images (B, 1, H, W) on ``device`` in ``dtype`` (counts/s per pixel unless normalised),
        and per-image parameters, each (B,): label, m_axion_ev (NaN unless axion), n_subhalos,
        subhalo_mass_msun (total), source_x_arcsec, source_y_arcsec, exposure_s,
        theta_e_arcsec, vortex_half_length_arcsec (NaN unless axion), vortex_angle_rad
        (NaN unless axion), background_rms.
    """
    p = get_preset(preset)
    device = torch.device(device)
    _check_inputs(labels, generator, device)
    labels = labels.to(device)
    inst = p.instrument
    b = labels.shape[0]
    draws = draw_systems(p, b, generator, device=device, dtype=dtype)
    groups = _subhalo_groups(p, draws, labels)

    x, y = pixel_grid(inst.num_pix, inst.pixel_scale_arcsec, inst.supersampling, device=device, dtype=dtype)
    sb = lensed_surface_brightness(x, y, p, draws, labels, groups if substructure else [], compiled=compiled)
    bkg = torch.full((b,), background_rms(p), device=device, dtype=dtype)
    sigma_px = inst.psf_fwhm_arcsec * FWHM_TO_SIGMA / inst.pixel_scale_arcsec
    kwargs = dict(num_pix=inst.num_pix, supersampling=inst.supersampling, pixel_area=inst.pixel_scale_arcsec**2,
                  psf_taps=gaussian_kernel_1d(sigma_px, inst.psf_truncation_sigma, device=device, dtype=dtype),
                  background_rms=bkg,
                  exposure_s=draws.exposure_s, normals=draws.normals, noise=noise, normalize=normalize)
    image = None
    if compiled:
        try:
            with _enough_recompiles():
                image = _compiled_observe()(sb, **kwargs)
        except Exception as exc:  # see lensed_surface_brightness
            warnings.warn(f"torch.compile failed ({type(exc).__name__}: {exc}); falling back to eager", stacklevel=2)
    if image is None:
        image = observe(sb, **kwargs)
    return image, _parameters(p, labels, draws, groups, bkg, substructure)


def _parameters(p: Preset, labels, draws: Draws, groups, bkg: Tensor, substructure: bool) -> dict[str, Tensor]:
    b = labels.shape[0]
    kw = dict(device=labels.device, dtype=draws.source_x.dtype)
    n_sub = torch.zeros(b, device=labels.device, dtype=torch.int64)
    m_sub = torch.zeros(b, **kw)
    if substructure:
        for rows, theta_e, _, _, mass in groups:
            n_sub[rows] = theta_e.shape[1]
            m_sub[rows] = mass.sum(dim=1)
    is_axion = labels == AXION
    nan = torch.full((b,), math.nan, **kw)
    half = p.axion.length_coeff_arcsec * 1e-22 / draws.m_axion_ev
    return {
        "label": labels.clone(),
        "m_axion_ev": torch.where(is_axion, draws.m_axion_ev, nan),
        "n_subhalos": n_sub,
        "subhalo_mass_msun": m_sub,
        "source_x_arcsec": draws.source_x,
        "source_y_arcsec": draws.source_y,
        "exposure_s": draws.exposure_s,
        "theta_e_arcsec": torch.full((b,), host_theta_e_arcsec(p), **kw),
        "vortex_half_length_arcsec": torch.where(is_axion, half, nan),
        "vortex_angle_rad": torch.where(is_axion, draws.vortex_angle_rad, nan),
        "background_rms": bkg,
    }
