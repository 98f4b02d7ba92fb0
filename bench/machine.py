"""The machine a benchmark ran on, as its results file states it: one description for every
script in ``bench/`` (bench/ is not a package: scripts put their own folder on ``sys.path``
and ``from machine import describe``)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys


def cpu_model() -> str:
    """The CPU's model name from ``lscpu``; what Python knows of it where lscpu is missing."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine() or "unknown CPU"
    return next((line.split(":", 1)[1].strip() for line in out.splitlines()
                 if line.startswith("Model name")), platform.machine() or "unknown CPU")


def describe(device=None) -> str:
    """``<CPU model>, <N> cores; Python <v>, torch <v>``, led by the GPU's name and memory,
    CUDA, cuDNN and driver versions when ``device`` is a CUDA device, by "no GPU" when it is
    another device. torch is named only when the script has imported it (a numpy-only
    benchmark does not pay for the import)."""
    host = f"{cpu_model()}, {os.cpu_count()} cores; Python {platform.python_version()}"
    torch = sys.modules.get("torch")
    if torch is not None:
        host += f", torch {torch.__version__}"
    if device is None:
        return host
    if getattr(device, "type", str(device)) != "cuda":
        return f"no GPU (device {device}): {host}"
    props = torch.cuda.get_device_properties(device)
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True).stdout.split()
    except OSError:
        out = []
    return (f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}, "
            f"cuDNN {torch.backends.cudnn.version()}, driver {out[0] if out else '?'}; {host}")
