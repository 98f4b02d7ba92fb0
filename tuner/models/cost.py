"""What a network costs to run: parameters, forward GFLOPs, and latency on a device.

Survey pipelines classify millions of cutouts, so a model's cost is an objective beside its
AUC (``--objectives``, :mod:`tuner.study.objectives`) and a constraint of promotion
(``--max-latency-ms``, ``--max-params``). One implementation, used by the trials and by
``lenstune families``.
"""

from __future__ import annotations

import time

import torch

# cost metrics a trial can measure (all lower-is-better), logged on its MLflow run
PARAMS = "params"
GFLOPS = "gflops"
LATENCY_MS = "latency_ms"  # one image (batch 1), milliseconds per forward pass
LATENCY_MS_B256 = "latency_ms_b256"  # a batch of 256, milliseconds per forward pass
COST_METRICS = (PARAMS, GFLOPS, LATENCY_MS, LATENCY_MS_B256)


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_gflops(model: torch.nn.Module, img_size: int, in_chans: int = 1) -> float:
    """Forward GFLOPs of ``model`` on one (1, in_chans, img_size, img_size) image, counted by
    torch.utils.flop_counter.FlopCounterMode (matrix products and convolutions; a multiply-add
    is 2 FLOPs), on the model's device."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    # Not under no_grad: FlopCounterMode's module tracker needs autograd on tuple inputs (PiT).
    with counter:
        model.eval()(torch.zeros(1, in_chans, img_size, img_size, device=device))
    return counter.get_total_flops() / 1e9


@torch.no_grad()
def latency_ms(model: torch.nn.Module, img_size: int, batch: int, *, in_chans: int = 1,
               warmup: int = 3, repeats: int = 10) -> float:
    """Median milliseconds of one forward pass of ``batch`` images on the model's device, in
    eval mode, after ``warmup`` passes (synchronised on CUDA)."""
    device = next(model.parameters()).device
    x = torch.zeros(batch, in_chans, img_size, img_size, device=device)
    model.eval()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        model(x)
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return sorted(times)[len(times) // 2]


def measure_costs(model: torch.nn.Module, img_size: int, which: list[str] | tuple[str, ...]
                  ) -> dict[str, float]:
    """The cost metrics named in ``which`` (of :data:`COST_METRICS`) of ``model`` on its device;
    the model is left in the mode it was in."""
    unknown = sorted(set(which) - set(COST_METRICS))
    if unknown:
        raise ValueError(f"cost metrics {unknown} not known; allowed: {', '.join(COST_METRICS)}")
    training = model.training
    out: dict[str, float] = {}
    try:
        if PARAMS in which:
            out[PARAMS] = float(count_params(model))
        if GFLOPS in which:
            out[GFLOPS] = forward_gflops(model, img_size)
        if LATENCY_MS in which:
            out[LATENCY_MS] = latency_ms(model, img_size, 1)
        if LATENCY_MS_B256 in which:
            out[LATENCY_MS_B256] = latency_ms(model, img_size, 256, warmup=1, repeats=3)
    finally:
        model.train(training)
    return out
