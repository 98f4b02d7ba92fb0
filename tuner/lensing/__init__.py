"""Batched torch strong-lensing simulator reproducing the DeepLense datasets (Models I-III).

Physics by role: ``cosmology`` (distances, Einstein radii), ``profiles`` (deflections,
source light), ``instrument`` (grid, PSF, noise), ``populations`` (class draws),
``presets`` (surveys), ``conditions`` (per-image observing conditions), ``simulate``
(``simulate_batch``).
"""

from tuner.lensing.conditions import ObservingConditions
from tuner.lensing.presets import CLASS_NAMES, PRESETS, Preset, get_preset
from tuner.lensing.simulate import simulate_batch

__all__ = ["CLASS_NAMES", "PRESETS", "ObservingConditions", "Preset", "get_preset", "simulate_batch"]
