"""Every uncertainty method on one micro problem, on this CPU, with shifted test sets.

Problem ``lensing`` (default): simulated Model II lensing images at 32 px (no_sub / cdm / axion).
A micro LeViT (the ``levit`` micro profile's architecture, ~53k parameters, drop_rate 0.2) is
trained on Model II; deep-ensemble members are the same network trained with other seeds;
the hyper-ensemble pool holds networks whose hyperparameters are drawn from the micro search
space. Shifted sets: (a) Model III (HST-like instrument) at 32 px, (b) the Model II test images
with extra Gaussian noise of standard deviation ``--noise-sigma`` added to the [0, 1]-normalised
images and then min-max normalised again per image (as every stored image is).

Problem ``synthetic``: the older 16 px three-blob task with MLPs (noise rms 0.5, shift 2.5).

"plain" (softmax of model 0) is the reference: ratios of NLL and ECE are against it, measured in
the same run.

    .venv/bin/python bench/uncertainty.py [--problem lensing|synthetic] [--out bench/results/uncertainty.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe as machine  # noqa: E402  (bench/ is not a package)

from tuner import metrics
from tuner.uncertainty.conformal import ConformalConfig
from tuner.uncertainty.predictive import Deterministic
from tuner.uncertainty.report import evaluate, fit_method

# ---- synthetic problem (16 px blobs) -----------------------------------------------------------
SIZE, CENTRES = 16, ((4, 4), (4, 11), (11, 8))


def make_blob_split(n: int, noise: float, seed: int) -> SimpleNamespace:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    cy, cx = (torch.tensor(CENTRES, dtype=torch.float32)[labels] + 1.5 * torch.randn(n, 2, generator=g)).unbind(1)
    blob = torch.exp(-((yy[None] - cy[:, None, None]) ** 2 + (xx[None] - cx[:, None, None]) ** 2) / 8.0)
    return SimpleNamespace(images=(blob + noise * torch.randn(n, SIZE, SIZE, generator=g))[:, None], labels=labels)


def train_mlp(train, seed: int, steps: int = 300) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(SIZE * SIZE, 64), nn.ReLU(), nn.Dropout(0.3),
                          nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(train.labels), (128,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(train.images[idx]), train.labels[idx]).backward()
        opt.step()
    return model.eval()


def synthetic_problem(args) -> dict:
    train, val = make_blob_split(3000, 0.5, 1), make_blob_split(1500, 0.5, 2)
    test, shift = make_blob_split(3000, 0.5, 3), make_blob_split(3000, 2.5, 4)
    t0 = time.perf_counter()
    models = [train_mlp(train, s) for s in range(args.members)]
    return dict(
        train=train, val=val, test=test, shifts={"noisy": shift}, models=models, hyper_pool=models,
        class_names=["a", "b", "c"], train_seconds=time.perf_counter() - t0,
        description=(
            "Problem: 16 px, three classes (blob position), noise rms 0.5; shift `noisy`: same task with "
            "noise rms 2.5 (train 3000, val 1500, test 3000, shift 3000 images). "
            f"{args.members} MLPs with dropout 0.3, ~18k parameters each, different seeds; the hyper-ensemble "
            "picks among the same MLPs."),
    )


# ---- lensing problem (Model II at 32 px) ------------------------------------------------------
LEVIT_MICRO = dict(embed_dim=[32, 48], num_heads=[2, 3], depth=[1, 1], key_dim=8, stem_stride=8, drop_rate=0.2)
LEVIT_TRAIN = dict(lr=2e-3, weight_decay=0.01, warmup_epochs=0, batch_size=32, label_smoothing=0.0,
                   aug_rotation=True, aug_flip=True, aug_strength=0.5)


def in_memory(split) -> SimpleNamespace:
    """A stored split as plain in-memory tensors (the store's are memory-mapped)."""
    return SimpleNamespace(images=split.images.clone(), labels=split.labels.clone())


def add_noise(split, sigma: float, seed: int) -> SimpleNamespace:
    """Images + N(0, sigma^2) per pixel on the [0, 1] scale, then min-max normalised per image."""
    g = torch.Generator().manual_seed(seed)
    x = split.images + sigma * torch.randn(split.images.shape, generator=g)
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    return SimpleNamespace(images=(x - lo) / (hi - lo).clamp_min(1e-12), labels=split.labels.clone())


def train_family(family: str, model_kw: dict, train_kw: dict, train, *, epochs: int, seed: int) -> nn.Module:
    """Train one network of ``family`` at 32 px with the project's training loop (CPU)."""
    from tuner.models import build_model
    from tuner.study.search_space import TrainHParams
    from tuner.training.loop import train_epochs

    torch.manual_seed(seed)
    model = build_model(family, img_size=32, **model_kw)
    return train_epochs(model, train.images, train.labels, TrainHParams(**train_kw), epochs=epochs,
                        seed=seed, img_size=32)


def lensing_problem(args) -> dict:
    from tuner.data import ensure_simulated, load_split
    from tuner.lensing import CLASS_NAMES
    from tuner.study.search_space import load_search_space

    root = Path(args.data_root)
    t0 = time.perf_counter()
    ii = ensure_simulated(root / f"model_ii-32px-n{args.n_per_class}-s0", "model_ii", args.n_per_class, seed=0, img_size=32)
    n_iii = args.n_per_class // 2
    iii = ensure_simulated(root / f"model_iii-32px-n{n_iii}-s1", "model_iii", n_iii, seed=1, img_size=32)
    sim_seconds = time.perf_counter() - t0
    train, val, test = (in_memory(load_split(ii, s)) for s in ("train", "val", "test"))
    shift_iii = in_memory(load_split(iii, "test"))
    noisy = {f"noisy_ii_s{sigma:g}": add_noise(test, sigma, seed=123) for sigma in args.noise_sigma}
    # intrinsic noise: std of the 4x4 corner pixels (background) of the normalised test images
    corner_std = float(test.images[:, :, :4, :4].std())
    t0 = time.perf_counter()
    models = [train_family("levit", LEVIT_MICRO, LEVIT_TRAIN, train, epochs=args.epochs, seed=s) for s in range(args.members)]
    space = load_search_space("levit", "micro")
    hyper_extra = []
    for s in range(args.hyper_extra):
        cfg = space.sample(seed=100 + s)
        cfg["model"]["drop_rate"] = max(float(cfg["model"]["drop_rate"]), 0.05)
        hyper_extra.append(train_family("levit", cfg["model"], {**LEVIT_TRAIN, **cfg["train"]}, train,
                                        epochs=args.epochs, seed=100 + s))
    n_params = sum(p.numel() for p in models[0].parameters())
    return dict(
        train=train, val=val, test=test, shifts={"model_iii": shift_iii, **noisy},
        models=models, hyper_pool=[models[0], *hyper_extra], class_names=list(CLASS_NAMES),
        train_seconds=time.perf_counter() - t0,
        description=(
            f"Problem: simulated Model II lensing images, 32 px (`ensure_simulated(..., 'model_ii', {args.n_per_class}, "
            f"seed=0, img_size=32)`: train {len(train.labels)}, val {len(val.labels)}, test {len(test.labels)} images; "
            f"simulation {sim_seconds:.0f} s in this run, datasets under `--data-root` are reused). Shift sets: `model_iii` = test split of a Model III "
            f"dataset at 32 px (`n_per_class={n_iii}, seed=1`, {len(shift_iii.labels)} images); "
            f"`noisy_ii_s<sigma>` = the Model II test images + Gaussian noise with sigma "
            f"{' or '.join(f'{x:g}' for x in args.noise_sigma)} on the [0, 1]-normalised images, then min-max "
            f"normalised again per image ({len(test.labels)} images each; the 4x4 background corners of the "
            f"unshifted test images have std {corner_std:.4f}). Models: micro LeViT ({n_params} parameters, {LEVIT_MICRO}), "
            f"AdamW {LEVIT_TRAIN}, {args.epochs} epochs; deep ensemble = {args.members} seeds of it; "
            f"hyper-ensemble pool = model 0 + {args.hyper_extra} LeViTs with hyperparameters drawn from "
            "the `levit` micro search space (seeds 100..), greedy on validation NLL."),
    )


# ---- table ------------------------------------------------------------------------------------
def _f(m: dict, key: str, fmt: str = ".4f") -> str:
    v = m.get(key)
    return "-" if v is None or not np.isfinite(v) else format(v, fmt)


def run_methods(problem: dict, args) -> list[tuple[str, dict]]:
    runs = [("plain", "plain", {}), ("temperature", "temperature", {}),
            ("mc_dropout (T=20)", "mc_dropout", {"mc_samples": 20}), (f"ensemble (M={args.members})", "ensemble", {}),
            ("hyper_ensemble", "hyper_ensemble", {"hyper_k": 5}),
            ("laplace (full)", "laplace", {"laplace_structure": "full"}),
            ("laplace (kron)", "laplace", {"laplace_structure": "kron"}),
            ("conformal APS", "conformal", {"conformal": ConformalConfig(score="aps", alpha=0.1)}),
            ("conformal RAPS", "conformal", {"conformal": ConformalConfig(score="raps", alpha=0.1)})]
    rows = []
    # the ensemble's members one by one: is the ensemble better calibrated than each of them?
    member_ece = []
    for member in problem["models"]:
        probs = Deterministic(member).predict(problem["test"].images).probs.double().numpy()
        member_ece.append(metrics.ece(probs, problem["test"].labels.numpy()))
    problem["member_ece"] = member_ece
    for label, name, kw in runs:
        models = problem["hyper_pool"] if name == "hyper_ensemble" else problem["models"]
        fitted = fit_method(name, models, problem["val"], train=problem["train"], **kw)
        m = evaluate(fitted, problem["test"], problem["shifts"], class_names=problem["class_names"])["metrics"]
        if name == "plain":  # does the shift spread the predictions or collapse them onto one class?
            for sname, split in problem["shifts"].items():
                top = fitted.method.predict(split.images).probs.argmax(1)
                counts = torch.bincount(top, minlength=len(problem["class_names"])) / len(top)
                m[f"{sname}/pred_share"] = ", ".join(f"{c} {v:.2f}" for c, v in zip(problem["class_names"], counts.tolist()))
        rows.append((label, m))
        print(f"{label}: acc {m['acc']:.4f} nll {m['nll']:.4f} ece {m['ece']:.4f}", flush=True)
    return rows


def tables(rows: list[tuple[str, dict]], shifts: list[str], n_test: int) -> list[str]:
    base = rows[0][1]
    lines = [
        "In-distribution (test split of the training distribution):",
        "",
        f"| method | acc | AUC macro | NLL | ECE | AURC | NLL/plain | ECE/plain | mean entropy | fwd passes/img | fit s | predict s ({n_test} img) | conformal cov / size |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, m in rows:
        conf = f"{m['conformal_coverage']:.3f} / {m['conformal_set_size']:.2f}" if "conformal_coverage" in m else "-"
        lines.append(
            f"| {label} | {_f(m, 'acc')} | {_f(m, 'auc_macro')} | {_f(m, 'nll')} | {_f(m, 'ece')} | {_f(m, 'aurc')} | "
            f"{m['nll'] / base['nll']:.2f} | {m['ece'] / base['ece']:.2f} | {_f(m, 'mean_entropy')} | "
            f"{m['forward_passes_per_image']:.0f} | {m['fit_seconds']:.2f} | {m['predict_seconds']:.2f} | {conf} |")
    for s in shifts:
        lines += [
            "",
            f"Shift set `{s}` (OOD: shifted images positive against the in-distribution test images; "
            "entropy ratio = mean entropy on the shift set / in-distribution):",
            "",
            "| method | acc | NLL | ECE | mean entropy | entropy ratio | mean MI | OOD AUROC max-prob | OOD AUROC entropy | OOD AUROC MI | FPR95 max-prob | FPR95 entropy | FPR95 MI | conformal cov / size |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for label, m in rows:
            p = f"{s}/"
            conf = (f"{m[p + 'conformal_coverage']:.3f} / {m[p + 'conformal_set_size']:.2f}"
                    if p + "conformal_coverage" in m else "-")
            has_mi = p + "ood_auroc_mutual_info" in m
            lines.append(
                f"| {label} | {_f(m, p + 'acc')} | {_f(m, p + 'nll')} | {_f(m, p + 'ece')} | {_f(m, p + 'mean_entropy')} | "
                f"{m[p + 'mean_entropy'] / m['mean_entropy']:.2f} | {_f(m, p + 'mean_mutual_info') if has_mi else '-'} | "
                f"{_f(m, p + 'ood_auroc_max_prob')} | {_f(m, p + 'ood_auroc_entropy')} | {_f(m, p + 'ood_auroc_mutual_info')} | "
                f"{_f(m, p + 'ood_fpr95_max_prob')} | {_f(m, p + 'ood_fpr95_entropy')} | {_f(m, p + 'ood_fpr95_mutual_info')} | {conf} |")
    return lines


def summary(rows: list[tuple[str, dict]], shifts: list[str], member_ece: list[float]) -> list[str]:
    """Statements read off the tables above (computed, so a rerun keeps them true)."""
    lines = ["Summary (computed from the tables):", ""]
    for s in shifts:
        up = [label for label, m in rows if m[f"{s}/mean_entropy"] > m["mean_entropy"]]
        down = [label for label, m in rows if m[f"{s}/mean_entropy"] <= m["mean_entropy"]]
        best = max(rows, key=lambda r: max(r[1].get(f"{s}/ood_auroc_{k}", float("-inf"))
                                           for k in ("max_prob", "entropy", "mutual_info")))
        best_auc = max(best[1].get(f"{s}/ood_auroc_{k}", float("-inf")) for k in ("max_prob", "entropy", "mutual_info"))
        share = rows[0][1].get(f"{s}/pred_share")
        collapse = f" Plain's predicted classes there: {share}." if share else ""
        lines.append(f"- `{s}`: mean predictive entropy higher than in-distribution for "
                     f"{', '.join(up) or 'no method'}; not higher for {', '.join(down) or 'no method'}. "
                     f"Best OOD AUROC {best_auc:.4f} ({best[0]}).{collapse}")
    base = rows[0][1]
    ens = next(m for label, m in rows if label.startswith("ensemble"))
    lines.append(f"- Deep-ensemble ECE {ens['ece']:.4f}; its members' ECE (same test images): "
                 f"{', '.join(f'{e:.4f}' for e in member_ece)} (ensemble <= every member: {ens['ece'] <= min(member_ece)}).")
    better = [label for label, m in rows[1:] if m["ece"] < base["ece"]]
    lines.append(f"- In-distribution ECE below plain's ({base['ece']:.4f}) for: {', '.join(better) or 'no method'}.")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problem", choices=("lensing", "synthetic"), default="lensing")
    ap.add_argument("--out", type=Path, default=Path("bench/results/uncertainty.md"))
    ap.add_argument("--data-root", type=Path, default=Path("runs/bench/data"), help="simulated datasets (cached)")
    ap.add_argument("--n-per-class", type=int, default=1500, help="Model II images per class (70/15/15 split)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--members", type=int, default=5, help="deep-ensemble size")
    ap.add_argument("--hyper-extra", type=int, default=4, help="extra hyper-ensemble candidates (sampled hparams)")
    ap.add_argument("--noise-sigma", type=float, nargs="+", default=[0.1, 0.01],
                    help="extra noise (std on the [0, 1] scale) of each noisy Model II shift set")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: the CPU is shared)")
    args = ap.parse_args(argv)
    if args.members < 2:
        ap.error(f"--members must be >= 2 for an ensemble, got {args.members}")
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    problem = lensing_problem(args) if args.problem == "lensing" else synthetic_problem(args)
    rows = run_methods(problem, args)
    wall = time.perf_counter() - t_start
    load_after = os.getloadavg()
    cmd = "bench/uncertainty.py" + (" --problem synthetic" if args.problem == "synthetic" else "")
    text = "\n".join([
        f"# Uncertainty methods on a micro {args.problem} problem (CPU)",
        "",
        f"Command: `.venv/bin/python {cmd}`  ",
        f"Machine: {machine()}, shared with other jobs, {args.threads} torch thread(s)  ",
        f"Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}  ",
        f"Load average (1/5/15 min): {' / '.join(f'{x:.2f}' for x in load_before)} before, "
        f"{' / '.join(f'{x:.2f}' for x in load_after)} after; whole run {wall:.0f} s wall, "
        f"training {problem['train_seconds']:.0f} s.",
        "",
        problem["description"],
        "",
        "Reference: `plain` (softmax of model 0); NLL/plain and ECE/plain are measured in the same run. "
        "ECE with 15 bins. Conformal: alpha = 0.1 (target coverage 0.9), randomised sets, on "
        "temperature-scaled probabilities (temperature on the first half of val, calibration on the second); "
        "RAPS lambda 0.01, k_reg 1. Laplace: last layer, prior precision by evidence, probit predictive; "
        "MI from 100 linearised samples. Seconds are wall clock on a shared CPU and vary between runs.",
        "",
        *tables(rows, list(problem["shifts"]), len(problem["test"].labels)),
        "",
        *summary(rows, list(problem["shifts"]), problem["member_ece"]),
        "",
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
