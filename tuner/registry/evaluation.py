"""The test evaluation of a model: its metrics (:class:`Evaluation`), computed through the one
prediction path (:func:`tuner.models.io.predict_probs`), and the files that show them
(``metrics.json``, ``probs.npz``, ``roc.json``, ``evaluation.png``), logged by promotion under
``registered_model/evaluation/`` of the trial run and read back by ``lenstune report``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from tuner import metrics
from tuner.models.io import ModelConfig, predict_probs
from tuner.registry.pyfunc import accepted_sizes
from tuner.tracking.reader import PromotionError

PROBS_FILE = "probs.npz"


class Evaluation(BaseModel):
    """Test-split metrics of one model. AUCs are one-vs-rest; ``confusion[true][pred]`` counts."""

    model_config = ConfigDict(frozen=True)

    auc_macro: float
    auc: dict[str, float]
    acc: float
    ece: float
    nll: float
    brier: float
    confusion: list[list[int]]
    n_images: int
    dataset_digest: str

    def metrics(self, prefix: str = "test_") -> dict[str, float]:
        """Flat MLflow metrics, e.g. ``test_auc_macro``, ``test_auc_cdm``, ``test_ece``."""
        out = {"auc_macro": self.auc_macro, "acc": self.acc, "ece": self.ece,
               "nll": self.nll, "brier": self.brier}
        out.update({f"auc_{name}": value for name, value in self.auc.items()})
        return {prefix + key: float(value) for key, value in out.items()}



def evaluate(model, config: ModelConfig, split, what: str) -> tuple[Evaluation, np.ndarray]:
    """Test metrics of ``model`` on a loaded split; also returns the (N, C) probabilities.
    ``what`` names the model in errors (classes or image size that do not fit the split)."""
    class_names = config.class_names
    if tuple(split.meta.class_names) != tuple(class_names):
        raise PromotionError(f"{what} predicts classes {list(class_names)} but the test split "
                             f"has {list(split.meta.class_names)}")
    sizes = accepted_sizes(config)
    if split.meta.image_size not in sizes:
        raise PromotionError(
            f"{what} was trained on {sorted(sizes)}px images but the test split has "
            f"{split.meta.image_size}px; compare models of one image size (choose another "
            f"registered model name with --model-name)")
    probs = predict_probs(model, split.images.numpy(), config.img_size)
    labels = split.labels.numpy()
    auc = metrics.roc_auc_ovr(probs, labels, list(class_names))
    evaluation = Evaluation(
        auc_macro=auc.pop("macro"),
        auc=auc,
        acc=metrics.accuracy(probs, labels),
        ece=metrics.ece(probs, labels),
        nll=metrics.nll(probs, labels),
        brier=metrics.brier(probs, labels),
        confusion=metrics.confusion_matrix(probs, labels, len(class_names)).tolist(),
        n_images=len(labels),
        dataset_digest=split.meta.digest,
    )
    return evaluation, probs



def write_evaluation(folder: Path, evaluation: Evaluation, probs: np.ndarray, labels: np.ndarray,
                     class_names: tuple[str, ...]) -> Path:
    """Write ``metrics.json``, ``probs.npz`` (the (N, C) probabilities and the labels),
    ``roc.json`` (fpr/tpr per class) and ``evaluation.png`` (ROC, confusion matrix, reliability
    diagram) into ``folder``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(evaluation.model_dump_json(indent=2))
    np.savez(folder / PROBS_FILE, probs=np.asarray(probs, dtype=np.float64),
             labels=np.asarray(labels, dtype=np.int64))
    roc = {}
    fig, (ax_roc, ax_cm, ax_rel) = plt.subplots(1, 3, figsize=(15, 4.5))
    for c, name in enumerate(class_names):
        fpr, tpr = metrics.roc_curve(probs[:, c], labels == c)
        roc[name] = {"fpr": fpr.tolist(), "tpr": tpr.tolist()}
        ax_roc.plot(fpr, tpr, label=f"{name} (AUC {evaluation.auc[name]:.4f})")
    (folder / "roc.json").write_text(json.dumps(roc))
    ax_roc.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax_roc.set(xlabel="false positive rate", ylabel="true positive rate",
               title=f"test ROC, macro AUC {evaluation.auc_macro:.4f}")
    ax_roc.legend(loc="lower right")
    cm = np.asarray(evaluation.confusion)
    ax_cm.imshow(cm, cmap="Blues")
    for (i, j), count in np.ndenumerate(cm):
        ax_cm.text(j, i, str(count), ha="center", va="center")
    ax_cm.set(xticks=range(len(class_names)), yticks=range(len(class_names)),
              xticklabels=class_names, yticklabels=class_names,
              xlabel="predicted", ylabel="true", title=f"confusion, accuracy {evaluation.acc:.3f}")
    conf, acc, counts = metrics.calibration_bins(probs, labels)
    keep = counts > 0
    ax_rel.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax_rel.plot(conf[keep], acc[keep], "o-")
    ax_rel.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
               title=f"reliability, ECE {evaluation.ece:.4f}, NLL {evaluation.nll:.4f}")
    fig.tight_layout()
    fig.savefig(folder / "evaluation.png", dpi=100)
    plt.close(fig)
    return folder
