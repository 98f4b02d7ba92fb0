"""DPT: Deformable Patch-based Transformer (Chen et al. 2021, "DPT: Deformable Patch-based
Transformer for Visual Recognition").

A pyramid transformer (PVT-like, spatial-reduction attention) whose patch embeddings between
stages are *deformable* (DePatch, paper sec. 3.2, Fig. 2): for every output patch a small layer
predicts an offset (dx, dy) of its centre and its half-size (sw, sh); k x k points are sampled
bilinearly inside that rectangle and projected to one token. With zero offset and the regular
half-size the patch is the ordinary square patch; training moves and resizes it to follow
features such as arcs. The first stage uses a regular strided-conv patch embedding.
Shapes: B batch, C channels in, D width, h x w patch grid, P = h*w patches, k sample side.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tuner.models.scratch import Block, drop_path_schedule


class DeformablePatchEmbedding(nn.Module):
    """(B, C, H, W) map -> (B, P, D) tokens from k x k bilinear samples of a learned rectangle."""

    def __init__(self, c_in: int, dim: int, patch: int, k: int = 2):
        super().__init__()
        self.patch, self.k = patch, k
        self.predict = nn.Conv2d(c_in, 4, patch, stride=patch)  # (dx, dy, log sw, log sh) per patch
        nn.init.zeros_(self.predict.weight)  # start as the regular patch (offset 0, size 1)
        nn.init.zeros_(self.predict.bias)
        self.proj = nn.Linear(c_in * k * k, dim)
        self.norm = nn.LayerNorm(dim)

    def sampling_points(self, x: torch.Tensor) -> torch.Tensor:
        """Sample locations in input pixels (x, y), shape (B, h, w, k*k, 2)."""
        B, _, H, W = x.shape
        s, k = self.patch, self.k
        pred = self.predict(x).permute(0, 2, 3, 1)  # (B, h, w, 4)
        h, w = pred.shape[1:3]
        ys, xs = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device),
                                indexing="ij")
        centre = torch.stack([xs, ys], dim=-1) * s + (s - 1) / 2  # regular patch centres (h, w, 2)
        centre = centre + pred[..., :2]  # learned offset, pixels
        half = (s / 2) * pred[..., 2:].exp()  # learned half-size, pixels (s/2 at init)
        # k x k points spread evenly inside [-half, +half]: fractions (2i+1)/k - 1 of half-size
        frac = (2 * torch.arange(k, device=x.device) + 1) / k - 1  # (k,)
        fy, fx = torch.meshgrid(frac, frac, indexing="ij")
        unit = torch.stack([fx, fy], dim=-1).reshape(k * k, 2)  # (k*k, 2)
        return centre[..., None, :] + unit * half[..., None, :]  # (B, h, w, k*k, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        B, C, H, W = x.shape
        pts = self.sampling_points(x)  # (B, h, w, k*k, 2)
        h, w = pts.shape[1:3]
        # grid_sample wants coordinates in [-1, 1] with align_corners=False pixel convention
        grid = torch.stack([(pts[..., 0] + 0.5) / W, (pts[..., 1] + 0.5) / H], dim=-1) * 2 - 1
        samples = F.grid_sample(x, grid.reshape(B, h, w * self.k ** 2, 2), align_corners=False)
        samples = samples.reshape(B, C, h, w, self.k ** 2).permute(0, 2, 3, 1, 4)  # (B, h, w, C, k*k)
        tokens = self.proj(samples.reshape(B, h * w, C * self.k ** 2))  # (B, P, D)
        return self.norm(tokens), h, w


class SpatialReductionAttention(nn.Module):
    """PVT attention: keys/values from the map average-pooled by ``sr`` (N -> N/sr^2)."""

    def __init__(self, dim: int, num_heads: int, sr: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dpt width {dim} must be divisible by its heads {num_heads}")
        self.num_heads, self.sr = num_heads, sr
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        B, N, D = x.shape  # tokens of an h x w map
        nh = self.num_heads
        q = self.q(x).reshape(B, N, nh, D // nh).transpose(1, 2)  # (B, nh, N, d)
        src = x
        if self.sr > 1 and min(h, w) >= self.sr:
            grid = F.avg_pool2d(x.transpose(1, 2).reshape(B, D, h, w), self.sr)
            src = grid.flatten(2).transpose(1, 2)  # (B, N', D)
        k, v = self.kv(src).reshape(B, -1, 2, nh, D // nh).permute(2, 0, 3, 1, 4)  # (B, nh, N', d)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class DPT(nn.Module):
    """Regular patch stage, then stages entered through deformable patch embeddings."""

    def __init__(self, in_chans: int, num_classes: int, dims, depths, heads, sr_ratios,
                 patch_size: int, mlp_ratio: float, drop_rate: float, drop_path_rate: float):
        super().__init__()
        rates = iter(drop_path_schedule(drop_path_rate, sum(depths)))
        self.stem = nn.Conv2d(in_chans, dims[0], patch_size, stride=patch_size)
        self.stem_norm = nn.LayerNorm(dims[0])
        self.embeds = nn.ModuleList(DeformablePatchEmbedding(dims[i - 1], dims[i], 2)
                                    for i in range(1, len(dims)))
        self.stages = nn.ModuleList()
        for dim, depth, n_heads, sr in zip(dims, depths, heads, sr_ratios):
            self.stages.append(nn.ModuleList(
                Block(dim, n_heads, mlp_ratio, 0.0, next(rates),
                      attn=SpatialReductionAttention(dim, n_heads, sr)) for _ in range(depth)))
        self.norm = nn.LayerNorm(dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, D0, H/p, W/p)
        B, _, h, w = x.shape
        tokens = self.stem_norm(x.flatten(2).transpose(1, 2))  # (B, N, D0)
        for i, blocks in enumerate(self.stages):
            if i:
                grid = tokens.transpose(1, 2).reshape(B, -1, h, w)
                tokens, h, w = self.embeds[i - 1](grid)  # (B, N/4, D_i)
            for block in blocks:
                tokens = block(tokens, h, w)
        return self.head(self.head_drop(self.norm(tokens.mean(dim=1))))  # (B, num_classes)


def build_dpt(*, img_size: int, in_chans: int, num_classes: int, drop_rate: float = 0.0,
              drop_path_rate: float = 0.1, patch_size: int = 4,
              embed_dims: tuple[int, ...] = (64, 128, 320, 512), depths: tuple[int, ...] = (2, 2, 2, 2),
              num_heads: tuple[int, ...] = (1, 2, 5, 8), sr_ratios: tuple[int, ...] = (4, 2, 1, 1),
              mlp_ratio: float = 4.0) -> nn.Module:
    """DPT-Tiny layout (PVT-Tiny widths 64-128-320-512, 2 blocks per stage); 64 px -> maps
    16, 8, 4, 2. Any image size (odd maps lose their last row/column at the deformable stages)."""
    lists = (tuple(embed_dims), tuple(depths), tuple(num_heads), tuple(sr_ratios))
    if len({len(t) for t in lists}) != 1:
        raise ValueError(f"dpt embed_dims, depths, num_heads, sr_ratios must have the same length, got {lists}")
    return DPT(in_chans, num_classes, *lists, patch_size, mlp_ratio, drop_rate, drop_path_rate)
