"""Checkpoints that load without unpickling: safetensors for tensors, JSON for the rest.

A checkpoint directory holds
- ``model.safetensors``: the model's state dict (shared tensors stored once);
- ``config.json``: the resolved config (family, img_size, model kwargs, train kwargs,
  class names, dataset digest, ...), enough to rebuild the model with ``build_model``;
- optionally ``optimizer.safetensors`` + ``optimizer.json`` (AdamW state and param groups)
  and ``state.json`` (epoch, scheduler step, best metric, MLflow run id) to resume training.

The safetensors files carry the SHA-256 of their tensors (:func:`tuner.models.io.save_weights`);
restoring checks it, and a damaged, truncated or modified file raises :class:`CheckpointError`
naming the checkpoint folder and the file. :func:`newest_intact_checkpoint` picks, among a
trial's ``checkpoint_*`` folders, the newest one that loads intact, for a fallback.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from tuner.models import io

MODEL_FILE = io.WEIGHTS_FILE
CONFIG_FILE = io.CONFIG_FILE
OPTIMIZER_FILE = "optimizer.safetensors"
OPTIMIZER_META_FILE = "optimizer.json"
STATE_FILE = "state.json"


class CheckpointError(io.WeightsError):
    """A checkpoint that cannot be restored: a damaged, truncated or modified weights file, or
    an unreadable JSON file; the message names the checkpoint folder and the file."""


def _read_json(directory: Path, name: str) -> Any:
    path = Path(directory) / name
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint {directory}: {name} is damaged (not valid JSON: "
                              f"{exc})") from exc


def _load_tensors(directory: Path, name: str, device: str | torch.device = "cpu"
                  ) -> dict[str, torch.Tensor]:
    try:
        return io.load_weights(Path(directory) / name, device)
    except io.WeightsError as exc:
        raise CheckpointError(f"checkpoint {directory} cannot be restored: {exc}") from exc


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
    return _read_json(Path(directory), CONFIG_FILE)


def restore_weights(model: nn.Module, directory: Path,
                    device: str | torch.device = "cpu") -> nn.Module:
    """Load a checkpoint's ``model.safetensors`` into ``model`` (strict: every key must match).
    CheckpointError naming the folder when the file is damaged or does not fit ``model``."""
    path = Path(directory) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {MODEL_FILE} in checkpoint {str(directory)!r}")
    state = _load_tensors(Path(directory), MODEL_FILE, device)
    try:
        return io.load_state_strict(model, state, path)
    except io.WeightsError as exc:
        raise CheckpointError(f"checkpoint {directory} cannot be restored: {exc}") from exc


def load_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> bool:
    """Restore AdamW state from a checkpoint; False when it holds none."""
    directory = Path(directory)
    if not (directory / OPTIMIZER_FILE).is_file():
        return False
    meta = _read_json(directory, OPTIMIZER_META_FILE)
    state: dict[int, dict[str, Any]] = {}
    for flat, value in list(_load_tensors(directory, OPTIMIZER_FILE).items()) + list(
        meta["scalars"].items()
    ):
        index, key = flat.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return True


def read_state(directory: Path) -> dict[str, Any]:
    """Training state (epoch, scheduler step, best metric, run id); {} when absent."""
    path = Path(directory) / STATE_FILE
    return _read_json(Path(directory), STATE_FILE) if path.is_file() else {}


def load_model(directory: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Model with trained weights and its resolved config from a checkpoint directory
    (e.g. a trial's downloaded ``checkpoint/`` artifact); the model is in eval mode."""
    config = read_config(directory)
    model = restore_weights(io.build_network(io.ModelConfig.from_checkpoint_config(config)),
                            directory, device)
    return model.to(device).eval(), config


# ------------------------------------------------------------------------------- integrity


def check_checkpoint(directory: Path) -> None:
    """Read every file of a checkpoint as restoring it would, without building a model: the
    config and state JSON, the weights (their SHA-256 checked) and the optimizer files where
    present. Raises FileNotFoundError (no weights or config) or CheckpointError naming the
    folder and the damaged file."""
    directory = Path(directory)
    read_config(directory)
    if not (directory / MODEL_FILE).is_file():
        raise FileNotFoundError(f"no {MODEL_FILE} in checkpoint {str(directory)!r}")
    _load_tensors(directory, MODEL_FILE)
    if (directory / OPTIMIZER_FILE).is_file():
        _load_tensors(directory, OPTIMIZER_FILE)
        _read_json(directory, OPTIMIZER_META_FILE)
    read_state(directory)


class IntactCheckpoint(NamedTuple):
    """The newest checkpoint that loads intact (None if none does) and the newer ones skipped,
    each with the reason, newest first; ``value``: what ``use`` returned for it."""

    path: Path | None
    skipped: tuple[tuple[Path, str], ...]
    value: Any = None

    def warning(self) -> str | None:
        """One line for the log when newer checkpoints were skipped; None otherwise."""
        if not self.skipped:
            return None
        reasons = "; ".join(f"{path.name}: {reason}" for path, reason in self.skipped)
        target = f"falling back to {self.path}" if self.path else "no intact checkpoint left"
        return f"skipped {len(self.skipped)} damaged checkpoint(s) ({reasons}); {target}"


_CHECKPOINT_NAME = re.compile(r"^checkpoint_(\d+)$")


def trial_checkpoints(trial_dir: Path) -> list[Path]:
    """The ``checkpoint_<N>`` folders of a Ray Tune trial folder, oldest (smallest N) first."""
    found = []
    for child in Path(trial_dir).iterdir():
        match = _CHECKPOINT_NAME.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def checkpoint_index(name: str) -> int | None:
    """N of a ``checkpoint_<N>`` folder name, else None."""
    match = _CHECKPOINT_NAME.match(name)
    return int(match.group(1)) if match else None


def newest_intact_checkpoint(checkpoints: Path | Sequence[Any],
                             use: Callable[[Path], Any] | None = None) -> IntactCheckpoint:
    """The newest checkpoint that loads intact (:func:`check_checkpoint`), for resuming after
    the latest one turned out damaged.

    ``checkpoints``: a Ray Tune trial folder (its ``checkpoint_<N>`` folders, newest = largest
    N), or a sequence, oldest first, of checkpoint folders or of Ray Tune checkpoints (anything
    with ``as_directory()`` and ``path``: on local disk or S3). Checkpoints are tried newest
    first; the result holds the first intact one (None if none is), the newer ones skipped with
    their reasons (``warning()`` words them for the log), and ``use(folder)`` of the intact one,
    called while its folder exists (a checkpoint on S3 is downloaded only meanwhile).
    """
    candidates = (trial_checkpoints(checkpoints) if isinstance(checkpoints, (str, Path))
                  else list(checkpoints))
    skipped: list[tuple[Path, str]] = []
    for candidate in reversed(candidates):
        opened = (candidate.as_directory() if hasattr(candidate, "as_directory")
                  else contextlib.nullcontext(candidate))
        name = Path(str(getattr(candidate, "path", candidate)))
        try:
            with opened as folder:
                check_checkpoint(Path(folder))
                value = use(Path(folder)) if use is not None else None
        except (CheckpointError, FileNotFoundError, OSError) as exc:
            skipped.append((name, str(exc)))
            continue
        return IntactCheckpoint(name, tuple(skipped), value)
    return IntactCheckpoint(None, tuple(skipped))
