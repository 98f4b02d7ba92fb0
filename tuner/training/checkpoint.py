"""Checkpoints that load without unpickling: safetensors for tensors, JSON for the rest.

A checkpoint directory holds
- ``model.safetensors``: the model's state dict (shared tensors stored once);
- ``config.json``: the resolved config (family, img_size, model kwargs, train kwargs,
  class names, dataset digest, ...), enough to rebuild the model with ``build_model``;
- optionally ``optimizer.safetensors`` + ``optimizer.json`` (AdamW state and param groups)
  and ``state.json`` (epoch, scheduler step, best metric, MLflow run id) to resume training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tuner.models import io

MODEL_FILE = io.WEIGHTS_FILE
CONFIG_FILE = io.CONFIG_FILE
OPTIMIZER_FILE = "optimizer.safetensors"
OPTIMIZER_META_FILE = "optimizer.json"
STATE_FILE = "state.json"


def save_checkpoint(
    directory: Path,
    *,
    config: dict[str, Any],
    model: nn.Module | None = None,
    weights: dict[str, torch.Tensor] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint into ``directory`` (created); returns it. The weights are ``model``'s
    state dict, or ``weights`` (a state dict kept aside, e.g. a trial's best epoch)."""
    if (model is None) == (weights is None):
        raise ValueError("save_checkpoint takes exactly one of model and weights")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    io.save_weights(model if model is not None else weights, directory / MODEL_FILE)
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    if optimizer is not None:
        opt = optimizer.state_dict()
        tensors, scalars = {}, {}
        for index, entry in opt["state"].items():
            for key, value in entry.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{index}.{key}"] = value
                else:
                    scalars[f"{index}.{key}"] = value
        io.save_weights(tensors, directory / OPTIMIZER_FILE)
        meta = {"param_groups": opt["param_groups"], "scalars": scalars}
        (directory / OPTIMIZER_META_FILE).write_text(json.dumps(meta))
    if state is not None:
        (directory / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True))
    return directory


def read_config(directory: Path) -> dict[str, Any]:
    """The resolved config stored in a checkpoint directory."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in checkpoint {str(directory)!r}")
    return json.loads(path.read_text())


def restore_weights(model: nn.Module, directory: Path,
                    device: str | torch.device = "cpu") -> nn.Module:
    """Load a checkpoint's ``model.safetensors`` into ``model`` (strict: every key must match)."""
    path = Path(directory) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {MODEL_FILE} in checkpoint {str(directory)!r}")
    model.load_state_dict(io.load_weights(path, device), strict=True)
    return model


def load_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> bool:
    """Restore AdamW state from a checkpoint; False when it holds none."""
    directory = Path(directory)
    if not (directory / OPTIMIZER_FILE).is_file():
        return False
    meta = json.loads((directory / OPTIMIZER_META_FILE).read_text())
    state: dict[int, dict[str, Any]] = {}
    for flat, value in list(io.load_weights(directory / OPTIMIZER_FILE).items()) + list(
        meta["scalars"].items()
    ):
        index, key = flat.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return True


def read_state(directory: Path) -> dict[str, Any]:
    """Training state (epoch, scheduler step, best metric, run id); {} when absent."""
    path = Path(directory) / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def load_model(directory: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Model with trained weights and its resolved config from a checkpoint directory
    (e.g. a trial's downloaded ``checkpoint/`` artifact); the model is in eval mode."""
    config = read_config(directory)
    model = restore_weights(io.build_network(io.ModelConfig.from_checkpoint_config(config)),
                            directory, device)
    return model.to(device).eval(), config
