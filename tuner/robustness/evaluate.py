"""How a model holds when the telescope changes: its macro AUC, accuracy and ECE on a dataset's
test split and on every set of the split's shift suite (:mod:`tuner.robustness.shifts`: the
same lens systems seen with more or less noise, another seeing, a brighter or fainter source,
another instrument), plus any DeepLense-format folders the user names.

Every number goes through :func:`tuner.registry.evaluation.evaluate`, the function promotion
uses, so a model's in-distribution row here is its promotion test evaluation. ``lenstune
robustness`` and promotion (for a study on ``robust_auc``, or with a shift floor) call
:func:`evaluate_shifts`; :func:`write_robustness` draws the table and the plot (macro AUC
against shift severity).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from tuner.tracking import schema

BASE = "in_distribution"  # the row of the split itself


class ShiftResult(BaseModel):
    """One evaluation set: its name, what kind of change (noise, psf, magnitude, instrument,
    folder, or none for the split itself), how strong (the factor or offset; None where it has
    no scale) and the model's metrics there."""

    model_config = ConfigDict(frozen=True)

    name: str
    kind: str
    severity: float | None
    auc_macro: float
    acc: float
    ece: float
    n_images: int


class RobustnessReport(BaseModel):
    """A model's rows on the in-distribution split and on each shift."""

    model_config = ConfigDict(frozen=True)

    base: ShiftResult
    shifts: tuple[ShiftResult, ...]

    def worst(self) -> ShiftResult:
        """The shift where the macro AUC is lowest."""
        return min(self.shifts, key=lambda r: r.auc_macro)

    def score(self, reduce: str) -> float:
        """The mean or the worst macro AUC over the shifts (``reduce`` = mean | worst)."""
        from tuner.training.validation import robust_score

        return robust_score([r.auc_macro for r in self.shifts], reduce)

    def metrics(self, split: str = "test") -> dict[str, float]:
        """Flat MLflow metrics: ``test_auc_macro.<shift>`` (and acc, ece) per shift, and
        ``test_robust_auc_mean`` / ``test_robust_auc_worst`` over them."""
        out = {}
        for row in self.shifts:
            out[schema.shift_auc_of(row.name, split)] = row.auc_macro
            out[f"{split}_acc.{row.name}"] = row.acc
            out[f"{split}_ece.{row.name}"] = row.ece
        out[f"{split}_robust_auc_mean"] = self.score("mean")
        out[f"{split}_robust_auc_worst"] = self.score("worst")
        return out


def _row(model, config, split, name: str, kind: str, severity: float | None,
         what: str) -> ShiftResult:
    from tuner.registry.evaluation import evaluate

    evaluation, _ = evaluate(model, config, split, what)
    return ShiftResult(name=name, kind=kind, severity=severity, auc_macro=evaluation.auc_macro,
                       acc=evaluation.acc, ece=evaluation.ece, n_images=evaluation.n_images)


def evaluate_shifts(model, config, data_root: Path, *, split: str = "test",
                    names: Sequence[str] | None = None, folders: Sequence[Path] = (),
                    n_per_class: int | None = None, what: str = "the model",
                    progress=None) -> RobustnessReport:
    """``model`` (built from ``config``) on ``data_root``'s ``split`` and its shift suite.

    ``names``: which shifts (default: every one of :data:`tuner.robustness.shifts.SHIFTS`);
    simulated once into the dataset's ``shifts/<split>/`` and reused. ``folders``: DeepLense-
    format folders to add as shifts of their own; ``n_per_class`` caps each simulated set (at
    most the split's images per class). A dataset that was not simulated has no
    simulated shifts: then only ``folders`` are evaluated (ValueError when there are none).
    ``progress(name)`` is called before each set."""
    from tuner.data import load_split
    from tuner.robustness.shifts import (SHIFTS, applicable_shifts, ensure_shift_suite,
                                         load_deeplense_shift, load_shift)

    base_split = load_split(data_root, split)
    base = _row(model, config, base_split, BASE, "none", None, what)
    rows = []
    preset = base_split.meta.preset
    chosen = list(names) if names is not None else (applicable_shifts(preset) if preset else [])
    if chosen:
        if n_per_class is not None:  # at most what the split holds
            n_per_class = min(n_per_class, *base_split.meta.counts[split].values())
        suite = ensure_shift_suite(data_root, split=split, names=chosen, n_per_class=n_per_class)
        for name in chosen:
            if progress:
                progress(name)
            shift = SHIFTS[name]
            rows.append(_row(model, config, load_shift(suite[name]), name, shift.kind,
                             shift.severity, f"{what} on shift {name}"))
    for folder in folders:
        folder = Path(folder)
        if progress:
            progress(folder.name)
        rows.append(_row(model, config, load_deeplense_shift(folder), folder.name, "folder", None,
                         f"{what} on {folder}"))
    if not rows:
        raise ValueError(f"{data_root} was not simulated, so it has no shift suite; name "
                         "DeepLense-format folders to evaluate on (--shift-data)")
    return RobustnessReport(base=base, shifts=tuple(rows))


def write_robustness(folder: Path, report: RobustnessReport, title: str) -> Path:
    """``robustness.json``, ``robustness.csv`` and ``robustness.png`` (macro AUC against the
    severity of each kind of shift, the in-distribution AUC as a line) into ``folder``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "robustness.json").write_text(report.model_dump_json(indent=2))
    rows = [report.base, *report.shifts]
    lines = ["name,kind,severity,auc_macro,acc,ece,n_images"] + [
        f"{r.name},{r.kind},{'' if r.severity is None else r.severity},{r.auc_macro:.6f},"
        f"{r.acc:.6f},{r.ece:.6f},{r.n_images}" for r in rows]
    (folder / "robustness.csv").write_text("\n".join(lines) + "\n")

    kinds = [k for k in dict.fromkeys(r.kind for r in report.shifts)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.6 * len(kinds), 3.4), squeeze=False)
    neutral = {"noise": 1.0, "psf": 1.0, "magnitude": 0.0}  # where the split itself sits
    for ax, kind in zip(axes[0], kinds):
        mine = [r for r in report.shifts if r.kind == kind]
        ax.axhline(report.base.auc_macro, color="k", ls=":", lw=1, label="in distribution")
        if all(r.severity is not None for r in mine) and kind in neutral:
            points = sorted([(r.severity, r.auc_macro) for r in mine]
                            + [(neutral[kind], report.base.auc_macro)])
            ax.plot([p[0] for p in points], [p[1] for p in points], "o-")
            ax.set_xlabel({"noise": "noise rms factor", "psf": "PSF FWHM factor",
                           "magnitude": "source magnitude offset"}[kind])
            if kind == "noise":
                ax.set_xscale("log", base=2)
        else:
            ax.bar(range(len(mine)), [r.auc_macro for r in mine])
            ax.set_xticks(range(len(mine)), [r.name for r in mine], rotation=20, fontsize=7)
        ax.set_ylim(0.4, 1.0)
        ax.set_title(kind)
        ax.set_ylabel("macro AUC")
    axes[0][0].legend(loc="lower left", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(folder / "robustness.png", dpi=100)
    plt.close(fig)
    return folder


def format_robustness(report: RobustnessReport) -> str:
    """The table as text: one line per set, with the change from the in-distribution AUC."""
    header = f"{'set':<22} {'kind':<10} {'macro AUC':>9} {'change':>8} {'acc':>6} {'ECE':>6} {'images':>7}"
    out = [header, "-" * len(header)]
    for row in (report.base, *report.shifts):
        change = row.auc_macro - report.base.auc_macro
        out.append(f"{row.name:<22} {row.kind:<10} {row.auc_macro:>9.4f} {change:>+8.4f} "
                   f"{row.acc:>6.3f} {row.ece:>6.3f} {row.n_images:>7}")
    worst = report.worst()
    out.append(f"mean over shifts {report.score('mean'):.4f}; worst {worst.auc_macro:.4f} "
               f"({worst.name})")
    return "\n".join(out)


def floor_problem(report: RobustnessReport, floor: float | None, what: str) -> str | None:
    """Why ``what`` is refused by the shift ``floor`` (its worst-shift macro AUC below it), or
    None when it holds (or there is no floor)."""
    if floor is None:
        return None
    worst = report.worst()
    if worst.auc_macro >= floor:
        return None
    return (f"{what} falls to macro AUC {worst.auc_macro:.4f} on shift {worst.name} (in "
            f"distribution {report.base.auc_macro:.4f}), below the shift floor {floor:g}")

