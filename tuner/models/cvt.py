"""CvT: Convolutional vision Transformer (Wu et al. 2021, "CvT: Introducing Convolutions to
Vision Transformers").

Two convolutions enter the transformer (paper Fig. 2):
- Convolutional Token Embedding (sec. 3.1): each stage starts with an overlapping strided conv
  that turns the previous token map into a smaller, wider one, then LayerNorm.
- Convolutional Projection (sec. 3.2): Q, K, V come from depthwise-separable convs over the 2D
  token map (K and V with stride 2, "squeezed"), instead of per-token linear maps.
Convolutions carry position, so there are no positional embeddings (sec. 3.4). Here the last
stage's tokens are averaged instead of using a class token. Shapes: B batch, D width,
H x W token map, N = H*W, h heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tuner.models.scratch import Block, drop_path_schedule


class ConvEmbedding(nn.Module):
    """Overlapping conv (kernel k, stride s) + LayerNorm: (B, C, H, W) -> (B, D, H/s, W/s)."""

    def __init__(self, c_in: int, dim: int, kernel_size: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, dim, kernel_size, stride, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)  # (B, D, H', W')
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvProjection(nn.Module):
    """Depthwise 3x3 conv + BatchNorm, then pointwise linear: (B, N, D) map -> (B, N', D)."""

    def __init__(self, dim: int, stride: int):
        super().__init__()
        self.depthwise = nn.Conv2d(dim, dim, 3, stride, padding=1, groups=dim, bias=False)
        self.norm = nn.BatchNorm2d(dim)
        self.pointwise = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        B, N, D = x.shape
        grid = x.transpose(1, 2).reshape(B, D, h, w)  # tokens back onto their 2D map
        grid = self.norm(self.depthwise(grid))  # (B, D, h/stride, w/stride)
        return self.pointwise(grid.flatten(2).transpose(1, 2))  # (B, N', D)


class ConvAttention(nn.Module):
    """Multi-head attention whose Q, K, V are convolutional projections (K, V squeezed by kv_stride)."""

    def __init__(self, dim: int, num_heads: int, kv_stride: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"cvt width {dim} must be divisible by its heads {num_heads}")
        self.num_heads = num_heads
        self.q = ConvProjection(dim, 1)
        self.k = ConvProjection(dim, kv_stride)
        self.v = ConvProjection(dim, kv_stride)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        B, N, D = x.shape
        heads = lambda t: t.reshape(B, -1, self.num_heads, D // self.num_heads).transpose(1, 2)
        q = heads(self.q(x, h, w))  # (B, h, N, d)
        k, v = heads(self.k(x, h, w)), heads(self.v(x, h, w))  # (B, h, N', d), N' ~ N / kv_stride^2
        out = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d)
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class CvT(nn.Module):
    """Stages of [conv token embedding -> conv-attention blocks]; mean of the last tokens -> logits."""

    def __init__(self, in_chans: int, num_classes: int, dims, depths, heads, kernels, strides,
                 mlp_ratio: float, kv_stride: int, drop_rate: float, drop_path_rate: float):
        super().__init__()
        rates = iter(drop_path_schedule(drop_path_rate, sum(depths)))
        self.embeds, self.stages = nn.ModuleList(), nn.ModuleList()
        c_in = in_chans
        for dim, depth, n_heads, k, s in zip(dims, depths, heads, kernels, strides):
            self.embeds.append(ConvEmbedding(c_in, dim, k, s))
            self.stages.append(nn.ModuleList(  # pre-norm blocks of convolutional attention
                Block(dim, n_heads, mlp_ratio, 0.0, next(rates),
                      attn=ConvAttention(dim, n_heads, kv_stride)) for _ in range(depth)))
            c_in = dim
        self.norm = nn.LayerNorm(dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for embed, blocks in zip(self.embeds, self.stages):
            x = embed(x)  # (B, D, h, w)
            B, D, h, w = x.shape
            tokens = x.flatten(2).transpose(1, 2)  # (B, N, D)
            for block in blocks:
                tokens = block(tokens, h, w)
            x = tokens.transpose(1, 2).reshape(B, D, h, w)
        return self.head(self.head_drop(self.norm(tokens.mean(dim=1))))  # (B, num_classes)


def build_cvt(*, img_size: int, in_chans: int, num_classes: int, drop_rate: float = 0.0,
              drop_path_rate: float = 0.1, embed_dims: tuple[int, ...] = (64, 192, 384),
              depths: tuple[int, ...] = (1, 2, 10), num_heads: tuple[int, ...] = (1, 3, 6),
              kernel_sizes: tuple[int, ...] = (7, 3, 3), strides: tuple[int, ...] = (4, 2, 2),
              mlp_ratio: float = 4.0, kv_stride: int = 2) -> nn.Module:
    """CvT-13 layout (3 stages, 1-2-10 blocks); 64 px -> token maps 16, 8, 4. Any image size."""
    lists = (embed_dims, depths, num_heads, kernel_sizes, strides)
    if len({len(t) for t in lists}) != 1:
        raise ValueError("cvt embed_dims, depths, num_heads, kernel_sizes and strides must have the "
                         f"same length, got {[tuple(t) for t in lists]}")
    return CvT(in_chans, num_classes, *(tuple(t) for t in lists), mlp_ratio, kv_stride,
               drop_rate, drop_path_rate)
