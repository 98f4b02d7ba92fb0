"""The objectives of a study, and the Pareto front of a multi-objective one.

A study maximises one metric (``--objective``: the validation macro AUC, or ``robust_auc``).
``--objectives val_auc_macro:max,latency_ms:min`` makes it multi-objective: the first entry is
the study's objective (maximised), the others are costs of :mod:`tuner.models.cost`
(``latency_ms``, ``latency_ms_b256``, ``params``, ``gflops``; minimised) that every trial
measures on its own device. A multi-objective study needs a multi-objective strategy
(``nsga2``, ``mo-tpe``; :mod:`tuner.study.strategies`). The front of its completed trials
(best objective value over epochs against the costs) is logged on the study run.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from tuner.models.cost import COST_METRICS


@dataclass(frozen=True)
class Objective:
    metric: str
    mode: str  # "max" | "min"

    def __str__(self) -> str:
        return f"{self.metric}:{self.mode}"


def parse_objectives(entries: list[str], primary: str) -> list[Objective]:
    """``["val_auc_macro:max", "latency_ms:min"]`` -> objectives; ValueError naming the bad
    entry and what is allowed. The first must be ``primary`` (the study's objective metric)
    maximised; the others distinct costs."""
    out: list[Objective] = []
    for i, entry in enumerate(entries):
        metric, _, mode = entry.strip().partition(":")
        mode = mode or ("max" if i == 0 else "min")
        if i == 0:
            if (metric, mode) != (primary, "max"):
                raise ValueError(f"objectives[0] {entry!r} not allowed: the first objective is the "
                                 f"study's, {primary}:max (--objective chooses it)")
        elif metric not in COST_METRICS or mode not in ("min", "max"):
            raise ValueError(f"objective {entry!r} not allowed; allowed after {primary}:max: "
                             + ", ".join(f"{m}:min" for m in COST_METRICS))
        out.append(Objective(metric, mode))
    if len({o.metric for o in out}) != len(out):
        raise ValueError(f"objectives {entries} name a metric twice")
    return out


def dominates(a: list[float], b: list[float], modes: list[str]) -> bool:
    """Whether point ``a`` is at least as good as ``b`` in every objective and better in one."""
    better = False
    for x, y, mode in zip(a, b, modes):
        if mode == "min":
            x, y = -x, -y
        if x < y:
            return False
        better = better or x > y
    return better


def pareto_front(points: dict[str, list[float]], modes: list[str]) -> list[str]:
    """Keys of the points no other point dominates, best first in the first objective."""
    front = [k for k, p in points.items()
             if not any(dominates(q, p, modes) for j, q in points.items() if j != k)]
    sign = -1 if modes[0] == "max" else 1
    return sorted(front, key=lambda k: sign * points[k][0])


def write_front(rows: list[dict], objectives: list[Objective], out_dir: Path, family: str
                ) -> tuple[Path, Path]:
    """``<family>.csv`` (every completed trial, ``on_front`` marked) and ``<family>.png`` (the
    first objective against each cost, the front joined) in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [o.metric for o in objectives]
    points = {r["run_id"]: [r[n] for n in names] for r in rows}
    front = set(pareto_front(points, [o.mode for o in objectives])) if points else set()
    csv_path = out_dir / f"{family}.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["trial_id", "run_id", *names, "on_front"])
        writer.writeheader()
        for r in sorted(rows, key=lambda r: -r[names[0]]):
            writer.writerow({"trial_id": r["trial_id"], "run_id": r["run_id"],
                             **{n: r[n] for n in names}, "on_front": r["run_id"] in front})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    costs = names[1:]
    fig, axes = plt.subplots(1, len(costs), figsize=(5 * len(costs), 4), squeeze=False)
    for ax, cost in zip(axes[0], costs):
        ax.scatter([r[cost] for r in rows], [r[names[0]] for r in rows], c="lightgray",
                   edgecolors="gray", label="trial")
        on = sorted((r for r in rows if r["run_id"] in front), key=lambda r: r[cost])
        ax.plot([r[cost] for r in on], [r[names[0]] for r in on], "o-", color="tab:red",
                label="Pareto front")
        ax.set_xlabel(cost)
        ax.set_ylabel(f"best {names[0]}")
        ax.set_title(f"{family}: {names[0]} against {cost}")
        ax.legend()
    fig.tight_layout()
    png_path = out_dir / f"{family}.png"
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return csv_path, png_path
