"""Observing conditions: per-image draws of depth, seeing, source brightness and centring.

Real survey images differ from one field to the next in depth (noise), seeing (PSF width),
source brightness and where the lens falls on the pixel grid. :class:`ObservingConditions`
declares ranges for these; :func:`draw_conditions` draws one value of each per image. Every
range defaults to "as the preset", and default conditions draw nothing: a simulation without
conditions is bitwise what it was before they existed.

- ``noise_scale`` s (depth): the noise rms is s times the preset's; the background rms becomes
  s sigma_bkg and the Poisson variance s^2 model/t, i.e. the exposure becomes t/s^2. For a
  sky- and source-dominated image this is an exposure of t/s^2; the limiting magnitude
  changes by +2.5 log10(s) (s = 2: 0.75 mag shallower).
- ``psf_fwhm_scale`` f (seeing): the Gaussian PSF's FWHM is f times the preset's.
- ``source_mag_offset`` dm [mag]: the source's total flux is multiplied by 10^(-0.4 dm)
  (brighter is negative); with an ``amp`` preset (Model I) the amplitude is scaled alike.
- ``subpixel_shift_px`` v [pixels]: the whole scene (lens, subhalos, source) is displaced by
  U(-v, v) pixels along each axis relative to the pixel grid (centring of the cut-out).

Scale ranges are drawn log-uniform, offsets and shifts uniform. A dataset recipe is a YAML file
holding these fields (:meth:`ObservingConditions.from_yaml`); a single number for a range means
that fixed value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator
from torch import Tensor

# Order of the per-image uniform draws, fixed whatever varies (so recipes stay comparable).
DRAW_ORDER: tuple[str, ...] = ("noise_scale", "psf_fwhm_scale", "source_mag_offset", "shift_x_px", "shift_y_px")
# Per-image parameters added to simulate_batch's params when conditions are given.
PARAM_NAMES: tuple[str, ...] = ("noise_scale", "psf_fwhm_arcsec", "source_mag_offset", "shift_x_px", "shift_y_px")


def parse_range(text: str, name: str) -> tuple[float, float]:
    """``"LO,HI"`` or ``"V"`` (fixed) -> (lo, hi); ValueError naming ``name`` and the form allowed."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} {text!r}: expected LO,HI or one number (e.g. 0.5,2 or 2)")
    return (values[0], values[-1])


class ObservingConditions(BaseModel):
    """Ranges of per-image observing conditions; every default means "as the preset".

    ``noise_scale`` and ``psf_fwhm_scale``: (lo, hi) factors > 0, drawn log-uniform.
    ``source_mag_offset``: (lo, hi) magnitudes added to the source, drawn uniform.
    ``subpixel_shift_px``: v >= 0; the scene is shifted by U(-v, v) pixels per axis.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    noise_scale: tuple[float, float] = (1.0, 1.0)
    psf_fwhm_scale: tuple[float, float] = (1.0, 1.0)
    source_mag_offset: tuple[float, float] = (0.0, 0.0)
    subpixel_shift_px: float = 0.0

    @field_validator("noise_scale", "psf_fwhm_scale", "source_mag_offset", mode="before")
    @classmethod
    def _number_is_fixed(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return (value, value)
        if isinstance(value, str):
            return parse_range(value, "range")
        return value

    @model_validator(mode="after")
    def _check_ranges(self) -> ObservingConditions:
        for name in ("noise_scale", "psf_fwhm_scale", "source_mag_offset"):
            lo, hi = getattr(self, name)
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise ValueError(f"{name} {[lo, hi]}: values must be finite")
            if lo > hi:
                raise ValueError(f"{name} {[lo, hi]}: lo must be <= hi")
        for name in ("noise_scale", "psf_fwhm_scale"):
            lo, _ = getattr(self, name)
            if lo <= 0:
                raise ValueError(f"{name} {list(getattr(self, name))}: scale factors must be > 0")
        if not (math.isfinite(self.subpixel_shift_px) and self.subpixel_shift_px >= 0):
            raise ValueError(f"subpixel_shift_px {self.subpixel_shift_px}: must be a finite number >= 0 (pixels)")
        return self

    @classmethod
    def fixed(cls, *, noise_scale: float = 1.0, psf_fwhm_scale: float = 1.0,
              source_mag_offset: float = 0.0) -> ObservingConditions:
        """Conditions that shift every image alike, e.g. ``fixed(noise_scale=2.0)``."""
        return cls(noise_scale=(noise_scale, noise_scale), psf_fwhm_scale=(psf_fwhm_scale, psf_fwhm_scale),
                   source_mag_offset=(source_mag_offset, source_mag_offset))

    @classmethod
    def from_yaml(cls, path: str | Path) -> ObservingConditions:
        """Conditions from a YAML dataset recipe (a mapping of the fields above); ValueError
        naming the file and the problem in one line."""
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise ValueError(f"conditions file {path}: {exc.strerror or exc}") from exc
        except yaml.YAMLError as exc:
            raise ValueError(f"conditions file {path}: not valid YAML ({' '.join(str(exc).split())})") from exc
        return cls.from_mapping(data, where=f"conditions file {path}")

    @classmethod
    def from_mapping(cls, data: Any, *, where: str = "conditions") -> ObservingConditions:
        """Validate a mapping (YAML, meta.json); ValueError in one line naming ``where``."""
        if data is None:
            return cls()
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a mapping of {', '.join(cls.model_fields)}, "
                             f"got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                message = error["msg"].removeprefix("Value error, ")
                loc = ".".join(map(str, error["loc"]))
                problems.append(f"{loc}: {message}" if loc else message)
            unknown = any(error["type"] == "extra_forbidden" for error in exc.errors())
            allowed = f"; allowed fields: {', '.join(cls.model_fields)}" if unknown else ""
            raise ValueError(f"{where}: {'; '.join(problems)}{allowed}") from None

    @property
    def is_default(self) -> bool:
        """True when nothing differs from the preset (simulations draw and record nothing)."""
        return self == ObservingConditions()

    @property
    def varies_psf(self) -> bool:
        """Whether images of one batch can get different PSFs."""
        return self.psf_fwhm_scale[0] != self.psf_fwhm_scale[1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (ranges as lists), as recorded in a dataset's meta.json."""
        return self.model_dump(mode="json")


@dataclass(frozen=True)
class ConditionDraws:
    """Observing conditions of each image of a batch, each (B,) on the simulation device.

    noise_scale (dimensionless), psf_fwhm_scale (x the preset's FWHM), source_mag_offset
    [mag], shift_x_px and shift_y_px [pixels; the scene moves towards +x (columns) / +y (rows)].
    ``uniform_psf``: every image has the PSF scale ``psf_fwhm_scale[0]`` (known on the host, so
    one shared kernel is used); ``shifted``: shifts may be non-zero; ``max_psf_fwhm_scale``:
    an upper bound of the PSF scales (sizes the batched kernel without reading the device).
    """

    noise_scale: Tensor
    psf_fwhm_scale: Tensor
    source_mag_offset: Tensor
    shift_x_px: Tensor
    shift_y_px: Tensor
    uniform_psf: float | None = None
    shifted: bool = True
    max_psf_fwhm_scale: float | None = None

    @classmethod
    def explicit(cls, batch: int, *, noise_scale=1.0, psf_fwhm_scale=1.0, source_mag_offset=0.0, shift_x_px=0.0,
                 shift_y_px=0.0, device="cpu", dtype=torch.float32) -> ConditionDraws:
        """Given (not drawn) conditions: each a number or a (B,) sequence/tensor. Reads the values
        on the host to choose the kernels (meant for tests and for fixed shifts)."""
        def col(v):
            return torch.as_tensor(v, dtype=dtype).expand(batch).clone().to(device)

        values = [col(v) for v in (noise_scale, psf_fwhm_scale, source_mag_offset, shift_x_px, shift_y_px)]
        psf = values[1].cpu()
        shifts = torch.cat([values[3].cpu(), values[4].cpu()])
        return cls(*values, uniform_psf=float(psf[0]) if bool((psf == psf[0]).all()) else None,
                   shifted=bool((shifts != 0).any()), max_psf_fwhm_scale=float(psf.max()))

    def flux_factor(self) -> Tensor:
        """(B,) source flux multiplier 10^(-0.4 dm)."""
        return torch.pow(10.0, -0.4 * self.source_mag_offset)


def _scale(u: Tensor, lo: float, hi: float) -> Tensor:
    """Log-uniform on [lo, hi] from uniforms u; exactly lo when lo == hi."""
    if lo == hi:
        return torch.full_like(u, lo)
    return lo * torch.exp(u * math.log(hi / lo))


def _offset(u: Tensor, lo: float, hi: float) -> Tensor:
    if lo == hi:
        return torch.full_like(u, lo)
    return lo + (hi - lo) * u


def draw_conditions(conditions: ObservingConditions, batch: int, generator: torch.Generator, *, device,
                    dtype) -> ConditionDraws:
    """Draw each image's conditions: one (B, 5) uniform draw in DRAW_ORDER from ``generator``
    (whatever varies), mapped to log-uniform scales and uniform offsets and shifts."""
    u = torch.rand((batch, len(DRAW_ORDER)), generator=generator, device=device, dtype=dtype)
    v = conditions.subpixel_shift_px
    return ConditionDraws(
        noise_scale=_scale(u[:, 0], *conditions.noise_scale),
        psf_fwhm_scale=_scale(u[:, 1], *conditions.psf_fwhm_scale),
        source_mag_offset=_offset(u[:, 2], *conditions.source_mag_offset),
        shift_x_px=_offset(u[:, 3], -v, v),
        shift_y_px=_offset(u[:, 4], -v, v),
        uniform_psf=None if conditions.varies_psf else conditions.psf_fwhm_scale[0],
        shifted=v > 0,
        max_psf_fwhm_scale=conditions.psf_fwhm_scale[1],
    )


def gaussian_taps_batched(sigma_px: Tensor, truncate: float, max_sigma_px: float) -> Tensor:
    """Per-image normalised sampled Gaussians (B, K), K = 2 R + 1 with R the radius of
    ``max_sigma_px``; image b has scipy's radius int(truncate sigma_b + 1/2) and zero taps
    beyond it, so convolving with replicated edges equals scipy's ``gaussian_filter`` of each
    image alone. Formed in float64, returned in ``sigma_px``'s dtype."""
    # a hair wider than the bound: the float32 sigma of the widest image may round up
    radius = int(truncate * max_sigma_px * (1 + 1e-6) + 0.5)
    sigma = sigma_px.double().reshape(-1, 1)
    offsets = torch.arange(-radius, radius + 1, device=sigma_px.device, dtype=torch.float64)
    own = torch.floor(truncate * sigma + 0.5)  # (B, 1) each image's own radius
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2) * (offsets.abs() <= own)
    return (weights / weights.sum(dim=1, keepdim=True)).to(sigma_px.dtype)
