"""Robustness to observing conditions: the shift suite, fixed seeded evaluation sets of a
dataset's own systems observed under other conditions (more or less noise, other seeing, a
brighter or fainter source, another telescope), plus any DeepLense-format folders a user names.

``tuner.robustness.shifts``: ``SHIFTS`` (the definitions), ``ensure_shift_suite`` (simulate and
store them once beside a dataset), ``load_shift``, ``load_deeplense_shift``, ``load_shift_suite``.
Nothing is imported or simulated until those are used. See docs/data.md.
"""
