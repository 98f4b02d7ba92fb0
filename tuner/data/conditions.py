"""Observing conditions of a simulated dataset: how they are recorded in ``meta.json`` and read
back (``tuner.lensing.conditions.ObservingConditions``; see docs/physics.md).

A dataset made with default conditions (the preset's fixed values) records none: its arrays,
digests and ``meta.json`` are what they were before conditions existed.
"""

from __future__ import annotations

from typing import Any

from tuner.data.store import DatasetError, DatasetMeta
from tuner.lensing.conditions import ObservingConditions


def normalise_conditions(conditions: ObservingConditions | dict | None) -> ObservingConditions | None:
    """None for "as the preset" (None or default conditions), else the validated conditions;
    a mapping (a recipe, a meta.json entry) is validated. DatasetError naming the problem."""
    if conditions is None:
        return None
    if isinstance(conditions, dict):
        try:
            conditions = ObservingConditions.from_mapping(conditions)
        except ValueError as exc:
            raise DatasetError(str(exc)) from None
    if not isinstance(conditions, ObservingConditions):
        raise DatasetError(f"conditions must be ObservingConditions, a mapping or None, got {type(conditions).__name__}")
    return None if conditions.is_default else conditions


def recorded_conditions(conditions: ObservingConditions | None) -> dict[str, Any] | None:
    """What ``meta.json`` records: None for default conditions, else their JSON form."""
    conditions = normalise_conditions(conditions)
    return None if conditions is None else conditions.to_dict()


def conditions_of(meta: DatasetMeta) -> ObservingConditions:
    """The conditions a dataset was simulated with (default when it records none)."""
    try:
        return ObservingConditions.from_mapping(meta.conditions, where="meta.json conditions")
    except ValueError as exc:
        raise DatasetError(str(exc)) from None
