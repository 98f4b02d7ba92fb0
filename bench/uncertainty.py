"""Every uncertainty method on one micro problem, on this CPU.

Problem: 16 px single-channel images of three classes (a Gaussian blob at one of three places,
jittered) with noise rms 0.5; the shifted set has noise rms 2.5. Five tiny MLPs with dropout
(~18k parameters) are trained with different seeds; "plain" is the first one's softmax, which
every other method is compared with (ratios of ECE and NLL to plain, measured in the same run).

    .venv/bin/python bench/uncertainty.py [--out bench/results/uncertainty.md]
"""

from __future__ import annotations

import argparse
import datetime
import platform
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from tuner.uncertainty.report import evaluate, fit_method

SIZE, CENTRES = 16, ((4, 4), (4, 11), (11, 8))


def make_split(n: int, noise: float, seed: int) -> SimpleNamespace:
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("bench/results/uncertainty.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    train, val = make_split(3000, 0.5, 1), make_split(1500, 0.5, 2)
    test, shift = make_split(3000, 0.5, 3), make_split(3000, 2.5, 4)
    t0 = time.perf_counter()
    models = [train_mlp(train, s) for s in range(5)]
    train_s = time.perf_counter() - t0
    runs = [("plain", {}), ("temperature", {}), ("mc_dropout", {"mc_samples": 20}), ("ensemble", {}),
            ("hyper_ensemble", {"hyper_k": 5}), ("laplace", {"laplace_structure": "full"}),
            ("laplace", {"laplace_structure": "kron"}), ("conformal", {})]
    rows = []
    for name, kw in runs:
        fitted = fit_method(name, models, val, train=train, **kw)
        m = evaluate(fitted, test, {"noisy": shift}, class_names=["a", "b", "c"])["metrics"]
        label = name + (f" ({kw['laplace_structure']})" if "laplace_structure" in kw else "")
        rows.append((label, m))
    base = rows[0][1]
    lines = [
        "| method | acc | NLL | ECE | AURC | NLL/plain | ECE/plain | shift acc | OOD AUROC entropy | OOD AUROC MI | FPR95 entropy | fwd passes/img | fit s | predict s (3000 img) | conformal cov / size |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, m in rows:
        mi = m.get("noisy/ood_auroc_mutual_info", float("nan"))
        conf = (f"{m['conformal_coverage']:.3f} / {m['conformal_set_size']:.2f}" if "conformal_coverage" in m else "")
        lines.append(
            f"| {label} | {m['acc']:.4f} | {m['nll']:.4f} | {m['ece']:.4f} | {m['aurc']:.4f} | "
            f"{m['nll'] / base['nll']:.2f} | {m['ece'] / base['ece']:.2f} | {m['noisy/acc']:.4f} | "
            f"{m['noisy/ood_auroc_entropy']:.4f} | {mi:.4f} | {m['noisy/ood_fpr95_entropy']:.4f} | "
            f"{m['forward_passes_per_image']:.0f} | {m['fit_seconds']:.3f} | {m['predict_seconds']:.3f} | {conf} |"
        )
    cpu = subprocess.run("lscpu | grep 'Model name' | cut -d: -f2", shell=True, capture_output=True, text=True).stdout.strip()
    text = "\n".join([
        "# Uncertainty methods on a micro problem (CPU)",
        "",
        f"Command: `.venv/bin/python bench/uncertainty.py`  ",
        f"Machine: {cpu}, {torch.get_num_threads()} torch thread (2 cores, shared with other jobs), "
        f"torch {torch.__version__}, Python {platform.python_version()}  ",
        f"Date: {datetime.date.today().isoformat()}",
        "",
        "Problem: 16 px, three classes (blob position), noise rms 0.5; shift: same task with noise rms 2.5 "
        "(test 3000 images, shift 3000 images, val 1500, train 3000). Five MLPs with dropout 0.3, "
        f"~18k parameters each, trained with different seeds ({train_s:.1f} s for all five). "
        "Reference: `plain` (softmax of model 0); ratios are against it, measured in the same run. "
        "Conformal: APS, randomised, alpha = 0.1, on temperature-scaled probabilities (halves of val). "
        "Seconds are wall clock on a shared CPU and vary from run to run.",
        "",
        *lines,
        "",
    ])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
