"""Simulation presets: DeepLense Model I, Model II (Euclid-like) and Model III (HST-like).

A preset is a frozen pydantic model holding every number of one simulated survey: cosmology,
host lens, source, substructure populations and instrument. See docs/physics.md for the
sources of the numbers and the choices made for Model III.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

CLASS_NAMES: tuple[str, str, str] = ("no_sub", "cdm", "axion")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Cosmology(_Frozen):
    """Flat Lambda-CDM and redshifts; ``distance_convention`` picks how theta_E is computed."""

    h0: float = 70.0
    om0: float = 0.3
    ob0: float = 0.05  # recorded for completeness; distances do not depend on it
    z_lens: float = 0.5
    z_source: float = 1.0
    distance_convention: Literal["deeplense_luminosity", "angular_diameter"] = "deeplense_luminosity"


class HostLens(_Frozen):
    """Host SIE (mass sets theta_E through the point-mass formula) plus external shear."""

    mass_msun: float = 1e12
    e1: float = 0.1
    e2: float = 0.0
    gamma1: float = 0.05
    gamma2: float = 0.0


class Source(_Frozen):
    """Elliptical Sersic source; brightness either ``amp`` (surface brightness at R_sersic,
    image units per arcsec^2) or ``magnitude`` (total, through the instrument zero point)."""

    r_sersic_arcsec: float = 0.25
    n_sersic: float = 1.0
    e1: float = -0.1
    e2: float = 0.1
    center_range_arcsec: float = 0.35  # centre uniform in [-range, range] on each axis
    amp: float | None = None
    magnitude: float | None = None


class CDMPopulation(_Frozen):
    """Point-mass subhalos with p(m) ~ m^slope on [m_min, m_max], radius uniform, angle uniform."""

    n_subhalos: int = 25
    mass_min_msun: float = 1e6
    mass_max_msun: float = 1e10
    slope: float = -0.9
    r_min_arcsec: float = 0.25
    r_max_arcsec: float = 2.0


class AxionVortex(_Frozen):
    """A line of ``n_points`` equal point masses through the centre, random orientation;
    half-length = length_coeff_arcsec * (1e-22 eV / m_a), m_a log-uniform."""

    total_mass_msun: float = 3e10
    n_points: int = 100
    log10_m_axion_min_ev: float = -24.0
    log10_m_axion_max_ev: float = -22.0
    length_coeff_arcsec: float = 0.03


class Instrument(_Frozen):
    """Pixel grid, Gaussian PSF and noise model.

    ``noise_model="background_poisson"``: Gaussian background of rms ``background_rms`` plus
    Poisson noise of the model counts over ``exposure_s`` (Model I). ``"survey"``: background
    from sky brightness and read noise over ``num_exposures`` x ``exposure_s``, Poisson noise
    of the source, counts from ``zero_point`` (lenstronomy's SimAPI conventions in e- units:
    images stay in e-/s, so ``gain_e_per_adu`` is recorded but never applied; it would only
    rescale ADU images, which min-max normalisation removes anyway).
    """

    num_pix: int
    pixel_scale_arcsec: float
    psf_fwhm_arcsec: float
    psf_truncation_sigma: float = 5.0
    supersampling: int = Field(1, ge=1)
    noise_model: Literal["background_poisson", "survey"]
    background_rms: float | None = None
    log10_exposure_range_s: tuple[float, float] | None = None  # exposure 10^U(lo, hi) s
    exposure_s: float | None = None
    num_exposures: int = 1
    sky_mag_per_arcsec2: float | None = None
    zero_point_mag: float | None = None
    read_noise_e: float | None = None
    gain_e_per_adu: float | None = None


class Preset(_Frozen):
    """Everything needed to simulate one DeepLense-like dataset."""

    name: str
    description: str
    cosmology: Cosmology = Cosmology()
    host: HostLens = HostLens()
    source: Source
    cdm: CDMPopulation = CDMPopulation()
    axion: AxionVortex = AxionVortex()
    instrument: Instrument

    @property
    def image_size(self) -> int:
        return self.instrument.num_pix


MODEL_I = Preset(
    name="model_i",
    description="DeepLense Model I: 150 px, 0.05\"/px, Gaussian PSF 0.087\", background rms 0.01, "
    "Poisson noise over 10^U(3,3.5) s",
    source=Source(amp=20.0),
    instrument=Instrument(
        num_pix=150,
        pixel_scale_arcsec=0.05,
        psf_fwhm_arcsec=0.087,
        psf_truncation_sigma=3.0,
        noise_model="background_poisson",
        background_rms=0.01,
        log10_exposure_range_s=(3.0, 3.5),
    ),
)

MODEL_II = Preset(
    name="model_ii",
    description="DeepLense Model II: 64 px Euclid VIS (lenstronomy 1.9.2 numbers), source mag 20",
    source=Source(magnitude=20.0),
    instrument=Instrument(
        num_pix=64,
        pixel_scale_arcsec=0.101,
        psf_fwhm_arcsec=0.16,
        noise_model="survey",
        exposure_s=565.0,
        num_exposures=4,
        sky_mag_per_arcsec2=22.35,
        zero_point_mag=24.0,
        read_noise_e=4.2,
        gain_e_per_adu=3.1,
    ),
)

MODEL_III = Preset(
    name="model_iii",
    description="Model III: 64 px HST WFC3/F160W-like (lenstronomy's HST numbers), source mag 20, "
    "supersampling 2",
    source=Source(magnitude=20.0),
    instrument=Instrument(
        num_pix=64,
        pixel_scale_arcsec=0.08,
        psf_fwhm_arcsec=0.08,
        supersampling=2,  # the PSF FWHM equals one pixel: sample the lensed source finer
        noise_model="survey",
        exposure_s=5400.0,
        num_exposures=1,
        sky_mag_per_arcsec2=22.3,
        zero_point_mag=25.96,
        read_noise_e=4.0,
        gain_e_per_adu=2.5,
    ),
)

PRESETS: dict[str, Preset] = {p.name: p for p in (MODEL_I, MODEL_II, MODEL_III)}


def get_preset(name: str | Preset) -> Preset:
    """The preset called ``name`` (a Preset passes through); ValueError names the allowed ones."""
    if isinstance(name, Preset):
        return name
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown preset {name!r}; allowed: {', '.join(PRESETS)}") from None


def with_instrument(base: str | Preset, donor: str | Preset) -> Preset:
    """``base``'s lens systems seen through ``donor``'s telescope on ``base``'s pixel grid.

    The donor's PSF, supersampling, noise model (exposure, sky, zero point, read noise, gain)
    and source brightness (a magnitude needs the donor's zero point) on the base's image size
    and pixel scale. The draws of a batch depend only on the image size and the base's
    populations, so the same seed renders the same systems as ``base`` does: another
    telescope, same sky. Named ``<base>@<donor>``.
    """
    base, donor = get_preset(base), get_preset(donor)
    grid = dict(num_pix=base.instrument.num_pix, pixel_scale_arcsec=base.instrument.pixel_scale_arcsec)
    source = base.source.model_copy(update=dict(amp=donor.source.amp, magnitude=donor.source.magnitude))
    return base.model_copy(update=dict(
        name=f"{base.name}@{donor.name}",
        description=f"{base.name}'s systems seen by {donor.name}'s instrument on {base.name}'s pixel grid",
        source=source,
        instrument=donor.instrument.model_copy(update=grid),
    ))
