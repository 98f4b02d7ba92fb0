"""Last-layer Laplace approximation (MacKay 1992; Daxberger et al. 2021, "Laplace Redux").

The network up to its final linear layer is kept fixed as a feature map phi(x) (D,); the final
layer's weights and bias theta = [W | b] (C, D+1) get a Gaussian posterior
N(theta_MAP, (H + lambda I)^-1), where H is the generalised Gauss-Newton (equal to the Fisher
for softmax cross-entropy) summed over the fitting data:

    H = sum_n Lambda_n (x) a_n a_n^T,   Lambda_n = diag(p_n) - p_n p_n^T,   a_n = [phi_n, 1]

("full"), or a block-diagonal K-FAC ("kron"): the weight block (1/N sum_n Lambda_n) (x) (sum_n phi_n phi_n^T)
and the exact bias block sum_n Lambda_n, with no weight-bias coupling (the structure
laplace-torch uses). The prior precision lambda maximises the Laplace evidence

    log p(D | lambda) ~ -L(theta_MAP) - 1/2 [log det(H + lambda I) - P log lambda + lambda |theta|^2]

(L the summed cross-entropy, P = C (D+1)), found exactly in one dimension from H's eigenvalues.
The predictive uses the linearised (GLM) logits f ~ N(f_MAP, J Sigma J^T) with the probit
approximation softmax(f_MAP / sqrt(1 + pi/8 diag var)) or Monte Carlo samples of f.
"""

from __future__ import annotations

import math

import torch
from scipy.optimize import minimize_scalar
from torch import nn

from tuner.models.io import model_device, model_dtype
from tuner.uncertainty.predictive import Predictive

_STRUCTURES = ("full", "kron")
_LINKS = ("probit", "mc")


def _find_last_linear(model: nn.Module, last_layer: nn.Linear | str | None) -> nn.Linear:
    if isinstance(last_layer, nn.Linear):
        return last_layer
    if isinstance(last_layer, str):
        modules = dict(model.named_modules())
        layer = modules.get(last_layer)
        if not isinstance(layer, nn.Linear):
            linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
            raise ValueError(f"last_layer {last_layer!r} is not an nn.Linear of the model; linear layers: {linears[-5:]}")
        return layer
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("last-layer Laplace needs a model whose output comes from an nn.Linear; found none")
    return linears[-1]


class LastLayerLaplace:
    """Last-layer Laplace around a trained classifier.

    model: trained nn.Module mapping images (B, 1, H, W) to logits (B, C), its last step being
        ``last_layer`` (an nn.Linear, its module name, or None for the last nn.Linear found).
    hessian_structure: "full" or "kron".
    prior_precision: initial lambda (> 0); ``fit`` optimises it by the evidence unless told not to.
    """

    def __init__(
        self,
        model: nn.Module,
        last_layer: nn.Linear | str | None = None,
        *,
        hessian_structure: str = "full",
        prior_precision: float = 1.0,
        batch_size: int = 256,
    ):
        if hessian_structure not in _STRUCTURES:
            raise ValueError(f"hessian_structure must be one of {_STRUCTURES}, got {hessian_structure!r}")
        if not prior_precision > 0:
            raise ValueError(f"prior_precision must be > 0, got {prior_precision}")
        self.model = model
        self.last_layer = _find_last_linear(model, last_layer)
        if self.last_layer.bias is None:
            raise ValueError("last-layer Laplace expects the last nn.Linear to have a bias")
        self.hessian_structure = hessian_structure
        self.prior_precision = float(prior_precision)
        self.batch_size = batch_size
        self._fitted = False

    # -- features -------------------------------------------------------------------------
    @torch.no_grad()
    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented last-layer inputs a = [phi, 1] (N, D+1) and MAP logits (N, C), float64."""
        captured: list[torch.Tensor] = []
        hook = self.last_layer.register_forward_hook(lambda m, inp, out: captured.append(inp[0]))
        device, dtype = model_device(self.model), model_dtype(self.model)
        was_training = self.model.training
        self.model.eval()
        feats, logits = [], []
        try:
            for i in range(0, images.shape[0], self.batch_size):
                captured.clear()
                out = self.model(images[i : i + self.batch_size].to(device, dtype))
                phi = captured[-1]
                if phi.ndim != 2 or out.ndim != 2:
                    raise ValueError(f"last layer must map (B, D) features to (B, C) logits, got input {tuple(phi.shape)}")
                head = self.last_layer(phi)
                if head.shape != out.shape or not torch.allclose(head, out, atol=1e-4, rtol=1e-4):
                    raise ValueError("the model's output is not the output of last_layer; pass the final nn.Linear")
                feats.append(phi.double().cpu())
                logits.append(out.double().cpu())
        finally:
            hook.remove()
            self.model.train(was_training)
        phi = torch.cat(feats)
        return torch.cat([phi, torch.ones(phi.shape[0], 1, dtype=phi.dtype)], 1), torch.cat(logits)

    # -- fitting --------------------------------------------------------------------------
    def fit(self, images: torch.Tensor, labels: torch.Tensor, optimize_prior: bool = True) -> "LastLayerLaplace":
        """Accumulate the GGN over (images (N, 1, H, W), labels (N,)) — usually the training
        split — and, by default, set the prior precision by maximising the evidence."""
        a, logits = self.features(images)
        y = torch.as_tensor(labels).long()
        if y.shape != (a.shape[0],):
            raise ValueError(f"labels must be ({a.shape[0]},), got {tuple(y.shape)}")
        p = logits.softmax(-1)
        lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # (N, C, C)
        self.loss = float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        self.n_data, self.n_classes, self.n_inputs = a.shape[0], p.shape[1], a.shape[1]
        w = self.last_layer.weight.detach().double().cpu()
        b = self.last_layer.bias.detach().double().cpu()
        self.mean = torch.cat([w, b[:, None]], 1)  # (C, D+1)
        if self.hessian_structure == "full":
            self.H = torch.einsum("nck,nd,ne->cdke", lam, a, a).reshape(self.n_params, self.n_params)
            self.H = 0.5 * (self.H + self.H.T)
            self._eig = torch.linalg.eigvalsh(self.H).clamp_min(0.0)
        else:
            phi = a[:, :-1]
            self.G = lam.sum(0) / self.n_data  # (C, C), the output-side factor
            eg, self.UG = torch.linalg.eigh(self.G)
            ea, self.UA = torch.linalg.eigh(phi.T @ phi)  # input-side factor (D, D)
            eb, self.UB = torch.linalg.eigh(lam.sum(0))  # the bias block, exact: sum_n Lambda_n
            self.eG, self.eA, self.eB = eg.clamp_min(0.0), ea.clamp_min(0.0), eb.clamp_min(0.0)
            self._eig = torch.cat([(self.eG[:, None] * self.eA[None, :]).reshape(-1), self.eB])
        self._fitted = True
        if optimize_prior:
            self.optimize_prior_precision()
        return self

    @property
    def n_params(self) -> int:
        """P = C (D+1), the number of last-layer parameters."""
        return self.n_classes * self.n_inputs

    def _check_fitted(self):
        if not self._fitted:
            raise RuntimeError("call fit(images, labels) before using the Laplace posterior")

    def log_marginal_likelihood(self, prior_precision: float | None = None) -> float:
        """Laplace evidence log p(D | lambda) in nats (at the current lambda if None)."""
        self._check_fitted()
        lam = self.prior_precision if prior_precision is None else float(prior_precision)
        log_det_ratio = float(torch.log(self._eig + lam).sum()) - self.n_params * math.log(lam)
        scatter = lam * float((self.mean**2).sum())
        return -self.loss - 0.5 * (log_det_ratio + scatter)

    def optimize_prior_precision(self, bounds: tuple[float, float] = (1e-6, 1e6)) -> float:
        """Set lambda to the evidence maximiser within ``bounds`` (searched in log space)."""
        self._check_fitted()
        res = minimize_scalar(
            lambda log_lam: -self.log_marginal_likelihood(math.exp(log_lam)),
            bounds=(math.log(bounds[0]), math.log(bounds[1])),
            method="bounded",
            options={"xatol": 1e-6},
        )
        self.prior_precision = float(math.exp(res.x))
        return self.prior_precision

    # -- predictive -----------------------------------------------------------------------
    def functional_variance(self, a: torch.Tensor) -> torch.Tensor:
        """Covariance of the linearised logits (N, C, C) for augmented features a (N, D+1)."""
        self._check_fitted()
        lam = self.prior_precision
        C, E = self.n_classes, self.n_inputs
        if self.hessian_structure == "full":
            cov = torch.linalg.inv(self.H + lam * torch.eye(self.n_params, dtype=self.H.dtype))
            cov = cov.reshape(C, E, C, E)
            return torch.einsum("nd,cdke,ne->nck", a, cov, a)
        proj = (a[:, :-1] @ self.UA) ** 2  # (N, D)
        inv = 1.0 / (self.eG[:, None] * self.eA[None, :] + lam)  # (C, D)
        weight_part = torch.einsum("ci,ni,ki->nck", self.UG, proj @ inv.T, self.UG)
        bias_cov = self.UB @ torch.diag(1.0 / (self.eB + lam)) @ self.UB.T  # (C, C)
        return weight_part + bias_cov[None]

    def predict(
        self, images: torch.Tensor, link: str = "probit", n_samples: int = 100, seed: int = 0
    ) -> Predictive:
        """Posterior predictive on images (N, 1, H, W).

        link: "probit" (deterministic probit approximation) or "mc" (mean of ``n_samples``
        softmaxes of sampled logits). Samples (n_samples, N, C) of the linearised logits' softmax
        are returned in both cases, for the mutual information. One forward pass per image.
        """
        if link not in _LINKS:
            raise ValueError(f"link must be one of {_LINKS}, got {link!r}")
        a, f_mu = self.features(images)
        f_var = self.functional_variance(a)
        gen = torch.Generator().manual_seed(seed)
        chol = torch.linalg.cholesky(f_var + 1e-10 * torch.eye(self.n_classes, dtype=f_var.dtype))
        eps = torch.randn(n_samples, *f_mu.shape, generator=gen, dtype=f_mu.dtype)
        samples = (f_mu[None] + torch.einsum("nck,snk->snc", chol, eps)).softmax(-1)
        if link == "probit":
            kappa = 1.0 / torch.sqrt(1.0 + math.pi / 8.0 * f_var.diagonal(dim1=1, dim2=2))
            probs = (kappa * f_mu).softmax(-1)
        else:
            probs = samples.mean(0)
        return Predictive(probs=probs.float(), samples=samples.float(), forward_passes=1)
