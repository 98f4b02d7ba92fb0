"""Search efficiency: every single-objective strategy against random search, scored on the test split.

Each strategy of ``lenstune tune --strategy`` (:mod:`tuner.study.strategies`) tunes the same
micro problem (a simulated Model II dataset at 32 px, 2,000 training images a class by
default, one micro family's search space with a longer epoch budget) on the same seeds,
through the project's own hooks (``tuner.study.strategies.search_plan`` and
``tuner.study.search.build_tuner``, what the study driver calls). Per strategy and seed, measured:

- **what it would promote**: promotion takes the trial that completed its epoch budget with
  the highest best validation macro AUC, at its best epoch (``tuner.registry.promotion``);
  that model's macro AUC on the **test split** is the score. The test split is predicted at
  every epoch and reported, but no decision reads it.
- the training **epochs** all its trials spent.

Strategies compare against random search on the same seed (paired), with 95% t intervals over
the seeds, at full budget and at equal epochs: random search and grid search restricted to
their first k trials (trials are independent draws, so the first k recorded are a study of
k trials; curves are recorded in the order the trials first reported) for k = the other
strategy's epochs / the epoch budget, rounded.

The trainable is the study's training loop (``tuner.training.loop``: AdamW, warmup/cosine,
augmentation, the same metrics) reporting ``val_auc_macro`` every epoch, saving a checkpoint
where a scheduler may pause or copy it (PBT), without MLflow logging: that costs wall time but
changes neither the search nor the scores.

    .venv/bin/python bench/search_efficiency.py --out /tmp/se/run.md --curves /tmp/se/run.json.gz
    # runs with other seeds or strategies, summarised together from their saved curves:
    .venv/bin/python bench/search_efficiency.py --pool run1.json.gz run2.json.gz
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe as machine  # noqa: E402  (bench/ is not a package)

REFERENCE = "random"
STRATEGIES = ("asha-tpe", "asha-gp", "hyperband-bohb", "pbt", "pb2", "random", "grid")


def train_config(config: dict[str, Any], *, data: dict[str, Any], family: str, img_size: int,
                 max_epochs: int, seed: int, class_names: list[str],
                 checkpoint_epochs: list[int], ema_decay: float | None = None) -> None:
    """Ray Tune function trainable: train one sampled config, report ``val_auc_macro`` and
    ``test_auc_macro`` per epoch, and a checkpoint at ``checkpoint_epochs``. A restored trial
    (resumed by HyperBand; or a PBT/PB2 exploit: another trial's checkpoint with a perturbed
    config) goes on from it.

    With ``ema_decay``, an exponential moving average of the weights is kept beside them
    (timm's ``ModelEmaV3``, with its warm-up: decay ``1 - (1 + step)^(-2/3)`` up to
    ``ema_decay``), updated after every optimizer step, and its AUCs are reported too
    (``val_auc_ema``, ``test_auc_ema``); the trial trains and is judged as without it. The
    average is not checkpointed: for studies that never restore a trial (random, ASHA)."""
    import ray
    import torch
    from ray import tune

    from tuner import metrics as M
    from tuner.study.search_space import TrainHParams
    from tuner.training import loop
    from tuner.models import io

    torch.set_num_threads(1)
    arrays = {k: (ray.get(v) if isinstance(v, ray.ObjectRef) else v) for k, v in data.items()}
    x_train = torch.from_numpy(np.array(arrays["train_images"]))
    y_train = torch.from_numpy(np.array(arrays["train_labels"]))
    held_out = {split: (torch.from_numpy(np.array(arrays[f"{split}_images"])),
                        np.asarray(arrays[f"{split}_labels"])) for split in ("val", "test")}
    hp = TrainHParams(**config["train"])
    torch.manual_seed(seed)
    model = io.build_network(io.ModelConfig(family=family, img_size=img_size,
                                             class_names=class_names, model=config["model"])).train()
    optimizer = loop.make_optimizer(model, hp)
    steps = loop.steps_per_epoch(len(y_train), int(hp.batch_size))
    scheduler = loop.make_scheduler(optimizer, hp, steps_per_epoch=steps, max_epochs=max_epochs)
    start = 0
    restored = tune.get_checkpoint()
    if restored is not None:  # as tuner.training.trainable restores, with this config's hp
        with restored.as_directory() as folder:
            state = torch.load(Path(folder) / "state.pt", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        optimizer.param_groups[0]["weight_decay"] = float(hp.weight_decay)
        start = int(state["epoch"])
        scheduler.last_epoch = int(state["scheduler_step"])
        for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
            group["lr"] = base * scheduler.lr_lambdas[0](scheduler.last_epoch)
    device = torch.device("cpu")
    average = None
    if ema_decay is not None:
        from timm.utils import ModelEmaV3

        average = ModelEmaV3(model, decay=ema_decay, use_warmup=True)
        step_schedule = scheduler.step

        def step_and_average(*args, **kwargs):  # the loop steps the scheduler once per batch
            step_schedule(*args, **kwargs)
            average.update(model, step=scheduler.last_epoch)

        scheduler.step = step_and_average
    for epoch in range(start + 1, max_epochs + 1):
        loop.train_one_epoch(
            model, x_train, y_train, optimizer=optimizer, scheduler=scheduler, hp=hp,
            device=device, img_size=img_size,
            generator=torch.Generator().manual_seed(seed * 100003 + epoch),
            aug_generator=torch.Generator().manual_seed(seed * 100019 + epoch))
        scores = {f"{split}_auc_macro": M.classification_report(
            io.predict_probs(model, x, img_size, device=device), y, class_names)["auc_macro"]
            for split, (x, y) in held_out.items()}
        if average is not None:
            average.module.eval()
            scores.update({f"{split}_auc_ema": M.classification_report(
                io.predict_probs(average.module, x, img_size, device=device), y,
                class_names)["auc_macro"] for split, (x, y) in held_out.items()})
        values = {**scores, "epoch": epoch}
        if epoch not in checkpoint_epochs or epoch == max_epochs:
            tune.report(values)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "epoch": epoch, "scheduler_step": scheduler.last_epoch},
                       Path(tmp) / "state.pt")
            tune.report(values, checkpoint=tune.Checkpoint.from_directory(tmp))


def bench_space(family: str, args):
    """The family's micro search space with the benchmark's epoch budget and PBT interval."""
    from tuner.study.search_space import load_search_space

    space = load_search_space(family, "micro")
    budget = space.budget.model_copy(update={
        "max_epochs": args.max_epochs, "grace_period": args.grace_period,
        "reduction_factor": args.reduction_factor})
    update = {"budget": budget}
    if space.pbt is not None:
        update["pbt"] = space.pbt.model_copy(update={"perturbation_interval": args.pbt_interval})
    return space.model_copy(update=update)


def run_strategy(name: str, *, seed: int, refs: dict, space, args, class_names: list[str],
                 storage: Path) -> dict[str, Any]:
    """One study; every trial's config and per-epoch val and test AUC, in trial order."""
    from ray import tune

    from tuner.study.search import build_tuner, checkpoint_epochs
    from tuner.study.strategies import get_strategy, search_plan

    strategy = get_strategy(name)
    samples = args.pbt_population if strategy.population else args.configs
    plan = search_plan(strategy, space, samples=samples, max_epochs=args.max_epochs,
                       grid_points=args.grid_points, tpe_told=args.tpe_told)
    checkpoints = checkpoint_epochs(strategy, space, args.max_epochs)
    trainable = tune.with_parameters(
        train_config, data=refs, family=args.family, img_size=space.img_size or 32,
        max_epochs=args.max_epochs, seed=seed, class_names=class_names,
        checkpoint_epochs=checkpoints, ema_decay=args.ema_decay)
    tuner = build_tuner(
        trainable, space.param_space(), plan, name=f"{name}-s{seed}", storage_path=str(storage),
        seed=seed, max_concurrent=args.max_concurrent, cpus_per_trial=1, gpus_per_trial=0,
        verbose=0)
    start = time.perf_counter()
    results = tuner.fit()
    seconds = time.perf_counter() - start
    curves = []
    # In the order the trials first reported (then by name: Ray names trials by random ids).
    def first_report(result) -> tuple:
        df = result.metrics_dataframe
        when = df["timestamp"].min() if df is not None and "timestamp" in df else float("inf")
        return (when, result.path)

    for result in sorted(results, key=first_report):
        df = result.metrics_dataframe
        if result.error is not None or df is None or "val_auc_macro" not in df:
            raise RuntimeError(f"{name} seed {seed}: a trial failed: {result.error}")
        trained = len(df)  # one report per epoch trained, repeats after a PBT exploit included
        df = df.sort_values("epoch", kind="stable").drop_duplicates("epoch", keep="last")
        curve = {"config": result.config, "trained": trained,
                 "epochs": [int(e) for e in df["epoch"]],
                 "val_auc": [float(v) for v in df["val_auc_macro"]],
                 "test_auc": [float(v) for v in df["test_auc_macro"]]}
        if args.ema_decay is not None:
            curve.update(val_ema=[float(v) for v in df["val_auc_ema"]],
                         test_ema=[float(v) for v in df["test_auc_ema"]])
        curves.append(curve)
    return {"method": name, "seed": seed, "seconds": seconds, "max_epochs": args.max_epochs,
            "curves": curves}


def promoted(curves: list[dict], max_epochs: int) -> dict[str, float]:
    """What promotion would take: among the trials that completed ``max_epochs``, the one with
    the highest best val AUC, at its best epoch (the first, on ties); its val and test AUC."""
    best = promoted_trial(curves, max_epochs)
    at = int(np.argmax(best["val_auc"]))
    return {"val_auc": best["val_auc"][at], "test_auc": best["test_auc"][at]}


def best_val_auc(curve: dict) -> float:
    return max(curve["val_auc"])


def promoted_trial(curves: list[dict], max_epochs: int) -> dict:
    """The trial promotion would take: among those that completed ``max_epochs``, the one with
    the highest best val AUC."""
    done = [c for c in curves if c["epochs"] and c["epochs"][-1] == max_epochs]
    if not done:
        raise ValueError("no trial completed its epoch budget: nothing to promote")
    return max(done, key=best_val_auc)


def trial_epochs(curve: dict) -> int:
    """Epochs a trial trained (a PBT trial that copied another's checkpoint trains from the
    copied epoch on: what it trains twice counts twice, what it copied not at all)."""
    return int(curve.get("trained", len(curve["epochs"])))


def summarise(entry: dict, first: int | None = None) -> dict[str, Any]:
    """A study's promoted scores and epochs; ``first``: of its first ``first`` trials only."""
    curves = entry["curves"] if first is None else entry["curves"][:first]
    return {**promoted(curves, entry["max_epochs"]),
            "epochs": sum(trial_epochs(c) for c in curves), "trials": len(curves)}


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and the 95% Student t interval of the mean."""
    from scipy import stats

    n = len(values)
    mean = statistics.mean(values)
    if n < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(0.975, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return mean, mean - half, mean + half


def auc_standard_error(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982) standard error of an ROC AUC from n_pos positives, n_neg negatives."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc))
    return (var / (n_pos * n_neg)) ** 0.5


def auc_noise_line(n_val: int, auc: float = 0.93) -> str:
    per_class = n_val // 3
    se = auc_standard_error(auc, per_class, n_val - per_class)
    return (f"Validation noise: a one-vs-rest AUC of {auc} on {per_class} positives and "
            f"{n_val - per_class} negatives has a standard error of {se:.4f} (Hanley & McNeil "
            "1982); the macro AUC averages three such, correlated.\n")


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(x):
        x = np.asarray(x, dtype=float)
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=float)
        for value in np.unique(x):
            r[x == value] = r[x == value].mean()
        return r
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def summary_tables(entries: list[dict]) -> list[str]:
    """Per strategy, over the seeds: test AUC of what it would promote and epochs, paired
    differences from random search at full budget and at equal epochs, 95% intervals."""
    by = {}
    for e in entries:
        by.setdefault(e["method"], {})[e["seed"]] = e
    if REFERENCE not in by:
        raise SystemExit(f"no {REFERENCE} runs: nothing to compare with")
    ref = by[REFERENCE]
    budget = next(iter(ref.values()))["max_epochs"]
    fmt = lambda m, lo, hi: f"{m:+.4f} [{lo:+.4f}, {hi:+.4f}]"  # noqa: E731
    lines = [
        "| strategy | seeds | test AUC of promoted | its val AUC | epochs | epochs / random "
        "| test AUC - random [95% CI] | test AUC - random at equal epochs [95% CI] "
        "| trials of random at equal epochs |",
        "|---|---:|---:|---:|---:|---:|---|---|---:|"]
    at_equal = {}
    for name in [n for n in STRATEGIES if n in by] + [n for n in by if n not in STRATEGIES]:
        seeds = sorted(s for s in by[name] if s in ref)
        mine = [summarise(by[name][s]) for s in seeds]
        full = [summarise(ref[s]) for s in seeds]
        k = [max(1, min(len(ref[s]["curves"]), round(m["epochs"] / budget)))
             for s, m in zip(seeds, mine)]
        equal = [summarise(ref[s], first=kk) for s, kk in zip(seeds, k)]
        at_equal[name] = (seeds, mine, equal)
        test = statistics.mean(m["test_auc"] for m in mine)
        val = statistics.mean(m["val_auc"] for m in mine)
        epochs = statistics.mean(m["epochs"] for m in mine)
        ratio = epochs / statistics.mean(f["epochs"] for f in full)
        if name == REFERENCE:
            lines.append(f"| {name} | {len(seeds)} | {test:.4f} | {val:.4f} | {epochs:.1f} | 1 "
                         "| | | |")
            continue
        d_full = t_interval([m["test_auc"] - f["test_auc"] for m, f in zip(mine, full)])
        d_equal = t_interval([m["test_auc"] - q["test_auc"] for m, q in zip(mine, equal)])
        lines.append(f"| {name} | {len(seeds)} | {test:.4f} | {val:.4f} | {epochs:.1f} | "
                     f"{ratio:.3f} | {fmt(*d_full)} | {fmt(*d_equal)} | "
                     f"{statistics.mean(k):.1f} |")
    lines += ["", *target_lines(by, ref), "", *equal_epochs_table(by, budget), ""]
    return lines


def target_lines(by: dict, ref: dict) -> list[str]:
    if "asha-tpe" not in by:
        return []
    seeds = sorted(s for s in by["asha-tpe"] if s in ref)
    mine = [summarise(by["asha-tpe"][s]) for s in seeds]
    full = [summarise(ref[s]) for s in seeds]
    mean, lo, hi = t_interval([m["test_auc"] - f["test_auc"] for m, f in zip(mine, full)])
    ratio = statistics.mean(m["epochs"] for m in mine) / statistics.mean(f["epochs"] for f in full)
    auc_met, epochs_met = mean >= -0.005, ratio <= 0.25
    return [f"Target: `asha-tpe` within 0.005 test AUC of random search at <= 1/4 of its epochs. "
            f"Measured over {len(seeds)} seeds: {mean:+.4f} (95% interval {lo:+.4f} to {hi:+.4f}) "
            f"at {ratio:.3f} of the epochs: the AUC half is "
            f"{'met' if auc_met else 'not met'} on the mean"
            f"{' and by the whole interval' if lo >= -0.005 else ', not by the whole interval'}, "
            f"the epoch half {'met' if epochs_met else 'not met'}."]


def equal_epochs_table(by: dict, budget: int) -> list[str]:
    """Every strategy at the epochs of the cheapest early-stopping one: FIFO strategies (random,
    grid) cut to their first k trials; a strategy whose own epochs differ is shown at its own."""
    adaptive = [n for n in by if n not in (REFERENCE, "grid")]
    if not adaptive:
        return []
    seeds = sorted(set.intersection(*(set(by[n]) for n in by)))
    if not seeds:
        return []
    target = {s: statistics.median(summarise(by[n][s])["epochs"] for n in adaptive) for s in seeds}
    rows = {}
    for name in by:
        scores, epochs = [], []
        for s in seeds:
            if name in (REFERENCE, "grid"):
                k = max(1, round(target[s] / budget))
                m = summarise(by[name][s], first=k)
            else:
                m = summarise(by[name][s])
            scores.append(m["test_auc"])
            epochs.append(m["epochs"])
        rows[name] = (scores, epochs)
    ranks = {n: [] for n in rows}
    for i in range(len(seeds)):
        order = sorted(rows, key=lambda n: -rows[n][0][i])
        for r, n in enumerate(order, 1):
            ranks[n].append(r)
    wins = {n: sum(1 for r in ranks[n] if r == 1) for n in rows}
    lines = [f"At equal epochs (the median epochs of {', '.join(adaptive)} per seed, "
             f"{statistics.mean(target.values()):.1f} on average; random and grid cut to "
             "their first trials), over the seeds common to all:", "",
             "| strategy | mean test AUC of promoted | mean epochs | mean rank | seeds won |",
             "|---|---:|---:|---:|---:|"]
    for name in sorted(rows, key=lambda n: statistics.mean(ranks[n])):
        scores, epochs = rows[name]
        lines.append(f"| {name} | {statistics.mean(scores):.4f} | {statistics.mean(epochs):.1f} | "
                     f"{statistics.mean(ranks[name]):.2f} | {wins[name]} of {len(seeds)} |")
    return lines


def per_seed_table(entries: list[dict]) -> list[str]:
    lines = ["| strategy | seed | trials | epochs | promoted: val AUC | test AUC | wall s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for e in sorted(entries, key=lambda e: (e["seed"], e["method"])):
        m = summarise(e)
        lines.append(f"| {e['method']} | {e['seed']} | {m['trials']} | {m['epochs']} | "
                     f"{m['val_auc']:.4f} | {m['test_auc']:.4f} | {e.get('seconds', 0):.0f} |")
    return lines


def render(entries: list[dict], args, argv: list[str], sizes: tuple[int, int, int], load: tuple,
           wall: float) -> str:
    n_train, n_val, n_test = sizes
    lines = [
        "Command: `.venv/bin/python bench/search_efficiency.py " + " ".join(argv) + "`",
        f"Machine: {machine()}, shared with other work; date {date.today()}; "
        f"load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min); "
        f"whole benchmark {wall / 60:.1f} min.",
        f"Problem: simulated `model_ii` at 32 px, {n_train} train, {n_val} val and {n_test} "
        f"test images (a third per class), family `{args.family}` micro search space, "
        f"max {args.max_epochs} epochs per trial; {args.configs} trials per study "
        f"(PBT and PB2: a population of {args.pbt_population}, perturbing every "
        f"{args.pbt_interval} epochs; HyperBand: brackets from max epochs and the reduction "
        f"factor), {args.max_concurrent} trials at a time, 1 thread each; grid "
        f"{args.grid_points} points per numeric range, in a seeded random order.",
        f"ASHA: grace period {args.grace_period} epoch, reduction factor {args.reduction_factor}, "
        f"rank rule (what `lenstune tune` runs); TPE and GP told each trial's "
        f"{'score at the first rung' if args.tpe_told == 'first-rung' else 'last score'}.",
        "Score: the test macro AUC of the model each study would promote (the completed trial "
        "with the highest best val AUC, at its best epoch).",
        *([f"Also recorded: the AUCs of each trial's weights' moving average (timm ModelEmaV3, "
           f"warm-up, decay at most {args.ema_decay}, updated every step); not judged by the "
           "strategies."] if args.ema_decay is not None else []), "",
        auc_noise_line(n_val), "", *summary_sections(entries)]
    return "\n".join(lines) + "\n"


def summary_sections(entries: list[dict]) -> list[str]:
    """The summary's lines after its header, for a run and for ``--pool`` alike."""
    return [*summary_tables(entries), "", rung_correlations(entries), "",
            hyperparameter_correlations(entries), "", where_searched(entries), "",
            replayed_asha_table(entries), "",
            averaged_weights_section(entries), "", "### Per seed", "", *per_seed_table(entries)]


def rung_correlations(entries: list[dict]) -> str:
    """How well a configuration's val AUC after e epochs (1, 2, 4, ... below the budget: where
    a scheduler could decide) predicts its best val AUC, and its best val AUC its test AUC
    there, from random search's full curves (Spearman, per seed)."""
    runs = sorted((e for e in entries if e["method"] == REFERENCE), key=lambda e: e["seed"])
    if not runs:
        return ""
    budget = runs[0]["max_epochs"]
    epochs = [2 ** k for k in range(budget.bit_length()) if 2 ** k < budget]
    parts = []
    for ep in epochs:
        values = [spearman([c["val_auc"][ep - 1] for c in r["curves"]],
                           [best_val_auc(c) for c in r["curves"]]) for r in runs]
        parts.append(f"after {ep} epoch{'s' * (ep > 1)}: "
                     f"{', '.join(f'{v:+.2f}' for v in values)}")
    val_test = [spearman([best_val_auc(c) for c in r["curves"]],
                         [c["test_auc"][int(np.argmax(c["val_auc"]))] for c in r["curves"]])
                for r in runs]
    return ("Rank correlation (Spearman, per seed, random search's trials) between a trial's val "
            "AUC after a rung's epochs and its best val AUC: " + "; ".join(parts)
            + ". Between its best val AUC and its test AUC at that epoch: "
            + ", ".join(f"{v:+.2f}" for v in val_test) + ".")


def hyperparameter_correlations(entries: list[dict], early: tuple[int, ...] = (1, 4)) -> str:
    """What the early rungs reward against what the end rewards: per searched hyperparameter
    with numeric values, the Spearman correlation over random search's trials of its value
    with the val AUC after each of ``early`` epochs and with the best val AUC, averaged over
    the seeds."""
    runs = sorted((e for e in entries if e["method"] == REFERENCE), key=lambda e: e["seed"])
    if not runs:
        return ""
    early = tuple(ep for ep in early if ep < runs[0]["max_epochs"])
    keys = numeric_keys(runs)
    if not keys:
        return ""
    rows = ["| hyperparameter | " + " | ".join(f"vs val AUC after {ep} epoch{'s' * (ep > 1)}"
                                                 for ep in early) + " | vs best val AUC |",
            "|---|" + "---:|" * (len(early) + 1)]
    for part, key in keys:
        cells = [f"{value_correlation(runs, part, key, target):+.2f}"
                 for target in [*(lambda c, ep=ep: c["val_auc"][ep - 1] for ep in early),
                                best_val_auc]]
        rows.append(f"| {part}.{key} | " + " | ".join(cells) + " |")
    return "\n".join([f"What the rungs reward (Spearman over random search's trials, mean of "
                      f"{len(runs)} seeds; higher value, higher AUC when positive):", "", *rows])


def value_correlation(runs: list[dict], part: str, key: str, target) -> float:
    """Mean over ``runs`` (seeds) of the Spearman correlation, over a run's trials, of
    hyperparameter ``part.key`` with ``target(curve)``."""
    return float(np.nanmean([spearman([c["config"][part][key] for c in r["curves"]],
                                      [target(c) for c in r["curves"]]) for r in runs]))


def numeric_keys(runs: list[dict]) -> list[tuple[str, str]]:
    """The searched hyperparameters with numeric values: (part, key) with more than one value
    over the trials of ``runs``."""
    first = runs[0]["curves"][0]["config"]
    return [(part, key) for part in ("train", "model") for key, value in first.get(part, {}).items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
            and len({c["config"][part][key] for r in runs for c in r["curves"]}) > 1]


def where_searched(entries: list[dict], method: str = "asha-tpe") -> str:
    """Where ``method``'s searcher looked, per seed, in the hyperparameter the end rewards most
    (the largest mean Spearman, in size, of its value with the best val AUC over random
    search's trials): the value random search promotes, the value ``method`` promotes, the
    median over the trials the searcher chose after its random start-up, and how many of
    those fell inside the range of random search's best quarter."""
    from tuner.study.search import tpe_startup_trials

    runs = {e["seed"]: e for e in entries if e["method"] == REFERENCE}
    mine = {e["seed"]: e for e in entries if e["method"] == method and e["seed"] in runs}
    if not mine:
        return ""
    keys = numeric_keys(list(runs.values()))
    if not keys:
        return ""
    rho = {(part, key): value_correlation(list(runs.values()), part, key, best_val_auc)
           for part, key in keys}
    part, key = max(keys, key=lambda k: abs(rho[k]))
    value = lambda c: c["config"][part][key]  # noqa: E731

    rows = [f"| seed | {method} - random, test AUC | {key}: random promotes | {method} promotes "
            f"| median of {method}'s modelled trials | of them in random's best quarter |",
            "|---:|---:|---:|---:|---:|---:|"]
    for seed in sorted(mine):
        ref, own = runs[seed], mine[seed]
        budget = ref["max_epochs"]
        ranked = sorted(ref["curves"], key=best_val_auc, reverse=True)
        top = [value(c) for c in ranked[:max(1, len(ranked) // 4)]]
        modelled = own["curves"][tpe_startup_trials(len(own["curves"])):]
        inside = sum(min(top) <= value(c) <= max(top) for c in modelled)
        diff = summarise(own)["test_auc"] - summarise(ref)["test_auc"]
        theirs, ours = (value(promoted_trial(e["curves"], budget)) for e in (ref, own))
        rows.append(f"| {seed} | {diff:+.4f} | {theirs:.3g} | {ours:.3g} | "
                    f"{np.median([value(c) for c in modelled]):.3g} | "
                    f"{inside} of {len(modelled)} |")
    return "\n".join([
        f"Where `{method}` looked, in {part}.{key} (the hyperparameter whose value ranks random "
        f"search's trials' best val AUC most, Spearman {rho[part, key]:+.2f}); modelled "
        "trials: those after the searcher's random start-up, in the order trials first "
        "reported; best quarter: the range of the value over random search's best quarter of "
        "trials by best val AUC:", "", *rows])


REPLAYED = ((1, 4), (1, 3), (2, 4), (2, 2), (4, 4), (4, 2), (8, 4))  # (grace period, rf)


def replay_asha(curves: list[dict], max_epochs: int, grace_period: int,
                reduction_factor: float) -> dict[str, float]:
    """ASHA (the rank rule lenstune runs) replayed on recorded full curves: the trials arrive
    in their order, one at a time, and each goes through the rungs of ``grace_period`` and
    ``reduction_factor`` until a rung's :func:`~tuner.study.asha.rank_cutoff` stops it. What it
    would promote (as :func:`promoted`) and the epochs it would have trained."""
    from tuner.study.asha import rank_cutoff
    from tuner.study.strategies import rung_epochs

    rungs = rung_epochs(max_epochs, grace_period, reduction_factor)
    recorded: dict[int, list[float]] = {r: [] for r in rungs}
    kept, epochs = [], 0
    for curve in curves:
        for rung in rungs:
            score = curve["val_auc"][rung - 1]
            cutoff = rank_cutoff(recorded[rung], reduction_factor)
            recorded[rung].append(score)
            if cutoff is not None and score < cutoff:
                epochs += rung
                break
        else:
            epochs += max_epochs
            kept.append(curve)
    return {**promoted(kept, max_epochs), "epochs": epochs}


def replayed_asha_table(entries: list[dict], schedules=REPLAYED, orders: int = 200) -> str:
    """ASHA's rungs without any searcher: each schedule replayed on random search's recorded
    trials (:func:`replay_asha`), paired per seed with random search's full result. What the
    rungs alone cost, apart from what TPE or GP choose to try. Which trials a rung stops
    depends on the order they arrive in, so each seed's result is the mean over ``orders``
    orders of its trials (the recorded one, then seeded shuffles)."""
    from tuner.study.strategies import rung_epochs

    runs = sorted((e for e in entries if e["method"] == REFERENCE), key=lambda e: e["seed"])
    if not runs:
        return ""
    budget = runs[0]["max_epochs"]
    rows = ["| grace period | reduction factor | rungs (epochs) | epochs / random "
            "| test AUC - random [95% CI] |", "|---:|---:|---|---:|---|"]
    for grace, rf in schedules:
        if grace >= budget:
            continue
        diffs, ratios = [], []
        for run in runs:
            rng = np.random.default_rng(run["seed"])
            full = summarise(run)
            shuffles = [run["curves"]] + [[run["curves"][i] for i in rng.permutation(
                len(run["curves"]))] for _ in range(orders - 1)]
            replays = [replay_asha(curves, budget, grace, rf) for curves in shuffles]
            diffs.append(statistics.mean(a["test_auc"] for a in replays) - full["test_auc"])
            ratios.append(statistics.mean(a["epochs"] for a in replays) / full["epochs"])
        mean, lo, hi = t_interval(diffs)
        rows.append(f"| {grace} | {rf:g} | {', '.join(map(str, rung_epochs(budget, grace, rf)))} "
                    f"| {statistics.mean(ratios):.3f} | {mean:+.4f} [{lo:+.4f}, {hi:+.4f}] |")
    return "\n".join([f"ASHA's rungs replayed on random search's recorded trials ({len(runs)} "
                      f"seeds, each the mean over {orders} orders of its trials; the rank rule, "
                      "trials one at a time, no searcher; the same promotion and score):", "",
                      *rows])


def averaged_weights_section(entries: list[dict]) -> str:
    """Where random search's curves carry the AUCs of their weights' moving average
    (``--ema-decay``): how early those rank trials, and ASHA's rungs replayed on them, the
    average then being what is judged and promoted."""
    runs = [e for e in entries if e["method"] == REFERENCE and e["curves"]
            and all("val_ema" in c for c in e["curves"])]
    if not runs:
        return ""
    averaged = [{**e, "curves": [{**c, "val_auc": c["val_ema"], "test_auc": c["test_ema"]}
                                 for c in e["curves"]]} for e in runs]
    raw = [summarise(e) for e in runs]
    ema = [summarise(e) for e in averaged]
    mean, lo, hi = t_interval([a["test_auc"] - r["test_auc"] for a, r in zip(ema, raw)])
    return "\n".join([
        "With the weights' moving average judged instead of the weights (the same trials):",
        f"random search promotes a model {mean:+.4f} [{lo:+.4f}, {hi:+.4f}] test AUC from the "
        "one it promotes judging the weights.", "",
        rung_correlations(averaged), "", replayed_asha_table(averaged)])


def read_curves(paths: list[Path]) -> list[dict]:
    """Saved ``--curves`` files, together; a strategy and seed in two files is refused."""
    entries, seen = [], set()
    for path in paths:
        text = gzip.open(path, "rt").read() if path.suffix == ".gz" else path.read_text()
        for entry in json.loads(text):
            key = (entry["method"], entry["seed"])
            if key in seen:
                raise SystemExit(f"{path}: {key[0]} seed {key[1]} is in more than one file")
            seen.add(key)
            entries.append(entry)
    return entries


def write_curves(path: Path, entries: list[dict]) -> None:
    text = json.dumps(entries)
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="levit")
    p.add_argument("--n-per-class", type=int, default=2000,
                   help="training images per class (500 makes the data-starved problem of the "
                   "results file's 1,500-image sections)")
    p.add_argument("--val-per-class", type=int, default=250)
    p.add_argument("--test-per-class", type=int, default=250)
    p.add_argument("--configs", type=int, default=24, help="trials per study")
    p.add_argument("--max-epochs", type=int, default=16)
    p.add_argument("--grace-period", type=int, default=1)
    p.add_argument("--reduction-factor", type=float, default=4)
    p.add_argument("--pbt-population", type=int, default=6)
    p.add_argument("--pbt-interval", type=int, default=4)
    p.add_argument("--grid-points", type=int, default=3)
    p.add_argument("--max-concurrent", type=int, default=2)
    p.add_argument("--tpe-told", choices=["last", "first-rung"], default="first-rung")
    p.add_argument("--ema-decay", type=float, help="also record the AUCs of an exponential "
                   "moving average of each trial's weights (at most this decay; random search "
                   "and ASHA only); the summary then replays the rungs on them")
    p.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    p.add_argument("--label", help="name the results '<strategy> (<label>)': a variant (say, "
                   "another grace period) pooled beside the default runs")
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(12)))
    p.add_argument("--data-dir", type=Path, default=Path("runs/bench/data"))
    p.add_argument("--out", type=Path, help="write the markdown results here")
    p.add_argument("--curves", type=Path, help="write every trial's config and per-epoch val "
                   "and test AUC here (.json or .json.gz), after each study")
    p.add_argument("--pool", type=Path, nargs="+", metavar="CURVES",
                   help="run nothing: the summary over these saved --curves files")
    args = p.parse_args(argv)
    if args.pool:
        entries = read_curves(args.pool)
        text = "\n".join([f"Command: `.venv/bin/python bench/search_efficiency.py {' '.join(argv)}`",
                          "", *summary_sections(entries)]) + "\n"
        print(text)
        if args.out:
            args.out.write_text(text)
        return 0
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local, throwaway Ray
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    load = os.getloadavg()
    begin = time.perf_counter()

    import ray

    from tuner.data import load_split
    from tuner.data.simulate import simulate_dataset, split_counts

    root = args.data_dir / (f"model_ii-32px-tr{args.n_per_class}-va{args.val_per_class}"
                            f"-te{args.test_per_class}-s0")
    if not (root / "meta.json").exists():
        counts = split_counts(0, counts=[args.n_per_class, args.val_per_class,
                                         args.test_per_class])
        simulate_dataset(root, "model_ii", counts, seed=0, img_size=32, progress=True)
    arrays, meta = {}, None
    for split in ("train", "val", "test"):
        data = load_split(root, split)
        arrays[f"{split}_images"] = np.ascontiguousarray(data.images.numpy(), dtype=np.float32)
        arrays[f"{split}_labels"] = np.ascontiguousarray(data.labels.numpy(), dtype=np.int64)
        meta = data.meta
    space = bench_space(args.family, args)
    tmp = Path(tempfile.mkdtemp(prefix="ltse", dir="/tmp"))
    ray.init(num_cpus=args.max_concurrent, include_dashboard=False, log_to_driver=False,
             _temp_dir=str(tmp / "ray"))
    entries = []
    try:
        refs = {k: ray.put(v) for k, v in arrays.items()}
        for seed in args.seeds:
            for name in args.strategies:
                entry = run_strategy(name, seed=seed, refs=refs, space=space, args=args,
                                     class_names=list(meta.class_names), storage=tmp / "studies")
                if args.label:
                    entry["method"] = f"{name} ({args.label})"
                entries.append(entry)
                m = summarise(entry)
                print(f"{name:<9} seed {seed}: promoted val AUC {m['val_auc']:.4f}, test AUC "
                      f"{m['test_auc']:.4f}, {m['epochs']} epochs, {entry['seconds']:.0f} s",
                      flush=True)
                if args.curves:
                    write_curves(args.curves, entries)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)  # Ray session and studies of this run
    if REFERENCE not in args.strategies:
        return 0
    sizes = tuple(len(arrays[f"{s}_labels"]) for s in ("train", "val", "test"))
    text = render(entries, args, argv, sizes, load, time.perf_counter() - begin)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
