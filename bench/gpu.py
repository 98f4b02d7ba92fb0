"""GPU benchmark for one H100/H200 (under 8 minutes); every figure is a ratio against a
reference measured in the same run:

1. training-step images/s of vit, swin and resnet18 (their ``gpu`` search-space profile with the
   builders' defaults for searched keys, 64 px, random model_ii-like data on the device) at two
   batch sizes, through ``tuner.training.loop.train_one_epoch`` (augmentation off, and on) over
   the bare best-practice loop below (AMP bf16, channels_last, fused AdamW, data on device) on
   the same steps; epochs alternate in rounds, the headline is the median of per-round ratios;
2. a trial's wall time (the loop's to_device/prepare_model/train/predict, the metrics, a
   checkpoint every epoch; no Ray, no MLflow) over the bare train + validate on the same epochs;
3. aggregate images/s of 1, 2, 4, 8 processes (torch.multiprocessing spawn) training the same
   model concurrently on the one GPU, over 1 process;
4. images/s of the simulator (``tuner.lensing.simulate_batch`` on the GPU) over lenstronomy on
   one CPU core (process CPU time), per preset and class, with ``bench/simulate.py``'s renderer.

    .venv/bin/python bench/gpu.py                                  # writes bench/results/gpu.md
    .venv/bin/python bench/gpu.py --compile                        # + torch.compile rows (slower)
    .venv/bin/python bench/gpu.py --quick --out /tmp/gpu-quick.md  # tiny sizes, runs on a CPU
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import queue
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe as machine  # noqa: E402  (bench/ is not a package)

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "gpu.md"
FAMILIES = ("vit", "swin", "resnet18")


@dataclass(frozen=True)
class Sizes:
    """Everything the run's length depends on; ``FULL`` for the GPU, ``QUICK`` for a CPU smoke run."""

    profile: str  # search-space profile the models come from
    img_size: int
    batch_sizes: tuple[int, int]
    steps: int  # optimiser steps per timed epoch (throughput)
    rounds: int
    trial_batch: int
    trial_steps: int
    val_images: int
    trial_epochs: int
    trial_pairs: int
    processes: tuple[int, ...]
    proc_batch: int
    proc_steps: int
    proc_seconds: float
    presets: tuple[str, ...]
    sim_batch: int
    n_lenstronomy: int
    repeats: int


FULL = Sizes(profile="gpu", img_size=64, batch_sizes=(32, 128), steps=60, rounds=5,
             trial_batch=128, trial_steps=200, val_images=5120, trial_epochs=3, trial_pairs=2,
             processes=(1, 2, 4, 8), proc_batch=64, proc_steps=20, proc_seconds=10.0,
             presets=("model_i", "model_ii"), sim_batch=512, n_lenstronomy=24, repeats=3)
QUICK = Sizes(profile="micro", img_size=32, batch_sizes=(8, 16), steps=3, rounds=2,
              trial_batch=16, trial_steps=4, val_images=64, trial_epochs=2, trial_pairs=1,
              processes=(1, 2), proc_batch=8, proc_steps=2, proc_seconds=1.0,
              presets=("model_ii",), sim_batch=8, n_lenstronomy=2, repeats=1)


def model_kwargs(family: str, sizes: Sizes) -> dict:
    """The ``gpu`` profile's fixed model values, searched keys at the builder's defaults; in the
    ``micro`` profile (quick runs) searched keys at their low end instead, as the builders'
    defaults are GPU-sized."""
    from tuner.study.search_space import load_search_space

    section = load_search_space(family, sizes.profile, check_build=False).model
    return section.extremes()[0] if sizes.profile == "micro" else dict(section.fixed)


def build(family: str, sizes: Sizes) -> torch.nn.Module:
    """The family's model at ``sizes.img_size`` from :func:`model_kwargs`."""
    from tuner.models import build_model

    return build_model(family, img_size=sizes.img_size, **model_kwargs(family, sizes))


def is_convolutional(model: torch.nn.Module) -> bool:
    """Whether ``prepare_model`` should turn cuDNN autotuning on (any Conv2d, as in a trial)."""
    return any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def random_data(n: int, img_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Host images (n, 1, H, W) float32 in [0, 1] (model_ii-normalised range) and labels (n,)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, img_size, img_size, generator=g), torch.randint(0, 3, (n,), generator=g)


def train_hparams(batch_size: int, augment: bool):
    """Trial-like training settings; ``augment`` rotates (always) and flips every image."""
    from tuner.study.search_space import TrainHParams

    return TrainHParams(lr=1e-3, weight_decay=0.05, warmup_epochs=0, batch_size=batch_size,
                        label_smoothing=0.1, aug_rotation=augment, aug_flip=augment, aug_strength=1.0)


def sync(device: torch.device) -> None:
    """Wait for the device, so that a wall-clock interval covers the work queued in it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the reference: a bare best-practice loop, written out in full ------------------------------

class BareTrainer:
    """Plain PyTorch training on device-resident data: fused AdamW, bf16 autocast, channels_last,
    cuDNN autotuning, a device permutation per epoch; no schedule, smoothing, checks or augmentation."""

    def __init__(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 batch_size: int, device: torch.device):
        cuda = device.type == "cuda"
        torch.backends.cudnn.benchmark = True  # fixed shapes
        self.model = model.to(device)
        if cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-3, fused=cuda or None)
        self.images, self.labels, self.bs, self.device = images, labels, batch_size, device

    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def epoch(self, steps: int) -> None:
        self.model.train()
        perm = torch.randperm(len(self.labels), device=self.images.device)
        for i in range(steps):
            idx = perm[i * self.bs:(i + 1) * self.bs]
            x = self.images[idx].contiguous(memory_format=torch.channels_last)
            with self.autocast():
                loss = F.cross_entropy(self.model(x), self.labels[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        sync(self.device)

    @torch.no_grad()
    def validate(self, images: torch.Tensor, batch_size: int = 256):
        self.model.eval()
        out = []
        for i in range(0, len(images), batch_size):
            with self.autocast():
                logits = self.model(images[i:i + batch_size].contiguous(memory_format=torch.channels_last))
            out.append(torch.softmax(logits.float(), dim=1))
        return torch.cat(out).cpu().numpy()


# --- the package's loop, as a trial drives it ---------------------------------------------------

class LoopTrainer:
    """A fresh model trained through ``tuner.training.loop`` as a trial does: ``prepare_model``,
    ``make_optimizer``, ``make_scheduler``, then ``train_one_epoch`` on the given (device) data
    with generators on the data's device, seeded per epoch."""

    def __init__(self, family: str, sizes: Sizes, images: torch.Tensor, labels: torch.Tensor,
                 device: torch.device, *, batch_size: int, augment: bool, steps_per_epoch: int,
                 max_epochs: int, compile: bool = False, seed: int = 0):
        from tuner.training import loop

        self.loop, self.images, self.labels, self.device = loop, images, labels, device
        self.img_size = sizes.img_size
        torch.manual_seed(seed)
        network = build(family, sizes)
        self.model = loop.prepare_model(network, device, compile=compile,
                                        convolutional=is_convolutional(network))
        self.hp = train_hparams(batch_size, augment)
        self.opt = loop.make_optimizer(self.model, self.hp)
        self.sched = loop.make_scheduler(self.opt, self.hp, steps_per_epoch=steps_per_epoch,
                                         max_epochs=max_epochs)
        self.epochs = 0

    def epoch(self) -> None:
        """One epoch; ends with the loop's device sync."""
        self.epochs += 1
        self.loop.train_one_epoch(
            self.model, self.images, self.labels, optimizer=self.opt, scheduler=self.sched,
            hp=self.hp, device=self.device, img_size=self.img_size,
            generator=torch.Generator(device=self.images.device).manual_seed(self.epochs),
            aug_generator=torch.Generator(device=self.device).manual_seed(10_000 + self.epochs))


# --- 1. training-step throughput ----------------------------------------------------------------

def throughput(sizes: Sizes, device: torch.device, compile: bool) -> list[dict]:
    """Per family and batch size: median images/s of each kind over the rounds, and the median
    of the per-round ratios to the bare loop."""
    from tuner.training import loop

    rows = []
    for family in FAMILIES:
        for bs in sizes.batch_sizes:
            n = sizes.steps * bs
            images, labels = loop.to_device(*random_data(n, sizes.img_size, seed=0), device)
            torch.manual_seed(0)
            bare = BareTrainer(build(family, sizes), images, labels, bs, device)
            variants = {"loop": {}, "loop_aug": {"augment": True}}
            if compile:
                variants["loop_compiled"] = {"compile": True}
            kinds = {"bare": lambda: bare.epoch(sizes.steps)}
            for kind, options in variants.items():
                kinds[kind] = LoopTrainer(
                    family, sizes, images, labels, device, batch_size=bs, steps_per_epoch=sizes.steps,
                    max_epochs=sizes.rounds + 1, **{"augment": False, **options}).epoch
            first = {}
            for kind, run in kinds.items():  # warm-up: allocations, cuDNN autotuning, compilation
                start = time.perf_counter()
                run()
                first[kind] = time.perf_counter() - start
            rates = {kind: [] for kind in kinds}
            for r in range(sizes.rounds):  # alternate the order so load drift weighs on all alike
                for kind in (list(kinds) if r % 2 == 0 else list(kinds)[::-1]):
                    sync(device)
                    start = time.perf_counter()
                    kinds[kind]()  # both kinds end with a device sync
                    rates[kind].append(n / (time.perf_counter() - start))
            row = {"family": family, "batch": bs, "first_s": first,
                   **{f"{k}_ips": statistics.median(v) for k, v in rates.items()}}
            for kind in kinds:
                if kind != "bare":
                    row[f"{kind}_ratio"] = statistics.median(
                        [a / b for a, b in zip(rates[kind], rates["bare"])])
            rows.append(row)
            print(f"throughput {family} b{bs}: " + ", ".join(
                f"{k} {row[f'{k}_ips']:.0f} img/s" for k in kinds), file=sys.stderr, flush=True)
            del bare, kinds, images, labels
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


# --- 2. a trial against bare train + validate ---------------------------------------------------

def trial_run(sizes: Sizes, data, device: torch.device) -> dict[str, float]:
    """Wall seconds of a trial's work without Ray/MLflow, and of its parts."""
    from tuner import metrics
    from tuner.lensing import CLASS_NAMES
    from tuner.models import io
    from tuner.training import loop
    from tuner.training.checkpoint import save_checkpoint

    x_np, y_np, xv_np, yv_np = data
    parts = dict.fromkeys(("setup", "train", "validate", "checkpoint"), 0.0)
    t = start = time.perf_counter()
    x, y = loop.to_device(torch.from_numpy(x_np), torch.from_numpy(y_np), device)
    xv, _ = loop.to_device(torch.from_numpy(xv_np), torch.from_numpy(yv_np), device)
    trainer = LoopTrainer("vit", sizes, x, y, device, batch_size=sizes.trial_batch, augment=False,
                          steps_per_epoch=sizes.trial_steps, max_epochs=sizes.trial_epochs)
    config = {"family": "vit", "img_size": sizes.img_size, "in_chans": 1,
              "class_names": list(CLASS_NAMES), "model": model_kwargs("vit", sizes),
              "train": trainer.hp.model_dump()}

    def lap(part: str) -> None:
        nonlocal t
        now = time.perf_counter()
        parts[part] += now - t
        t = now

    lap("setup")
    for epoch in range(1, sizes.trial_epochs + 1):
        trainer.epoch()
        lap("train")
        probs = io.predict_probs(trainer.model, xv, sizes.img_size, device=device)
        metrics.classification_report(probs, yv_np, list(CLASS_NAMES))
        loop.cross_entropy_of_probs(probs, yv_np)
        lap("validate")
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(Path(tmp), model=loop.unwrap(trainer.model), config=config,
                            optimizer=trainer.opt,
                            state={"epoch": epoch, "scheduler_step": trainer.sched.last_epoch})
        lap("checkpoint")
    return {"wall": time.perf_counter() - start, **parts}


def bare_run(sizes: Sizes, data, device: torch.device) -> float:
    """Wall seconds of the reference: plain copies to the device, bare train + validate epochs."""
    x_np, y_np, xv_np, _ = data
    start = time.perf_counter()
    x, y, xv = (torch.from_numpy(a).to(device) for a in (x_np, y_np, xv_np))
    torch.manual_seed(0)
    bare = BareTrainer(build("vit", sizes), x, y, sizes.trial_batch, device)
    for _ in range(sizes.trial_epochs):
        bare.epoch(sizes.trial_steps)
        bare.validate(xv)
    return time.perf_counter() - start


def trial_overhead(sizes: Sizes, device: torch.device) -> dict:
    """Median ratio trial / bare wall time over pairs in alternating order, and the medians."""
    x, y = random_data(sizes.trial_steps * sizes.trial_batch, sizes.img_size, seed=1)
    xv, yv = random_data(sizes.val_images, sizes.img_size, seed=2)
    data = (x.numpy(), y.numpy(), xv.numpy(), yv.numpy())  # host arrays, as from Ray's object store
    trials, bares = [], []
    for p in range(sizes.trial_pairs):
        for kind in (("trial", "bare") if p % 2 == 0 else ("bare", "trial")):
            if kind == "trial":
                trials.append(trial_run(sizes, data, device))
            else:
                bares.append(bare_run(sizes, data, device))
        print(f"trial {trials[-1]['wall']:.2f} s, bare {bares[-1]:.2f} s", file=sys.stderr, flush=True)
    return {"ratio": statistics.median([t["wall"] / b for t, b in zip(trials, bares)]),
            "trial": {k: statistics.median([t[k] for t in trials]) for k in trials[0]},
            "bare": statistics.median(bares)}


# --- 3. concurrent training processes on one GPU ------------------------------------------------

def _concurrent_worker(rank, sizes, device_name, barrier, results) -> None:
    """One process: a trial-like loop (augmentation on) for ``proc_seconds`` after a common start."""
    from tuner.training import loop

    torch.set_num_threads(1)
    device = torch.device(device_name)
    n = sizes.proc_steps * sizes.proc_batch
    images, labels = loop.to_device(*random_data(n, sizes.img_size, seed=rank), device)
    trainer = LoopTrainer("vit", sizes, images, labels, device, batch_size=sizes.proc_batch,
                          augment=True, steps_per_epoch=sizes.proc_steps, max_epochs=10**6, seed=rank)
    trainer.epoch()  # warm-up, before the common start
    barrier.wait(timeout=600)
    start, seen = time.perf_counter(), 0
    while time.perf_counter() - start < sizes.proc_seconds:
        trainer.epoch()
        seen += n
    results.put((rank, seen / (time.perf_counter() - start)))


def concurrency(sizes: Sizes, device: torch.device) -> list[dict]:
    """Aggregate images/s (sum of the processes' rates) for each process count."""
    ctx = torch.multiprocessing.get_context("spawn")
    rows = []
    for n_procs in sizes.processes:
        barrier, results = ctx.Barrier(n_procs), ctx.Queue()
        procs = [ctx.Process(target=_concurrent_worker, args=(r, sizes, str(device), barrier, results))
                 for r in range(n_procs)]
        for proc in procs:
            proc.start()
        rates = []
        try:
            while len(rates) < n_procs:
                try:
                    rates.append(results.get(timeout=5)[1])
                except queue.Empty:
                    if any(p.exitcode not in (None, 0) for p in procs):
                        raise RuntimeError(f"a training process failed ({n_procs} concurrent)") from None
        except BaseException:
            for proc in procs:  # the others would wait at the barrier
                proc.terminate()
            raise
        finally:
            for proc in procs:
                proc.join(timeout=60)
        rows.append({"processes": n_procs, "aggregate": sum(rates), "per_process": rates})
        print(f"{n_procs} processes: {sum(rates):.0f} img/s", file=sys.stderr, flush=True)
    return rows


# --- 4. simulator on the device against lenstronomy on one core ---------------------------------

def _bench_simulate():
    """bench/simulate.py as a module (bench/ is not a package), for its lenstronomy reference."""
    spec = importlib.util.spec_from_file_location("bench_simulate", Path(__file__).with_name("simulate.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def simulator(sizes: Sizes, device: torch.device, compile: bool) -> list[dict]:
    """Per preset and class: our images/s on ``device`` (wall) and lenstronomy's per CPU core."""
    from tuner.lensing import CLASS_NAMES, simulate_batch

    ref = _bench_simulate()
    rows = []
    for preset in sizes.presets:
        for label, cls in enumerate(CLASS_NAMES):
            labels = torch.full((sizes.sim_batch,), label, dtype=torch.int64)
            row = {"preset": preset, "class": cls}
            for mode in ("eager", "compiled") if compile else ("eager",):
                def ours(compiled=mode == "compiled"):
                    g = torch.Generator(device=device).manual_seed(0)
                    simulate_batch(preset, labels, generator=g, device=device, compiled=compiled)
                    sync(device)
                ours()  # warm-up (and compilation)
                _, wall = ref._timed(ours, sizes.repeats)
                row[f"{mode}_ips"] = sizes.sim_batch / wall
            render = ref.lenstronomy_renderer(preset, label, sizes.n_lenstronomy, seed=0)
            render()
            cpu, _ = ref._timed(render, sizes.repeats)
            row["lenstronomy_ips"] = sizes.n_lenstronomy / cpu
            rows.append(row)
            print(f"simulator {preset} {cls}: {row}", file=sys.stderr, flush=True)
    return rows


# --- report -------------------------------------------------------------------------------------

def render(args, sizes, device, results, seconds) -> str:
    """The markdown report of one run."""
    lines = [
        "# GPU benchmark: the training loop, a trial, concurrent trials and the simulator",
        "",
        f"- Command: `{' '.join(['.venv/bin/python bench/gpu.py', *args.argv])}`",
        f"- Machine: {machine(device)}",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}; whole run {seconds:.0f} s"
        + ("; QUICK: tiny sizes, figures say nothing about a GPU" if args.quick else ""),
        "",
        f"## 1. Training-step throughput, loop / bare ({sizes.profile} profile, {sizes.img_size} px,"
        f" {sizes.steps} steps per epoch, median of {sizes.rounds} rounds after a warm-up epoch)",
        "",
        "| family | batch | bare img/s | loop img/s | **loop / bare** | loop + augmentation / bare |"
        + (" loop compiled / bare | compiled first epoch s |" if args.compile else "") + " first epoch s (bare, loop) |",
        "|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if args.compile else "") + "---|",
    ]
    for r in results["throughput"]:
        comp = (f" {r['loop_compiled_ratio']:.3f} | {r['first_s']['loop_compiled']:.0f} |"
                if args.compile else "")
        lines.append(f"| {r['family']} | {r['batch']} | {r['bare_ips']:.0f} | {r['loop_ips']:.0f} |"
                     f" **{r['loop_ratio']:.3f}** | {r['loop_aug_ratio']:.3f} |{comp}"
                     f" {r['first_s']['bare']:.1f}, {r['first_s']['loop']:.1f} |")
    t = results["trial"]
    lines += [
        "",
        "Loop: `train_one_epoch` on `to_device` data with `prepare_model` and `make_optimizer` (label"
        " smoothing 0.1, warmup/cosine schedule, NaN check), augmentation off; the augmentation column"
        " rotates and flips every image on the device. Bare: the benchmark's own loop (bf16 autocast,"
        " channels_last, fused AdamW, device permutation, nothing else).",
        "",
        f"## 2. A trial over bare train + validate (vit, batch {sizes.trial_batch}, {sizes.trial_epochs}"
        f" epochs of {sizes.trial_steps} steps, {sizes.val_images} validation images)",
        "",
        f"- **trial / bare wall time: {t['ratio']:.3f}** (median of {sizes.trial_pairs} pair(s), order alternating)",
        f"- bare: {t['bare']:.2f} s; trial: {t['trial']['wall']:.2f} s = setup {t['trial']['setup']:.2f}"
        f" (pinned copy, model) + train {t['trial']['train']:.2f} + validate and metrics"
        f" {t['trial']['validate']:.2f} + checkpoints {t['trial']['checkpoint']:.2f} s",
        "- Trial: what the trainable does per epoch without Ray and MLflow (`to_device`, `prepare_model`,"
        " `train_one_epoch`, `io.predict_probs`, the classification report, `save_checkpoint` with AdamW"
        " state every epoch). Bare: plain `.to(device)` copies, the bare loop, a softmax validation pass.",
        "",
        f"## 3. Concurrent training processes on one GPU (vit, batch {sizes.proc_batch}, augmentation on,"
        f" {sizes.proc_seconds:.0f} s each after a common start)",
        "",
        "| processes | aggregate img/s | **aggregate / 1 process** | per process img/s |",
        "|---:|---:|---:|---|",
    ]
    one = results["concurrency"][0]["aggregate"]
    for r in results["concurrency"]:
        lines.append(f"| {r['processes']} | {r['aggregate']:.0f} | **{r['aggregate'] / one:.2f}** |"
                     f" {', '.join(f'{v:.0f}' for v in r['per_process'])} |")
    lines += [
        "",
        f"## 4. Simulator on {device.type} (batches of {sizes.sim_batch}) over lenstronomy on one CPU core"
        f" ({sizes.n_lenstronomy} images, process CPU time)",
        "",
        "| preset | class | lenstronomy img/s/core | ours eager img/s | **eager / lenstronomy** |"
        + (" ours compiled img/s | compiled / lenstronomy |" if args.compile else ""),
        "|---|---|---:|---:|---:|" + ("---:|---:|" if args.compile else ""),
    ]
    for r in results["simulator"]:
        comp = (f" {r['compiled_ips']:.0f} | {r['compiled_ips'] / r['lenstronomy_ips']:.1f} |"
                if args.compile else "")
        lines.append(f"| {r['preset']} | {r['class']} | {r['lenstronomy_ips']:.0f} | {r['eager_ips']:.0f} |"
                     f" **{r['eager_ips'] / r['lenstronomy_ips']:.1f}** |{comp}")
    lines += ["", "Ours: `simulate_batch` (draws, ray-tracing, PSF, noise, normalisation), seeded device"
              " generator, best wall time of repeats after a warm-up call; lenstronomy: `ImageModel.image`"
              " one image at a time (image only), as in `bench/simulate.py`."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the four measurements and write the report; 2 on bad options or without a GPU."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes (under a minute on a CPU); needs --out, never bench/results/gpu.md")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd loop and simulator")
    p.add_argument("--out", type=Path, help="markdown results (default bench/results/gpu.md)")
    args = p.parse_args(argv)
    args.argv = argv
    if args.quick and (args.out is None or args.out.resolve() == DEFAULT_OUT):
        print(f"bench/gpu.py: --quick needs --out PATH other than {DEFAULT_OUT} (a smoke run must not"
              f" replace the GPU results); got {args.out}", file=sys.stderr)
        return 2
    if not args.quick and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA GPU is visible (torch.cuda.is_available() is False); run it on a"
              " GPU machine, or use --quick --out PATH for a CPU smoke run", file=sys.stderr)
        return 2
    out = args.out or DEFAULT_OUT
    sizes = QUICK if args.quick else FULL
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)  # a smoke run on a shared machine
    start = time.perf_counter()
    results = {"throughput": throughput(sizes, device, args.compile),
               "trial": trial_overhead(sizes, device),
               "concurrency": concurrency(sizes, device),
               "simulator": simulator(sizes, device, args.compile)}
    text = render(args, sizes, device, results, time.perf_counter() - start)
    print(text)
    partial = out.with_name(out.name + ".partial")  # nothing half-written in place of the results
    partial.write_text(text)
    partial.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
