"""simulate_batch: draw, ray-trace, observe. Tensors in, tensors out, any device and dtype.

On CUDA a call queues its kernels without waiting for the GPU: class rows are found from the
labels on the host, host numbers reach the device through page-locked memory with
``non_blocking=True``, and the block-independent tensors (grid, host deflection, PSF) are built
once per preset, device and dtype. So a caller can queue the next batch, or copy the last one
back, while the GPU works.
"""

from __future__ import annotations

import functools
import math
import warnings

import torch
from torch import Tensor

from tuner.lensing.compiled import render_compiled
from tuner.lensing.conditions import ConditionDraws, ObservingConditions, draw_conditions, gaussian_taps_batched
from tuner.lensing.instrument import (
    FWHM_TO_SIGMA,
    gaussian_kernel_1d,
    magnitude_to_cps,
    observe,
    pixel_grid,
    survey_background_rms,
)
from tuner.lensing.populations import (
    AXION,
    CDM,
    NO_SUB,
    Draws,
    axion_point_masses,
    cdm_point_masses,
    draw_systems,
    host_theta_e_arcsec,
)
from tuner.lensing.presets import CLASS_NAMES, Preset, get_preset
from tuner.lensing.profiles import (
    point_mass_deflection,
    sersic_ellipse_fixed_shape,
    sersic_total_flux,
    shear_deflection,
    sie_deflection,
)


COMPILED_CHUNK = 16  # images per compiled call on the CPU: (16, P) temporaries stay in cache at 150 px
# On CUDA every compiled call costs tens of microseconds of host time (guards, launches) for
# little GPU work at 16 images, so chunks are larger there; the padding of each class to whole
# chunks (up to 255 wasted rows per class) is cheap GPU work. Not tuned on a GPU yet.
CUDA_COMPILED_CHUNK = 256


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


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    """Move a host tensor to ``device``; to CUDA through page-locked memory with
    ``non_blocking=True``, since a copy from pageable memory waits for all queued GPU work."""
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _subhalo_groups(
    preset: Preset, draws: Draws, labels_host: Tensor, device: torch.device,
) -> list[tuple[Tensor, Tensor, Tensor, Tensor, Tensor]]:
    """Per substructure class: (rows, theta_E, x, y, mass); each class keeps its own fixed N.

    Rows are found on the host (``labels_host`` on the CPU): ``nonzero`` on a GPU tensor would
    wait for the GPU to learn the number of rows.
    """
    groups = []
    for cls, make in ((CDM, cdm_point_masses), (AXION, axion_point_masses)):
        rows = torch.nonzero(labels_host == cls).squeeze(1)
        if rows.numel():
            rows = _to_device(rows, device)
            groups.append((rows, *make(preset, draws, rows)))
    return groups


def _host_parameters(preset: Preset, device, dtype) -> list[Tensor]:
    """theta_E [arcsec], e1, e2, centre x, y [arcsec], gamma1, gamma2 of the host, each (1,)."""
    host = preset.host
    return [torch.tensor([v], device=device, dtype=dtype)
            for v in (host_theta_e_arcsec(preset), host.e1, host.e2, 0.0, 0.0, host.gamma1, host.gamma2)]


def _host_deflection(x: Tensor, y: Tensor, params: list[Tensor]) -> tuple[Tensor, Tensor]:
    """SIE + shear deflection [arcsec] at (x, y) ((1, P): the host is the same for every image,
    so once per batch; (B, P) for shifted scenes) from :func:`_host_parameters`."""
    ax, ay = sie_deflection(x, y, *params[:5])
    sx, sy = shear_deflection(x, y, *params[5:])
    return ax + sx, ay + sy


@functools.lru_cache(maxsize=8)
def _instrument_constants(p: Preset, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """The tensors every batch of ``p`` shares: ray-shooting grid x, y (1, P) [arcsec], host
    deflection x, y (1, P) [arcsec], PSF taps (K,) and the host parameters (7 x (1,)), on
    ``device``; never written to.

    Built on the host and copied once: building them on a GPU per batch would copy host numbers
    (and wait for the GPU) in every batch. Cached like the compiled graphs: pure functions of
    the (frozen) preset, device and dtype.
    """
    inst = p.instrument
    x, y = pixel_grid(inst.num_pix, inst.pixel_scale_arcsec, inst.supersampling, dtype=dtype)
    params = _host_parameters(p, "cpu", dtype)
    hx, hy = _host_deflection(x, y, params)
    taps = gaussian_kernel_1d(psf_sigma_px(p), inst.psf_truncation_sigma, dtype=dtype)
    return tuple(_to_device(t, device) for t in (x, y, hx, hy, taps, *params))


def psf_sigma_px(p: Preset, fwhm_scale: float = 1.0) -> float:
    """The preset's Gaussian PSF sigma in pixels, its FWHM scaled by ``fwhm_scale``."""
    inst = p.instrument
    return inst.psf_fwhm_arcsec * fwhm_scale * FWHM_TO_SIGMA / inst.pixel_scale_arcsec


@functools.lru_cache(maxsize=32)
def _scaled_psf_taps(p: Preset, fwhm_scale: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Shared PSF taps (K,) for a FWHM ``fwhm_scale`` times the preset's (fixed seeing)."""
    taps = gaussian_kernel_1d(psf_sigma_px(p, fwhm_scale), p.instrument.psf_truncation_sigma, dtype=dtype)
    return _to_device(taps, device)


def source_shape(preset: Preset) -> dict[str, float]:
    """The Sersic shape shared by every image of the preset: amp, r_sersic, n_sersic, e1, e2."""
    src = preset.source
    return dict(amp=source_amplitude(preset), r_sersic=src.r_sersic_arcsec, n_sersic=src.n_sersic,
                e1=src.e1, e2=src.e2)


def lensed_surface_brightness(
    x: Tensor, y: Tensor, host: tuple[Tensor, Tensor], preset: Preset, draws: Draws, labels: Tensor, groups,
) -> Tensor:
    """Source surface brightness seen at the image-plane points (x, y) [arcsec]: (B, P), eagerly.

    ``x``, ``y``: (1, P), or (B, P) per image (shifted scenes); ``host``: the host deflection there; ``groups`` lists the subhalos per class (empty
    for smooth lenses). Without subhalos the (1, P) ray-traced grid broadcasts against the
    per-image source centres, so no (B, P) deflection is formed.
    """
    hx, hy = host
    if groups:
        ax = hx.expand(labels.shape[0], -1).clone()
        ay = hy.expand(labels.shape[0], -1).clone()
        for rows, theta_e, cx, cy, _ in groups:
            xr, yr = (x, y) if x.shape[0] == 1 else (x[rows], y[rows])  # (B, P): shifted scenes
            px, py = point_mass_deflection(xr, yr, theta_e, cx, cy)
            ax.index_add_(0, rows, px)
            ay.index_add_(0, rows, py)
        bx, by = x - ax, y - ay
    else:
        bx, by = x - hx, y - hy
    return sersic_ellipse_fixed_shape(bx, by, draws.source_x, draws.source_y, **source_shape(preset))


def _check_inputs(labels: Tensor, generator: torch.Generator, device: torch.device) -> Tensor:
    """Validate the arguments; returns the labels on the host (a copy only if they were not)."""
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.dtype != torch.int64:
        raise ValueError(f"labels must be a 1-D int64 tensor, got {getattr(labels, 'dtype', type(labels))} "
                         f"of shape {tuple(getattr(labels, 'shape', ()))}")
    labels = labels.cpu()
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(CLASS_NAMES)):
        raise ValueError(f"labels must be in 0..{len(CLASS_NAMES) - 1} ({', '.join(CLASS_NAMES)}), "
                         f"got values {sorted(set(labels.tolist()))}")
    if generator.device.type != device.type:
        raise ValueError(f"generator lives on {generator.device}, but device is {device}: "
                         "create it with torch.Generator(device=device)")
    return labels


def _condition_draws(conditions, p: Preset, b: int, generator, device, dtype) -> ConditionDraws | None:
    """The batch's per-image conditions (drawn after every other draw), or None for default
    conditions (nothing drawn: today's images and random stream)."""
    if conditions is None:
        return None
    if isinstance(conditions, ConditionDraws):
        if any(t.shape != (b,) for t in (conditions.noise_scale, conditions.psf_fwhm_scale,
                                          conditions.source_mag_offset, conditions.shift_x_px, conditions.shift_y_px)):
            raise ValueError(f"condition draws must each have shape ({b},), one per label")
        return conditions
    if not isinstance(conditions, ObservingConditions):
        raise ValueError(f"conditions must be ObservingConditions or ConditionDraws, got {type(conditions).__name__}")
    if conditions.is_default:
        return None
    half = p.instrument.num_pix / 2
    if conditions.subpixel_shift_px >= half:
        raise ValueError(f"subpixel_shift_px {conditions.subpixel_shift_px} moves the lens out of preset "
                         f"{p.name!r}'s {p.instrument.num_pix} px image; allowed: 0 <= shift < {half:g} px")
    return draw_conditions(conditions, b, generator, device=device, dtype=dtype)


def _observed_with(cond: ConditionDraws, p: Preset, frame: dict[str, Tensor], host_params: list[Tensor],
                   noise: dict[str, Tensor]) -> Tensor:
    """Apply per-image conditions: updates ``frame`` (grid, host deflection and PSF taps become
    per image where they vary) and ``noise`` (background rms x s, exposure / s^2); returns the
    (B,) source flux factor."""
    inst = p.instrument
    s = cond.noise_scale
    noise["bkg"] = noise["bkg"] * s
    noise["exposure_s"] = noise["exposure_s"] / (s * s)
    if cond.uniform_psf is None:
        sigma = cond.psf_fwhm_scale.double() * psf_sigma_px(p)
        bound = psf_sigma_px(p, cond.max_psf_fwhm_scale or float(cond.psf_fwhm_scale.max()))
        frame["psf_taps"] = gaussian_taps_batched(sigma, inst.psf_truncation_sigma, bound).to(s.dtype)
    elif cond.uniform_psf != 1.0:
        frame["psf_taps"] = _scaled_psf_taps(p, cond.uniform_psf, s.device, s.dtype)
    if cond.shifted:  # the scene moves by (shift_x, shift_y) px: evaluate it at x - shift
        frame["x"] = frame["x"] - cond.shift_x_px.reshape(-1, 1) * inst.pixel_scale_arcsec
        frame["y"] = frame["y"] - cond.shift_y_px.reshape(-1, 1) * inst.pixel_scale_arcsec
        frame["host_ax"], frame["host_ay"] = _host_deflection(frame["x"], frame["y"], host_params)
    return cond.flux_factor()


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
    conditions: ObservingConditions | ConditionDraws | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Simulate one lensing image per label.

    Args:
        preset: preset name ("model_i", "model_ii", "model_iii") or a Preset.
        labels: (B,) int64 class indices into CLASS_NAMES. Read on the host to group rows by
            class: pass them on the CPU, or a CUDA call waits for the GPU to copy them back.
        generator: torch.Generator on ``device``; the only source of randomness.
        substructure: False renders the same systems without subhalos/vortex (same draws).
        noise: False returns the noise-free model (same draws consumed).
        normalize: min-max normalise each image to [0, 1] (DeepLense convention).
        compiled: run the whole per-image pipeline (ray-tracing, source, PSF, noise,
            normalisation) under ``torch.compile`` in fixed chunks (several times faster for
            large batches; the first call per preset, class and flags compiles for seconds;
            falls back to eager with a warning if compilation fails). Same draws either way.
        conditions: per-image observing conditions (``tuner.lensing.conditions``). None or
            default ObservingConditions: the preset's own, nothing drawn (bitwise the images,
            params and random stream without them). ObservingConditions with ranges: one draw
            per image after all other draws, so the same seed gives the same systems, only
            observed differently. ConditionDraws: given per-image values, nothing drawn.

    Returns:
        images (B, 1, H, W) on ``device`` in ``dtype`` (counts/s per pixel unless normalised),
        and per-image parameters, each (B,): label, m_axion_ev (NaN unless axion), n_subhalos,
        subhalo_mass_msun (total), source_x_arcsec, source_y_arcsec, exposure_s,
        theta_e_arcsec, vortex_half_length_arcsec (NaN unless axion), vortex_angle_rad
        (NaN unless axion), background_rms; with conditions also noise_scale,
        psf_fwhm_arcsec, source_mag_offset, shift_x_px, shift_y_px (exposure_s and
        background_rms then describe the noise added: exposure / s^2, rms x s).
    """
    p = get_preset(preset)
    device = torch.device(device)
    labels_host = _check_inputs(labels, generator, device)
    labels = _to_device(labels_host, device)
    inst = p.instrument
    b = labels.shape[0]
    draws = draw_systems(p, b, generator, device=device, dtype=dtype)
    cond = _condition_draws(conditions, p, b, generator, device, dtype)
    groups = _subhalo_groups(p, draws, labels_host, device)

    x, y, host_ax, host_ay, psf_taps, *host_params = _instrument_constants(p, device, dtype)
    frame = dict(x=x, y=y, host_ax=host_ax, host_ay=host_ay, psf_taps=psf_taps)
    per_noise = dict(bkg=torch.full((b,), background_rms(p), device=device, dtype=dtype), exposure_s=draws.exposure_s)
    flux = None if cond is None else _observed_with(cond, p, frame, host_params, per_noise)
    rendered = groups if substructure else []
    static = dict(num_pix=inst.num_pix, supersampling=inst.supersampling, pixel_area=inst.pixel_scale_arcsec**2,
                  noise=noise, normalize=normalize)
    image = None
    if compiled:
        # rows rendered without point masses: every row unless substructure is drawn
        smooth = labels_host == NO_SUB if rendered else torch.ones_like(labels_host, dtype=torch.bool)
        smooth_rows = _to_device(torch.nonzero(smooth).squeeze(1), device)
        chunk = CUDA_COMPILED_CHUNK if device.type == "cuda" else COMPILED_CHUNK
        # grid, host deflection and PSF are shared, or per image when conditions vary them
        shared = {k: v for k, v in frame.items() if (v.ndim == 1 if k == "psf_taps" else v.shape[0] == 1)}
        per_image = {k: v for k, v in frame.items() if k not in shared}
        per_image.update(source_x=draws.source_x, source_y=draws.source_y, normals=draws.normals, **per_noise)
        if flux is not None:
            per_image["flux_scale"] = flux
        try:
            image = render_compiled(shared, per_image, smooth_rows, rendered, source_shape(p), static, chunk=chunk)
        except Exception as exc:  # inductor/compiler missing or broken: eager gives the same result
            warnings.warn(f"torch.compile failed ({type(exc).__name__}: {exc}); falling back to eager", stacklevel=2)
    if image is None:
        sb = lensed_surface_brightness(frame["x"], frame["y"], (frame["host_ax"], frame["host_ay"]), p, draws,
                                       labels, rendered)
        if flux is not None:
            sb = sb * flux.reshape(-1, 1)
        image = observe(sb, psf_taps=frame["psf_taps"], background_rms=per_noise["bkg"],
                        exposure_s=per_noise["exposure_s"], normals=draws.normals, **static)
    params = _parameters(p, labels, draws, groups, per_noise, substructure)
    if cond is not None:
        params.update(noise_scale=cond.noise_scale, psf_fwhm_arcsec=cond.psf_fwhm_scale * inst.psf_fwhm_arcsec,
                      source_mag_offset=cond.source_mag_offset, shift_x_px=cond.shift_x_px,
                      shift_y_px=cond.shift_y_px)
    return image, params


def _parameters(p: Preset, labels, draws: Draws, groups, per_noise: dict[str, Tensor],
                substructure: bool) -> dict[str, Tensor]:
    b = labels.shape[0]
    kw = dict(device=labels.device, dtype=draws.source_x.dtype)
    n_sub = torch.zeros(b, device=labels.device, dtype=torch.int64)
    m_sub = torch.zeros(b, **kw)
    if substructure:
        for rows, theta_e, _, _, mass in groups:
            n_sub.index_fill_(0, rows, theta_e.shape[1])  # a scalar argument: no host-to-GPU copy
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
        "exposure_s": per_noise["exposure_s"],
        "theta_e_arcsec": torch.full((b,), host_theta_e_arcsec(p), **kw),
        "vortex_half_length_arcsec": torch.where(is_axion, half, nan),
        "vortex_angle_rad": torch.where(is_axion, draws.vortex_angle_rad, nan),
        "background_rms": per_noise["bkg"],
    }
