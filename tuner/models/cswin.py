"""CSWin Transformer (Dong et al. 2022, "CSWin Transformer: A General Vision Transformer Backbone
with Cross-Shaped Windows").

Cross-shaped window self-attention (paper sec. 3.2, Fig. 3): the heads are split in two halves;
the first half attends only within horizontal stripes of ``sw`` rows, the second only within
vertical stripes of ``sw`` columns, so together each token sees a cross. Locally-enhanced
positional encoding (LePE, sec. 3.3) adds a depthwise conv of V to the attention output.
Stages are joined by 3x3 stride-2 convs (sec. 3.1); the stem is a 7x7 stride-4 conv.

Here the stripes are expressed as a boolean attention mask over the whole map (``stripe_mask``)
rather than by cutting the map into stripes: the result is the same, any map size works without
padding, and the mask can be inspected; the cost is O(N^2) instead of O(N * sw * W). LePE is a
depthwise conv over the whole map rather than per stripe. Shapes: B batch, D width, H x W token
map, N = H*W tokens, h heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tuner.models.scratch import Block, drop_path_schedule


def stripe_mask(h: int, w: int, sw: int, horizontal: bool, device=None) -> torch.Tensor:
    """(N, N) bool mask, True where query i may attend key j: same stripe of ``sw`` rows
    (horizontal) or ``sw`` columns (vertical). Tokens are numbered row-major, i = row * w + col."""
    rows = torch.arange(h, device=device).repeat_interleave(w)  # (N,)
    cols = torch.arange(w, device=device).repeat(h)  # (N,)
    stripe = (rows if horizontal else cols) // sw
    return stripe[:, None] == stripe[None, :]


class CrossShapedAttention(nn.Module):
    """Half the heads attend in horizontal stripes, half in vertical stripes (+ LePE)."""

    def __init__(self, dim: int, num_heads: int, split_size: int):
        super().__init__()
        if num_heads < 2 or num_heads % 2 or dim % num_heads:
            raise ValueError(f"cswin needs an even number of heads >= 2 dividing the width; "
                             f"got width {dim}, heads {num_heads}")
        self.num_heads, self.split_size = num_heads, split_size
        self.qkv = nn.Linear(dim, 3 * dim)
        self.lepe = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)  # positional term from V
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        B, N, D = x.shape
        nh = self.num_heads
        q, k, v = self.qkv(x).reshape(B, N, 3, nh, D // nh).permute(2, 0, 3, 1, 4)  # (B, nh, N, d)
        # Stripes as wide as the map mean full attention (the last stage in the paper).
        masks = torch.stack([stripe_mask(h, w, self.split_size, True, x.device),
                             stripe_mask(h, w, self.split_size, False, x.device)])  # (2, N, N)
        mask = masks.repeat_interleave(nh // 2, dim=0)  # (nh, N, N): first half horizontal
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, N, d)
        out = out.transpose(1, 2).reshape(B, N, D)
        v_map = v.transpose(1, 2).reshape(B, N, D).transpose(1, 2).reshape(B, D, h, w)
        out = out + self.lepe(v_map).flatten(2).transpose(1, 2)  # LePE: (B, N, D)
        return self.proj(out)


class CSWin(nn.Module):
    """Conv stem (/4) -> stages of CSWin blocks joined by stride-2 convs -> mean token -> logits."""

    def __init__(self, in_chans: int, num_classes: int, dim: int, depths, heads, split_sizes,
                 mlp_ratio: float, drop_rate: float, drop_path_rate: float):
        super().__init__()
        self.stem = nn.Conv2d(in_chans, dim, 7, stride=4, padding=2)
        self.stem_norm = nn.LayerNorm(dim)
        rates = iter(drop_path_schedule(drop_path_rate, sum(depths)))
        self.stages, self.merges = nn.ModuleList(), nn.ModuleList()
        widths = [dim * 2 ** i for i in range(len(depths))]
        for i, (depth, n_heads, sw) in enumerate(zip(depths, heads, split_sizes)):
            self.stages.append(nn.ModuleList(  # pre-norm blocks of CSWin attention (paper eq. 5)
                Block(widths[i], n_heads, mlp_ratio, 0.0, next(rates),
                      attn=CrossShapedAttention(widths[i], n_heads, sw)) for _ in range(depth)))
            if i + 1 < len(depths):  # merge: halve the map, double the width
                self.merges.append(nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1))
        self.norm = nn.LayerNorm(widths[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, D, H/4, W/4)
        B, D, h, w = x.shape
        tokens = self.stem_norm(x.flatten(2).transpose(1, 2))  # (B, N, D)
        for i, blocks in enumerate(self.stages):
            for block in blocks:
                tokens = block(tokens, h, w)
            if i < len(self.merges):
                grid = tokens.transpose(1, 2).reshape(B, -1, h, w)
                grid = self.merges[i](grid)  # (B, 2D, h/2, w/2)
                h, w = grid.shape[-2:]
                tokens = grid.flatten(2).transpose(1, 2)
        return self.head(self.head_drop(self.norm(tokens.mean(dim=1))))  # (B, num_classes)


def build_cswin(*, img_size: int, in_chans: int, num_classes: int, drop_rate: float = 0.0,
                drop_path_rate: float = 0.1, embed_dim: int = 64,
                depths: tuple[int, ...] = (1, 2, 21, 1), num_heads: tuple[int, ...] = (2, 4, 8, 16),
                split_sizes: tuple[int, ...] = (1, 2, 2, 16), mlp_ratio: float = 4.0) -> nn.Module:
    """CSWin-T layout (64 wide, 1-2-21-1 blocks); at 64 px the maps are 16, 8, 4, 2 tokens and
    the stripe widths 1, 2, 2 then whole-map attention in the last stage. Any image size."""
    lists = (tuple(depths), tuple(num_heads), tuple(split_sizes))
    if len({len(t) for t in lists}) != 1:
        raise ValueError(f"cswin depths, num_heads and split_sizes must have the same length, got {lists}")
    if min(lists[2]) < 1:
        raise ValueError(f"cswin split_sizes must be >= 1, got {lists[2]}")
    return CSWin(in_chans, num_classes, embed_dim, *lists, mlp_ratio, drop_rate, drop_path_rate)
