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
    point_mass_deflection_dense,
    sersic_ellipse_fixed_shape,
    sersic_total_flux,
    shear_deflection,
    sie_deflection,
)


RECOMPILE_LIMIT = 64
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


def _host_deflection(x: Tensor, y: Tensor, preset: Preset) -> tuple[Tensor, Tensor]:
    """SIE + shear deflection (1, P): the host is the same for every image, so once per batch."""
    host = preset.host
    one = [torch.tensor([v], device=x.device, dtype=x.dtype)
           for v in (host_theta_e_arcsec(preset), host.e1, host.e2, 0.0, 0.0, host.gamma1, host.gamma2)]
    ax, ay = sie_deflection(x, y, *one[:5])
    sx, sy = shear_deflection(x, y, *one[5:])
    return ax + sx, ay + sy


@functools.lru_cache(maxsize=8)
def _instrument_constants(p: Preset, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """The tensors every batch of ``p`` shares: ray-shooting grid x, y (1, P) [arcsec], host
    deflection x, y (1, P) [arcsec] and PSF taps (K,), on ``device``; never written to.

    Built on the host and copied once: building them on a GPU per batch would copy host numbers
    (and wait for the GPU) in every batch. Cached like the compiled graphs: pure functions of
    the (frozen) preset, device and dtype.
    """
    inst = p.instrument
    x, y = pixel_grid(inst.num_pix, inst.pixel_scale_arcsec, inst.supersampling, dtype=dtype)
    hx, hy = _host_deflection(x, y, p)
    sigma_px = inst.psf_fwhm_arcsec * FWHM_TO_SIGMA / inst.pixel_scale_arcsec
    taps = gaussian_kernel_1d(sigma_px, inst.psf_truncation_sigma, dtype=dtype)
    return tuple(_to_device(t, device) for t in (x, y, hx, hy, taps))


def source_shape(preset: Preset) -> dict[str, float]:
    """The Sersic shape shared by every image of the preset: amp, r_sersic, n_sersic, e1, e2."""
    src = preset.source
    return dict(amp=source_amplitude(preset), r_sersic=src.r_sersic_arcsec, n_sersic=src.n_sersic,
                e1=src.e1, e2=src.e2)


def lensed_surface_brightness(
    x: Tensor, y: Tensor, host: tuple[Tensor, Tensor], preset: Preset, draws: Draws, labels: Tensor, groups,
) -> Tensor:
    """Source surface brightness seen at the image-plane points (x, y) [arcsec]: (B, P), eagerly.

    ``host``: the host deflection (1, P) each; ``groups`` lists the subhalos per class (empty
    for smooth lenses). Without subhalos the (1, P) ray-traced grid broadcasts against the
    per-image source centres, so no (B, P) deflection is formed.
    """
    hx, hy = host
    if groups:
        ax = hx.expand(labels.shape[0], -1).clone()
        ay = hy.expand(labels.shape[0], -1).clone()
        for rows, theta_e, cx, cy, _ in groups:
            px, py = point_mass_deflection(x, y, theta_e, cx, cy)
            ax.index_add_(0, rows, px)
            ay.index_add_(0, rows, py)
        bx, by = x - ax, y - ay
    else:
        bx, by = x - hx, y - hy
    return sersic_ellipse_fixed_shape(bx, by, draws.source_x, draws.source_y, **source_shape(preset))


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


def render_chunk(
    x, y, host_ax, host_ay, psf_taps, source_x, source_y, exposure_s, normals, bkg, theta_e=None, center_x=None,
    center_y=None, *, shape: tuple[tuple[str, float], ...], static: tuple[tuple[str, object], ...],
) -> Tensor:
    """The whole pipeline for C images of one class, fused by ``torch.compile``: (C, 1, n, n).

    Subhalo deflection (none when ``theta_e`` is None), ray-trace, Sersic, binning, PSF, noise,
    normalisation. Every per-image step is row-wise, so chunks of a batch are independent;
    ``shape`` (the Sersic shape) and ``static`` (observe's fixed settings) are constants of
    the compiled graph.
    """
    bx, by = x - host_ax, y - host_ay
    if theta_e is not None:
        px, py = point_mass_deflection_dense(x, y, theta_e, center_x, center_y)
        bx, by = bx - px, by - py
    sb = sersic_ellipse_fixed_shape(bx, by, source_x, source_y, **dict(shape))
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


def _render_compiled(x, y, host, psf_taps, draws: Draws, bkg: Tensor, smooth_rows: Tensor, groups, shape: dict,
                     static: dict, chunk: int) -> Tensor:
    """Compiled path: the smooth rows and every substructure class in fixed chunks of ``chunk``
    rows (the last one padded by repeating a real row), so each (preset, class, flags) compiles
    once."""
    b = bkg.shape[0]
    n = static["num_pix"]
    out = torch.empty((b, 1, n, n), device=x.device, dtype=x.dtype)
    fn = _compiled_render(tuple(shape.items()), tuple(static.items()), x.device.type == "cuda")
    with _enough_recompiles():
        for rows, *masses in [(smooth_rows,), *[g[:4] for g in groups]]:
            per_row = [draws.source_x[rows], draws.source_y[rows], draws.exposure_s[rows], draws.normals[rows],
                       bkg[rows], *masses]
            for lo in range(0, rows.numel(), chunk):
                part = slice(lo, min(lo + chunk, rows.numel()))
                pad = chunk - (part.stop - part.start)
                args = [a[part] for a in per_row]
                if pad:  # the padding rows' output is dropped
                    args = [torch.cat([a, a[-1:].expand(pad, *a.shape[1:])]) for a in args]
                out.index_copy_(0, rows[part], fn(x, y, *host, psf_taps, *args)[: chunk - pad])
    return out


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

    Returns:
        images (B, 1, H, W) on ``device`` in ``dtype`` (counts/s per pixel unless normalised),
        and per-image parameters, each (B,): label, m_axion_ev (NaN unless axion), n_subhalos,
        subhalo_mass_msun (total), source_x_arcsec, source_y_arcsec, exposure_s,
        theta_e_arcsec, vortex_half_length_arcsec (NaN unless axion), vortex_angle_rad
        (NaN unless axion), background_rms.
    """
    p = get_preset(preset)
    device = torch.device(device)
    labels_host = _check_inputs(labels, generator, device)
    labels = _to_device(labels_host, device)
    inst = p.instrument
    b = labels.shape[0]
    draws = draw_systems(p, b, generator, device=device, dtype=dtype)
    groups = _subhalo_groups(p, draws, labels_host, device)

    x, y, host_ax, host_ay, psf_taps = _instrument_constants(p, device, dtype)
    host = (host_ax, host_ay)
    rendered = groups if substructure else []
    bkg = torch.full((b,), background_rms(p), device=device, dtype=dtype)
    static = dict(num_pix=inst.num_pix, supersampling=inst.supersampling, pixel_area=inst.pixel_scale_arcsec**2,
                  noise=noise, normalize=normalize)
    image = None
    if compiled:
        # rows rendered without point masses: every row unless substructure is drawn
        smooth = labels_host == NO_SUB if rendered else torch.ones_like(labels_host, dtype=torch.bool)
        smooth_rows = _to_device(torch.nonzero(smooth).squeeze(1), device)
        chunk = CUDA_COMPILED_CHUNK if device.type == "cuda" else COMPILED_CHUNK
        try:
            image = _render_compiled(x, y, host, psf_taps, draws, bkg, smooth_rows, rendered, source_shape(p), static,
                                     chunk=chunk)
        except Exception as exc:  # inductor/compiler missing or broken: eager gives the same result
            warnings.warn(f"torch.compile failed ({type(exc).__name__}: {exc}); falling back to eager", stacklevel=2)
    if image is None:
        sb = lensed_surface_brightness(x, y, host, p, draws, labels, rendered)
        image = observe(sb, psf_taps=psf_taps, background_rms=bkg, exposure_s=draws.exposure_s,
                        normals=draws.normals, **static)
    return image, _parameters(p, labels, draws, groups, bkg, substructure)


def _parameters(p: Preset, labels, draws: Draws, groups, bkg: Tensor, substructure: bool) -> dict[str, Tensor]:
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
        "exposure_s": draws.exposure_s,
        "theta_e_arcsec": torch.full((b,), host_theta_e_arcsec(p), **kw),
        "vortex_half_length_arcsec": torch.where(is_axion, half, nan),
        "vortex_angle_rad": torch.where(is_axion, draws.vortex_angle_rad, nan),
        "background_rms": bkg,
    }
