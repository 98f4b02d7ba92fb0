"""A plain vision transformer written from first principles (Dosovitskiy et al. 2021, ViT).

Read top to bottom: image -> patches -> tokens (+ position) -> N x [pre-norm attention, pre-norm
MLP] -> pooled token -> logits. Nothing is imported from timm; the other families written here
(CCT, DPT, CvT, CSWin) reuse ``Block``. Shapes: B batch, C channels, H=W image side, P patch side,
N = (H/P)^2 patch tokens, D embedding width, h heads, d = D/h width per head.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class DropPath(nn.Module):
    """Stochastic depth: in training, drop a whole residual branch per sample with prob ``p``."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = torch.rand(x.shape[0], *([1] * (x.ndim - 1)), device=x.device) >= self.p
        return x * keep / (1.0 - self.p)  # rescale so the expectation is unchanged


class PatchEmbedding(nn.Module):
    """Cut the image into non-overlapping P x P patches and project each to D numbers (ViT eq. 1)."""

    def __init__(self, in_chans: int, patch_size: int, dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(in_chans * patch_size * patch_size, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        patches = F.unfold(x, kernel_size=p, stride=p)  # (B, C*P*P, N), edge remainder dropped
        return self.proj(patches.transpose(1, 2))  # (B, N, D)


class MultiHeadSelfAttention(nn.Module):
    """softmax(Q K^T / sqrt(d)) V in h heads (Vaswani et al. 2017, eq. 1), written out."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding width {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = nn.Dropout(attn_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        h = self.num_heads
        q, k, v = self.qkv(x).reshape(B, N, 3, h, D // h).permute(2, 0, 3, 1, 4)  # each (B, h, N, d)
        scores = q @ k.transpose(-2, -1) / math.sqrt(D // h)  # (B, h, N, N)
        weights = self.attn_drop(scores.softmax(dim=-1))  # each query's weights sum to 1
        out = weights @ v  # (B, h, N, d)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))  # heads concatenated: (B, N, D)


class MLP(nn.Module):
    """Two-layer perceptron applied to every token independently."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(F.gelu(self.fc1(x))))


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)) (ViT eqs. 2-3).

    ``attn`` replaces the plain self-attention (CvT, CSWin, DPT); attentions that work on the 2D
    token map get its size (h, w) through ``forward(x, h, w)``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop: float = 0.0,
                 drop_path: float = 0.0, attn: nn.Module | None = None):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = attn if attn is not None else MultiHeadSelfAttention(dim, num_heads)
        self.mlp = MLP(dim, int(dim * mlp_ratio), drop)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, *map_size: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), *map_size))  # x: (B, N, D)
        return x + self.drop_path(self.mlp(self.norm2(x)))


def drop_path_schedule(rate: float, depth: int) -> list[float]:
    """Stochastic-depth probabilities rising linearly from 0 to ``rate`` over ``depth`` blocks."""
    return [rate * i / max(depth - 1, 1) for i in range(depth)]


class ScratchViT(nn.Module):
    """The whole classifier: (B, C, H, W) images -> (B, num_classes) logits."""

    def __init__(self, img_size: int, in_chans: int, num_classes: int, patch_size: int, dim: int,
                 depth: int, num_heads: int, mlp_ratio: float, pool: str, drop_rate: float,
                 drop_path_rate: float):
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"scratch pool must be 'cls' or 'mean', got {pool!r}")
        if not 1 <= patch_size <= img_size:
            raise ValueError(f"scratch patch_size must be in [1, img_size={img_size}], got {patch_size}")
        self.pool = pool
        n_patches = (img_size // patch_size) ** 2
        self.patch_embed = PatchEmbedding(in_chans, patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if pool == "cls" else None
        n_tokens = n_patches + (pool == "cls")
        self.pos_embed = nn.Parameter(torch.randn(1, n_tokens, dim) * 0.02)  # learned positions
        rates = drop_path_schedule(drop_path_rate, depth)
        self.blocks = nn.Sequential(*(Block(dim, num_heads, mlp_ratio, 0.0, r) for r in rates))
        self.norm = nn.LayerNorm(dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x)  # (B, N, D)
        if self.cls_token is not None:  # a learned extra token that gathers the image summary
            tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1)  # (B, 1+N, D)
        tokens = self.norm(self.blocks(tokens + self.pos_embed))
        summary = tokens[:, 0] if self.cls_token is not None else tokens.mean(dim=1)  # (B, D)
        return self.head(self.head_drop(summary))  # (B, num_classes)


def build_scratch(*, img_size: int, in_chans: int, num_classes: int, drop_rate: float = 0.0,
                  drop_path_rate: float = 0.1, patch_size: int = 8, embed_dim: int = 192,
                  depth: int = 6, num_heads: int = 3, mlp_ratio: float = 4.0,
                  pool: str = "cls") -> nn.Module:
    """Plain ViT encoder; ``pool`` is ``"cls"`` (class token) or ``"mean"`` (average of tokens)."""
    return ScratchViT(img_size, in_chans, num_classes, patch_size, embed_dim, depth, num_heads,
                      mlp_ratio, pool, drop_rate, drop_path_rate)
