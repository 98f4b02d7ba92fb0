"""Model I/O: the one way lenstune builds a network from its config, stores and loads its
weights, and predicts with it.

Everything that holds a trained network goes through here: the trainable (build, validation
predictions, checkpoint weights), promotion (test evaluation), the registered pyfunc
(``mlflow models serve``), ``lenstune predict``, the hyper-ensembles and the uncertainty methods.

- :class:`ModelConfig` is the contract: family, input size, model keyword arguments, class names,
  the image preparation and the size of the images it was trained from; stored as JSON next to
  the weights in every checkpoint and registered model.
- :func:`build_network` turns a config into a freshly initialised network (a
  :class:`WeightedEnsemble` for a hyper-ensemble config).
- :func:`save_weights` / :func:`load_weights` write and read a safetensors file (tensors only,
  tied tensors stored once): nothing is ever unpickled. The file records the SHA-256 of its
  tensors, which loading checks: a damaged, truncated or modified file raises
  :class:`WeightsError` naming it instead of loading wrong numbers.
- :func:`predict_probs` is the batched prediction: images of any size are prepared for the
  network by :func:`tuner.data.preprocess.prepare_images`, as its training images were, on the
  network's device, with autocast on CUDA.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from tuner.data.preprocess import METHOD as PREPARATION
from tuner.data.preprocess import prepare_images

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
ENSEMBLE_FAMILY = "hyper_ensemble"  # family of a registered hyper-ensemble's config
_EPS = 1e-12


class ModelConfig(BaseModel):
    """Everything needed to rebuild a trained network and prepare its input, stored as
    ``config.json`` with its weights."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    family: str
    img_size: int = Field(gt=0, description="side of the square network input (pixels)")
    in_chans: int = Field(1, gt=0)
    model: dict[str, Any] = Field(default_factory=dict, description="build_model keyword arguments")
    class_names: tuple[str, ...] = ("no_sub", "cdm", "axion")
    dataset_digest: str | None = None
    data_image_size: int | None = Field(
        None, gt=0, description="side of the training images (pixels), prepared for img_size"
    )
    native_image_size: int | None = Field(
        None, gt=0, description="side of the images the training set was made from (a dataset "
        "simulated at a smaller size records its preset's size): raw images of this size are "
        "prepared exactly as the training images were")
    members: tuple[EnsembleMember, ...] = Field(
        (), description="hyper-ensemble members; empty for a single network"
    )
    preprocessing: str = Field(PREPARATION, description="how input images are prepared "
                               "(tuner/data/preprocess.py), as for the training images")
    study_config: dict[str, Any] = Field(
        default_factory=dict, description="the resolved configuration of the study that "
        "trained the network (tuner.study.config.StudyConfig), from its checkpoint")

    @property
    def is_ensemble(self) -> bool:
        return bool(self.members)

    @field_validator("class_names")
    @classmethod
    def _at_least_two(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        if len(names) < 2:
            raise ValueError(f"need at least two class names, got {list(names)}")
        return names

    @classmethod
    def from_checkpoint_config(cls, raw: dict[str, Any]) -> ModelConfig:
        """A trial checkpoint's resolved config (``config.json``) in this form.

        Accepts the model kwargs under ``model`` (or ``model_kwargs``) and the dataset digest as
        ``dataset_digest``, ``digest`` or ``dataset.digest``; other keys (train kwargs, ...) are
        not needed to rebuild the network and are dropped.
        """
        dataset = raw.get("dataset") if isinstance(raw.get("dataset"), dict) else {}
        digest = dataset.get("digest") or raw.get("dataset_digest") or raw.get("digest")
        model = raw.get("model", raw.get("model_kwargs", {})) or {}
        fields = {
            "family": raw.get("family"),
            "img_size": raw.get("img_size"),
            "in_chans": raw.get("in_chans", 1),
            "model": model,
            "dataset_digest": digest,
        }
        if raw.get("class_names"):
            fields["class_names"] = tuple(raw["class_names"])
        if isinstance(raw.get("study_config"), dict):
            fields["study_config"] = raw["study_config"]
        return cls(**fields)


class EnsembleMember(BaseModel):
    """One member of a registered hyper-ensemble: its network, weight and trial run."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    config: ModelConfig
    weight: float = Field(gt=0, description="share of the member in the averaged probabilities")
    run_id: str | None = None


ModelConfig.model_rebuild()


# ---------------------------------------------------------------------------------- networks


class PreparedMember(nn.Module):
    """A member network behind the preparation it was trained with: (B, 1, H, W) images of any
    size are prepared for ``img_size`` (:func:`tuner.data.preprocess.prepare_images`) before
    ``net``."""

    def __init__(self, net: nn.Module, img_size: int):
        super().__init__()
        self.net, self.img_size = net, int(img_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(prepare_images(x, self.img_size))


class WeightedEnsemble(nn.Module):
    """Weighted average of member softmaxes as one module (a registered hyper-ensemble).

    ``forward`` maps (B, 1, H, W) to the log of the weighted mean probability (B, C), so it can
    stand in for logits: ``softmax(forward(x))`` is the ensemble's predictive distribution.
    ``members`` is a ModuleList of :class:`PreparedMember`; ``weights`` (M,) sum to 1.
    """

    def __init__(self, nets: Sequence[nn.Module], img_sizes: Sequence[int], weights: Sequence[float]):
        super().__init__()
        w = np.asarray(weights, dtype=np.float64)
        if len(nets) == 0 or w.shape != (len(nets),) or len(img_sizes) != len(nets) or np.any(w <= 0):
            raise ValueError(f"need M >= 1 members, M image sizes and M positive weights; got "
                             f"{len(nets)} members, {len(img_sizes)} sizes, weights {list(w)}")
        self.members = nn.ModuleList(PreparedMember(n, s) for n, s in zip(nets, img_sizes))
        self.weights = (w / w.sum()).tolist()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = sum(w * m(x).float().softmax(-1) for w, m in zip(self.weights, self.members))
        return probs.clamp_min(_EPS).log()  # (B, C)


def build_network(config: ModelConfig) -> nn.Module:
    """A freshly initialised network of ``config``'s family and shape, in eval mode (for an
    ensemble, a :class:`WeightedEnsemble` of freshly initialised members)."""
    if config.members:
        return WeightedEnsemble([build_network(m.config) for m in config.members],
                                [m.config.img_size for m in config.members],
                                [m.weight for m in config.members]).eval()
    from tuner.models.registry import build_model

    model = build_model(config.family, img_size=config.img_size, in_chans=config.in_chans,
                        num_classes=len(config.class_names), **config.model)
    return model.eval()


# ----------------------------------------------------------------------------------- weights


class WeightsError(ValueError):
    """A weights file that cannot be used: damaged or truncated, its contents not those written
    (SHA-256 mismatch), or tensors that do not fit the network; the message names the file."""


DIGEST_KEY = "sha256"  # safetensors metadata: SHA-256 of the stored tensors (tensors_sha256)


def tensors_sha256(tensors: dict[str, torch.Tensor], aliases: dict[str, str] | None = None) -> str:
    """SHA-256 (hex) of a state dict's contents, as :func:`save_weights` records it: for each
    tensor in sorted name order, a length-prefixed JSON ``[name, dtype, shape]`` and its raw
    C-order bytes, then the ``aliases`` JSON (sorted keys). Independent of the file layout, so
    it checks the numbers, not the bytes of one safetensors writer."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        if tensor.device.type != "cpu":
            tensor = tensor.cpu()
        tensor = tensor.contiguous()
        header = json.dumps([name, str(tensor.dtype).removeprefix("torch."),
                             list(tensor.shape)]).encode()
        h.update(len(header).to_bytes(8, "little") + header)
        if tensor.numel():
            h.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))
    h.update(json.dumps(aliases or {}, sort_keys=True).encode())
    return h.hexdigest()


def save_weights(tensors: dict[str, torch.Tensor] | nn.Module, path: Path) -> Path:
    """Write a state dict (or a module's) as safetensors; tensors sharing memory (tied
    weights) are stored once and their other names recorded in the ``aliases`` metadata, the
    contents' SHA-256 (:func:`tensors_sha256`) in the ``sha256`` metadata."""
    if isinstance(tensors, nn.Module):
        tensors = tensors.state_dict()
    from safetensors.torch import save_file

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
    save_file(kept, str(path), metadata={"aliases": json.dumps(aliases),
                                         DIGEST_KEY: tensors_sha256(kept, aliases)})
    return Path(path)


def load_weights(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A safetensors file as a state dict, tied tensors restored under every name.

    A file written with a ``sha256`` (every file :func:`save_weights` writes) is checked
    against it; older files without it load unchecked. Raises :class:`WeightsError` naming the
    file when it is truncated or damaged or its contents differ from what was written, and
    FileNotFoundError when it does not exist.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
        raise WeightsError(f"weights file {path} is damaged or truncated (not a readable "
                           f"safetensors file: {exc})") from exc
    try:
        aliases = json.loads(metadata.get("aliases", "{}"))
        if not isinstance(aliases, dict) or not set(aliases.values()) <= set(tensors):
            raise ValueError(f"aliases {aliases!r} name tensors the file does not hold")
    except ValueError as exc:
        raise WeightsError(f"weights file {path} is damaged: bad 'aliases' metadata ({exc})") from exc
    expected = metadata.get(DIGEST_KEY)
    if expected is not None:
        found = tensors_sha256(tensors, aliases)
        if found != expected:
            raise WeightsError(
                f"weights file {path} is corrupt: its tensors' SHA-256 {found[:16]}... differs "
                f"from {expected[:16]}... recorded when it was written (the file was modified "
                f"or damaged); restore it from a good copy or re-register the model"
            )
    if torch.device(device).type != "cpu":
        tensors = {name: tensor.to(device) for name, tensor in tensors.items()}
    for alias, name in aliases.items():
        tensors[alias] = tensors[name]
    return tensors


def load_network(config: ModelConfig, weights_path: Path,
                 device: str | torch.device = "cpu") -> nn.Module:
    """The trained network: rebuilt from ``config``, weights loaded strictly, in eval mode.
    WeightsError naming the file when the weights are damaged or do not fit the network."""
    model = build_network(config)
    load_state_strict(model, load_weights(weights_path), weights_path)
    return model.to(device).eval()


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> nn.Module:
    """``model.load_state_dict(state, strict=True)``, with a mismatch (missing, unexpected or
    mis-shaped tensors) raised as WeightsError naming ``path``."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise WeightsError(f"weights file {path} does not fit the network its config "
                           f"describes: {detail[:500]}") from exc
    return model


# -------------------------------------------------------------------------------- prediction


def autocast(device: torch.device):
    """Mixed precision on CUDA (bfloat16 where supported), nothing elsewhere."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


@contextlib.contextmanager
def deliberate_sync(device: torch.device):
    """Marks a planned host synchronisation (once per epoch or prediction): exempt from
    ``torch.cuda.set_sync_debug_mode``, so a debug run in "warn" or "error" mode reports only
    the synchronisations that should not be there."""
    if device.type != "cuda":
        yield
        return
    mode = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode(0)
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(mode)


def prepare_batch(images: torch.Tensor, device: torch.device, img_size: int) -> torch.Tensor:
    """A batch (B, 1, H, W) on ``device`` (copied from the host, or as it is when it already
    lives there), float32, prepared for an ``img_size`` network the way the dataset writer
    prepares images (:func:`tuner.data.preprocess.prepare_images`), channels_last on CUDA."""
    x = prepare_images(images.to(device, non_blocking=True).float(), img_size)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def model_device(model: nn.Module) -> torch.device:
    """The device of a module's first parameter (CPU for a module without any)."""
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """Floating dtype of the model's first parameter (float32 for parameter-free modules)."""
    for param in model.parameters():
        return param.dtype
    return torch.float32


@torch.no_grad()
def predict_probs(model: nn.Module, images: np.ndarray | torch.Tensor, img_size: int, *,
                  device: torch.device | None = None, batch_size: int = 256) -> np.ndarray:
    """Softmax class probabilities (N, C) float64 of images (N, 1, H, W), batch by batch:
    each batch goes to ``device`` (default: the model's), is prepared for ``img_size`` as the
    training images were, and passes the network in eval mode (autocast on CUDA). On CUDA the
    probabilities come back to the host in one copy at the end."""
    device = model_device(model) if device is None else torch.device(device)
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = prepare_batch(images[start:start + batch_size], device, img_size)
        with autocast(device):
            logits = model(x)
        out.append(torch.softmax(logits.float(), dim=1))  # (B, C) float32, on device
    with deliberate_sync(device):
        probs = torch.cat(out).cpu()
    return probs.double().numpy()
