"""The registered model: an MLflow "models-from-code" pyfunc that rebuilds the network.

A registered lenstune model is an MLflow model directory whose ``artifacts/`` hold

- ``config.json``: family, image size, input channels, model keyword arguments, class names and
  the digest of the dataset it was trained on (:class:`ModelConfig`);
- ``model.safetensors``: the weights, a flat tensor file.

A hyper-ensemble is registered the same way: its ``config.json`` lists the members (each a
config of this form, a weight and the trial run it came from) and its ``model.safetensors`` holds
every member's weights under ``members.<i>.net.``; it loads as one
:class:`tuner.uncertainty.ensemble.WeightedEnsemble` module.

Loading rebuilds the network with ``tuner.models.build_model`` and copies the weights in, so no
Python object is ever unpickled: the model code is ours (the installed ``lenstune``) and the
artifact holds only numbers and JSON. MLflow's models-from-code entry script is generated at save
time, which keeps this module free of import-time side effects.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel
from torch import nn

from tuner.models.io import (CONFIG_FILE, WEIGHTS_FILE, ModelConfig, WeightsError, load_network,
                             predict_probs)

_ENTRY_SCRIPT = '''\
"""MLflow models-from-code entry: the network is rebuilt by lenstune, weights come from safetensors."""
import mlflow
from tuner.registry.pyfunc import LensTuneModel

mlflow.models.set_model(LensTuneModel())
'''


class InputError(ValueError):
    """Images given for prediction have the wrong shape, size or values."""


class ModelOutputError(MlflowException):
    """The model gave NaN or infinite probabilities (damaged or diverged weights): nothing is
    returned. An MlflowException so that ``mlflow models serve`` answers with this message
    (HTTP 500) rather than a generic one."""


def check_finite_probs(probs: np.ndarray, names: list[str] | None = None) -> None:
    """Raise :class:`ModelOutputError` when any row of ``probs`` (N, C) is not finite; the
    message counts the images and names the first (by ``names`` or index)."""
    bad = ~np.isfinite(np.asarray(probs, dtype=np.float64)).reshape(len(probs), -1).all(axis=1)
    if not bad.any():
        return
    first = int(np.flatnonzero(bad)[0])
    where = names[first] if names is not None else f"index {first}"
    raise ModelOutputError(
        f"the model gave NaN or infinite probabilities for {int(bad.sum())} of {len(probs)} "
        f"image(s) (first: {where}); its weights hold non-finite values or the network "
        f"overflowed, so no prediction is returned"
    )


def accepted_sizes(config: ModelConfig) -> set[int]:
    """Image sides a model takes as they are: its input size, its training images' size and the
    size those were made from."""
    return {config.img_size, config.data_image_size or config.img_size,
            config.native_image_size or config.img_size}


def as_image_batch(images: Any, config: ModelConfig, *, resize: bool = False) -> np.ndarray:
    """Validate images for ``config``'s model; returns float32 (N, 1, H, W), not yet resized.

    Accepts (H, W) one image, (N, H, W) or (N, 1, H, W). Refuses empty input, non-finite values
    and other shapes. Sizes accepted as they are (:func:`accepted_sizes`): the model's input
    size, the size of the images it was trained on and the size those were made from, all
    prepared by the training preparation. Any other size is refused unless ``resize`` is true,
    in which case a warning says the images will be resized.
    """
    array = np.asarray(images)
    if array.dtype == object or not np.issubdtype(array.dtype, np.number):
        raise InputError(f"images must be a numeric array, got dtype {array.dtype}")
    if array.size == 0:
        raise InputError(f"no images: the input array is empty (shape {array.shape})")
    if array.ndim == 2:
        array = array[None, None]
    elif array.ndim == 3:
        array = array[:, None]
    elif array.ndim != 4 or array.shape[1] != config.in_chans:
        raise InputError(
            f"images must have shape (H, W), (N, H, W) or (N, {config.in_chans}, H, W); "
            f"got {array.shape}"
        )
    array = array.astype(np.float32, copy=False)
    bad = ~np.isfinite(array).reshape(len(array), -1).all(axis=1)
    if bad.any():
        raise InputError(
            f"{int(bad.sum())} image(s) contain NaN or infinite values (first at index "
            f"{int(np.flatnonzero(bad)[0])})"
        )
    h, w = array.shape[-2:]
    allowed = sorted(accepted_sizes(config))
    if h != w or h not in allowed:
        sizes = " or ".join(f"{s}x{s}" for s in allowed)
        if not resize:
            raise InputError(
                f"the model takes {sizes} images, got {h}x{w}; prepare them like the training "
                f"data or allow resizing (lenstune predict --resize)"
            )
        warnings.warn(
            f"resizing {h}x{w} images to {config.img_size}x{config.img_size} (area average or "
            f"bilinear, then per-image min-max, as training data are prepared); the model was "
            f"trained on {sizes} images",
            stacklevel=2,
        )
    return np.ascontiguousarray(array)


def probs_frame(probs: np.ndarray, class_names: tuple[str, ...]):
    """A DataFrame with one ``prob_<class>`` column per class and ``predicted_class``."""
    import pandas as pd

    frame = pd.DataFrame({f"prob_{name}": probs[:, i] for i, name in enumerate(class_names)})
    frame["predicted_class"] = [class_names[i] for i in probs.argmax(axis=1)]
    return frame


class LensTuneModel(PythonModel):
    """pyfunc wrapper: (N, 1, H, W) float32 images in, per-class probabilities out."""

    def load_context(self, context) -> None:
        self.config = read_model_config(Path(context.artifacts["config"]))
        # WeightsError naming the file when the weights are damaged (SHA-256 checked)
        self.network = load_network(self.config, Path(context.artifacts["weights"]))

    def predict(self, context, model_input: np.ndarray, params=None):
        # params {"resize": true} (``mlflow models serve``: "params" beside "inputs") prepares
        # images of other sizes too, with the same code and a warning
        images = as_image_batch(model_input, self.config,
                                resize=bool((params or {}).get("resize", False)))
        probs = predict_probs(self.network, images, self.config.img_size)
        check_finite_probs(probs)  # ModelOutputError rather than empty probabilities
        return probs_frame(probs, self.config.class_names)


def read_model_config(path: Path) -> ModelConfig:
    """A model's ``config.json``; ValueError naming the file, in one line, when it is damaged."""
    try:
        return ModelConfig(**json.loads(Path(path).read_text()))
    except (ValueError, TypeError, UnicodeDecodeError) as exc:  # JSON or validation errors
        detail = " ".join(str(exc).split())
        raise ValueError(f"{path} is not a valid lenstune model config: {detail}") from exc


def model_signature(config: ModelConfig):
    """Tensor input (-1, in_chans, -1, -1) float32; one column per class + label; the
    parameter ``resize`` (boolean, default false). Height and width are free in the signature
    because the model takes raw images of the sizes it was trained from (and its input size)
    and prepares them itself; :func:`model_metadata` names those sizes in the MLmodel file,
    and ``as_image_batch`` refuses other sizes, naming the allowed ones, unless ``resize``."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, config.in_chans, -1, -1))])
    columns = [ColSpec("double", f"prob_{name}") for name in config.class_names]
    outputs = Schema(columns + [ColSpec("string", "predicted_class")])
    params = ParamSchema([ParamSpec("resize", "boolean", False)])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def model_metadata(config: ModelConfig) -> dict[str, Any]:
    """What the model accepts and how it prepares images, written into its MLmodel file
    (``metadata.lenstune``) beside the signature."""
    return {"lenstune": {
        "family": config.family, "class_names": list(config.class_names),
        "accepted_image_sizes": sorted(accepted_sizes(config)), "input_size": config.img_size,
        "channels": config.in_chans, "preparation": config.preprocessing,
        "other_sizes": "refused unless params {\"resize\": true} (lenstune predict --resize)"}}


def _pip_requirements() -> list[str]:
    """Pinned runtime requirements. lenstune itself must be installed where the model is served
    (it holds the family code); it is not on a package index, so it is not listed."""
    import mlflow
    import safetensors
    import timm

    return [
        f"mlflow=={mlflow.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
        f"timm=={timm.__version__}",
        f"safetensors=={safetensors.__version__}",
        "numpy",
        "pandas",
        "pydantic>=2",
    ]


def save_registry_model(
    path: Path, config: ModelConfig, weights_path: Path, input_example: np.ndarray
) -> Path:
    """Write an MLflow model directory at ``path`` (must not exist) holding config + weights.

    ``input_example`` is a small (n, 1, H, W) float32 batch stored with the model.
    """
    import mlflow

    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        (tmp_dir / CONFIG_FILE).write_text(config.model_dump_json(indent=2))
        shutil.copyfile(weights_path, tmp_dir / WEIGHTS_FILE)  # fixed name inside the model
        entry = tmp_dir / "lenstune_model.py"
        entry.write_text(_ENTRY_SCRIPT)
        mlflow.pyfunc.save_model(
            path=str(path),
            python_model=str(entry),
            artifacts={"config": str(tmp_dir / CONFIG_FILE), "weights": str(tmp_dir / WEIGHTS_FILE)},
            signature=model_signature(config),
            metadata=model_metadata(config),
            input_example=np.asarray(input_example, dtype=np.float32),
            pip_requirements=_pip_requirements(),
        )
    return path


def find_model_files(model_dir: Path) -> tuple[Path, Path]:
    """Paths of ``config.json`` and ``model.safetensors`` inside a downloaded model directory."""
    model_dir = Path(model_dir)
    for folder in (model_dir / "artifacts", model_dir):
        if (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file():
            return folder / CONFIG_FILE, folder / WEIGHTS_FILE
    raise FileNotFoundError(
        f"{model_dir} is not a lenstune model: no artifacts/{CONFIG_FILE} + {WEIGHTS_FILE}"
    )


def _model_version(client, uri: str):
    """The registry's ModelVersion behind ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``."""
    ref = uri[len("models:/") :].strip("/")
    if "@" in ref:
        return client.get_model_version_by_alias(*ref.split("@", 1))
    if "/" in ref:
        return client.get_model_version(*ref.rsplit("/", 1))
    raise ValueError(f"model URI {uri!r} names no version or alias: use models:/NAME@ALIAS")


def resolve_model_uri(uri: str, tracking_uri: str | None) -> str:
    """The artifact location behind ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``, looked
    up in the registry at ``tracking_uri``; other URIs are returned unchanged.

    Resolving here keeps the registry explicit: MLflow's own ``models:/`` download path reads
    the process-wide registry URI.
    """
    if not uri.startswith("models:/"):
        return uri
    from tuner.tracking.store import mlflow_client

    client = mlflow_client(tracking_uri)
    version = _model_version(client, uri)
    return client.get_model_version_download_uri(version.name, str(version.version))


def model_run_id(uri: str, tracking_uri: str | None) -> str | None:
    """The MLflow run a ``runs:/RUN_ID/...`` or ``models:/...`` model came from (registry at
    ``tracking_uri``); None for a local folder."""
    if uri.startswith("runs:/"):
        return uri[len("runs:/") :].split("/", 1)[0]
    if not uri.startswith("models:/"):
        return None
    from tuner.tracking.store import mlflow_client

    client = mlflow_client(tracking_uri)
    return _model_version(client, uri).run_id


def load_registered(
    uri: str, *, tracking_uri: str | None = None, dst_dir: Path | None = None
) -> tuple[nn.Module, ModelConfig]:
    """Load a registered model as a plain ``nn.Module`` (eval mode) and its config.

    ``uri``: any MLflow model URI (``models:/lenstune-model_ii@champion``, ``runs:/...``) or a
    local model directory; ``tracking_uri`` (also used as registry URI) defaults to MLflow's
    (``MLFLOW_TRACKING_URI``). Weights-only: nothing is unpickled. A damaged model (weights
    truncated, modified or not fitting the config; config unreadable) raises WeightsError or
    ValueError in one line naming the model and the file.
    """
    local = Path(uri)
    if ":/" not in uri and local.is_dir():
        model_dir = local
    else:
        import mlflow

        model_dir = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=resolve_model_uri(uri, tracking_uri),
                dst_path=None if dst_dir is None else str(dst_dir),
                tracking_uri=tracking_uri,
            )
        )
    config_path, weights_path = find_model_files(model_dir)
    try:
        config = read_model_config(config_path)
        return load_network(config, weights_path), config
    except WeightsError as exc:
        detail = " ".join(str(exc).split())
        raise WeightsError(f"model {uri} cannot be used: {detail}") from exc
    except ValueError as exc:
        raise ValueError(f"model {uri} cannot be used: {exc}") from exc
