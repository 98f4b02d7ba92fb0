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
from safetensors.torch import load_file, save_file
from torch import nn

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
OPTIMIZER_FILE = "optimizer.safetensors"
OPTIMIZER_META_FILE = "optimizer.json"
STATE_FILE = "state.json"


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Save tensors, storing tensors that share memory once and recording the aliases."""
    kept: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    by_pointer: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for name, tensor in tensors.items():
        key = (tensor.data_ptr(), tensor.numel(), tuple(tensor.shape))
        if tensor.numel() and key in by_pointer:
            aliases[name] = by_pointer[key]
            continue
        by_pointer[key] = name
        kept[name] = tensor.detach().to("cpu").contiguous().clone()
    save_file(kept, str(path), metadata={"aliases": json.dumps(aliases)})


def load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A safetensors file as a state dict, with the tensors stored once for several names
    (the file's ``aliases`` metadata, JSON alias -> stored name) restored under every name."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    tensors = load_file(str(path), device=str(device))
    for alias, name in json.loads(metadata.get("aliases", "{}")).items():
        tensors[alias] = tensors[name]
    return tensors


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
    _save_tensors(model.state_dict() if model is not None else weights, directory / MODEL_FILE)
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
        _save_tensors(tensors, directory / OPTIMIZER_FILE)
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


def load_weights(model: nn.Module, directory: Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load ``model.safetensors`` into ``model`` (strict: every key must match)."""
    path = Path(directory) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {MODEL_FILE} in checkpoint {str(directory)!r}")
    model.load_state_dict(load_tensors(path, device), strict=True)
    return model


def load_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> bool:
    """Restore AdamW state from a checkpoint; False when it holds none."""
    directory = Path(directory)
    if not (directory / OPTIMIZER_FILE).is_file():
        return False
    meta = json.loads((directory / OPTIMIZER_META_FILE).read_text())
    state: dict[int, dict[str, Any]] = {}
    for flat, value in list(load_tensors(directory / OPTIMIZER_FILE).items()) + list(
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


def build_model_from_config(config: dict[str, Any]) -> nn.Module:
    """Rebuild the (untrained) model a resolved config describes, via ``tuner.models``."""
    from tuner.models import build_model

    return build_model(
        config["family"],
        img_size=int(config["img_size"]),
        in_chans=int(config.get("in_chans", 1)),
        num_classes=len(config["class_names"]),
        **config["model"],
    )


def load_model(directory: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Model with trained weights and its resolved config from a checkpoint directory
    (e.g. a trial's downloaded ``checkpoint/`` artifact); the model is in eval mode."""
    config = read_config(directory)
    model = load_weights(build_model_from_config(config), directory, device)
    return model.to(device).eval(), config
