"""Cost of a trial's system metrics (``tuner.tracking.system_metrics``) against the same trial
without them, in the same run.

The workload is a trial's training on the CPU: a micro ``levit`` (the demo's family) trained with
``tuner.training.loop.train_one_epoch`` on random 32 px images for ``--epochs`` epochs. Each
repeat trains it twice, once with the monitor logging into an MLflow run of an embedded sqlite
store every ``--interval`` seconds (lenstune's default) and once without, alternating which goes
first. Reported:

- the monitor thread's own CPU time (from /proc, by its native thread id) as a share of the
  trial's wall time: what the monitor takes from the trial;
- the wall time of the monitored and the reference trial (median, best) and their difference;
- one monitor step on its own (sample CPU, memory, disk, network; read the run's status;
  aggregate; send one batch), timed ``--steps`` times: its CPU and wall time per sample, and
  that per sampling interval.

    .venv/bin/python bench/system_metrics.py --out bench/results/system_metrics.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe as machine  # noqa: E402  (bench/ is not a package)

from tuner.tracking.system_metrics import SAMPLING_INTERVAL_S, start_system_metrics, stop_system_metrics


def thread_cpu_s(native_id: int) -> float:
    """CPU seconds (user + system) of one thread of this process, from /proc."""
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def trial(epochs: int, seed: int = 0) -> None:
    """A trial's training: micro levit, 32 px, 600 random images, batch 32, AdamW."""
    from tuner.models import build_model
    from tuner.training import loop

    torch.manual_seed(seed)
    model = build_model("levit", img_size=32, embed_dim=[32, 48], num_heads=[2, 3],
                        depth=[1, 1], key_dim=8, stem_stride=8)
    x = torch.rand(600, 1, 32, 32)
    y = torch.randint(0, 3, (600,))

    class HP:
        lr, weight_decay, batch_size, label_smoothing = 1e-3, 1e-2, 32, 0.0
        warmup_epochs, aug_rotation, aug_flip, aug_strength = 0, True, True, 0.5

    hp = HP()
    optimizer = loop.make_optimizer(model, hp)
    scheduler = loop.make_scheduler(optimizer, hp, steps_per_epoch=loop.steps_per_epoch(600, 32),
                                    max_epochs=epochs)
    for epoch in range(epochs):
        loop.train_one_epoch(model, x, y, optimizer=optimizer, scheduler=scheduler, hp=hp,
                             device=torch.device("cpu"), img_size=32,
                             generator=torch.Generator().manual_seed(epoch),
                             aug_generator=torch.Generator().manual_seed(epoch + 1))


def monitored_trial(client, experiment_id: str, uri: str, epochs: int,
                    interval: float) -> tuple[float, float, int, float]:
    """(wall s, monitor thread CPU s, samples logged, start + stop s) of one trial with
    system metrics."""
    run_id = client.create_run(experiment_id).info.run_id
    start = time.perf_counter()
    monitor = start_system_metrics(run_id, uri, interval_s=interval)
    started = time.perf_counter()
    assert monitor is not None, "the monitor did not start"
    native = monitor._process.native_id
    trial(epochs)
    cpu = thread_cpu_s(native)  # before the thread ends (its /proc entry goes with it)
    stopping = time.perf_counter()
    stop_system_metrics(monitor)
    end = time.perf_counter()
    samples = len(client.get_metric_history(run_id, "system/cpu_utilization_percentage"))
    client.set_terminated(run_id)
    return end - start, cpu, samples, (started - start) + (end - stopping)


def reference_trial(epochs: int) -> float:
    start = time.perf_counter()
    trial(epochs)
    return time.perf_counter() - start


def step_cost(client, experiment_id: str, uri: str, steps: int) -> tuple[float, float]:
    """(CPU ms, wall ms) of one monitor step, median over ``steps``."""
    from mlflow import MlflowClient

    from tuner.tracking.system_metrics import _monitor_class

    run_id = client.create_run(experiment_id).info.run_id
    monitor = _monitor_class()(run_id, sampling_interval=SAMPLING_INTERVAL_S, tracking_uri=uri)
    cpu, wall = [], []
    for _ in range(steps):
        t_cpu, t_wall = time.thread_time(), time.perf_counter()
        monitor.collect_metrics()
        MlflowClient(uri).get_run(run_id)  # what the monitor's loop reads every sample
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()
        cpu.append(1e3 * (time.thread_time() - t_cpu))
        wall.append(1e3 * (time.perf_counter() - t_wall))
    return statistics.median(cpu), statistics.median(wall)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--interval", type=float, default=SAMPLING_INTERVAL_S)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    torch.set_num_threads(1)  # a trial with cpus_per_trial 1
    from mlflow import MlflowClient

    tmp = tempfile.mkdtemp(prefix="bench-sysmetrics-")
    uri = f"sqlite:///{tmp}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("bench")
    load_before = os.getloadavg()[0]
    trial(1)  # warm-up: imports, allocator
    walls, refs, shares, samples, fixed = [], [], [], [], []
    for i in range(args.repeats):
        order = ("monitored", "reference") if i % 2 == 0 else ("reference", "monitored")
        for kind in order:
            if kind == "reference":
                refs.append(reference_trial(args.epochs))
            else:
                wall, cpu, n, overhead = monitored_trial(client, experiment_id, uri, args.epochs,
                                                         args.interval)
                walls.append(wall)
                fixed.append(overhead)
                shares.append(cpu / wall)
                samples.append(n)
    cpu_ms, wall_ms = step_cost(client, experiment_id, uri, args.steps)
    load_after = os.getloadavg()[0]
    command = "python bench/system_metrics.py " + " ".join(sys.argv[1:])
    lines = [
        "# System metrics of a trial: cost", "",
        f"Command: `{command}`", "",
        f"Machine: {machine()}, numpy {np.__version__}; "
        f"{datetime.date.today()}. Store: embedded sqlite (one MLflow request per sample to "
        f"read the run's status, one to send). Load average (1 min) {load_before:.2f} before "
        f"and {load_after:.2f} after: other jobs shared the cores when above 1.", "",
        f"Workload: micro levit, 32 px, 600 images, {args.epochs} epochs, one torch thread; "
        f"monitor interval {args.interval:g} s; {args.repeats} repeats, monitored and reference "
        "alternating.", "",
        "| what | median | best |", "|---|---:|---:|",
        f"| reference trial wall time (s) | {statistics.median(refs):.2f} | {min(refs):.2f} |",
        f"| monitored trial wall time (s) | {statistics.median(walls):.2f} | {min(walls):.2f} |",
        f"| monitor thread CPU / trial wall time (%) | {100 * statistics.median(shares):.3f} | "
        f"{100 * min(shares):.3f} |",
        f"| system-metric samples logged per trial | {statistics.median(samples):g} | "
        f"{min(samples)} |",
        f"| starting and stopping the monitor, in the trial's thread (ms) | "
        f"{1e3 * statistics.median(fixed):.1f} | {1e3 * min(fixed):.1f} |",
        f"| one monitor step, CPU (ms) | {cpu_ms:.2f} | |",
        f"| one monitor step, wall (ms) | {wall_ms:.2f} | |",
        f"| one step's CPU per interval (%) | {100 * cpu_ms / 1e3 / args.interval:.3f} | |", "",
        f"Wall-time difference, monitored vs reference (medians): "
        f"{100 * (statistics.median(walls) / statistics.median(refs) - 1):+.2f} %; on a shared "
        "2-core machine this is within the run-to-run spread, the thread's CPU share is the "
        "direct figure.", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
