"""Temperature scaling (Guo et al. 2017): one scalar T > 0 dividing the logits, fitted by
minimising the negative log-likelihood on the validation split. Dividing by a positive scalar
never changes the predicted class, only the confidence."""

from __future__ import annotations

import torch
from torch import nn

from tuner.uncertainty.predictive import Predictive, collect_logits


class TemperatureScaler:
    """Holds the fitted temperature. ``fit`` returns ``self`` so it chains."""

    def __init__(self, temperature: float = 1.0):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def fit(
        self, logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 200
    ) -> "TemperatureScaler":
        """Fit T on validation ``logits`` (N, C) and integer ``labels`` (N,).

        Optimises log T (so T stays positive) with L-BFGS in float64; the NLL is convex in
        1/T, so the optimum is unique.
        """
        logits = torch.as_tensor(logits).detach().double()
        labels = torch.as_tensor(labels).long()
        if logits.ndim != 2 or labels.shape != (logits.shape[0],) or logits.shape[0] == 0:
            raise ValueError(
                f"expected logits (N, C) and labels (N,) with N > 0, got {tuple(logits.shape)} "
                f"and {tuple(labels.shape)}"
            )
        log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = nn.functional.cross_entropy(logits / log_t.exp(), labels)
            loss.backward()
            return loss

        opt.step(closure)
        self.temperature = float(log_t.detach().exp())
        return self

    def scale(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities (N, C) from logits (N, C)."""
        return (torch.as_tensor(logits).float() / self.temperature).softmax(-1)


class TemperatureScaled:
    """A trained model whose logits are divided by a fitted temperature."""

    def __init__(self, model: nn.Module, scaler: TemperatureScaler, batch_size: int = 256):
        self.model = model
        self.scaler = scaler
        self.batch_size = batch_size

    @classmethod
    def fit(
        cls, model: nn.Module, images_val: torch.Tensor, labels_val: torch.Tensor, batch_size: int = 256
    ) -> "TemperatureScaled":
        """Fit the temperature on a validation split (images (N, 1, H, W), labels (N,))."""
        logits = collect_logits(model, images_val, batch_size)
        return cls(model, TemperatureScaler().fit(logits, labels_val), batch_size)

    def predict(self, images: torch.Tensor) -> Predictive:
        logits = collect_logits(self.model, images, self.batch_size)
        return Predictive(probs=self.scaler.scale(logits), forward_passes=1)
