"""Compact Convolutional Transformer (Hassani et al. 2021, "Escaping the Big Data Paradigm
with Compact Transformers").

Differences from ViT (paper Fig. 2): a small convolutional tokenizer replaces patchify
(sec. 3.2), and *sequence pooling* replaces the class token (sec. 3.1): an attention-weighted
average of the output tokens. Shapes: B batch, D width, N tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from tuner.models.scratch import Block, drop_path_schedule


class ConvTokenizer(nn.Module):
    """n x [conv k x k (stride 1) -> ReLU -> max-pool 3x3 stride 2]: (B,C,H,W) -> (B, N, D)."""

    def __init__(self, in_chans: int, dim: int, n_layers: int, kernel_size: int):
        super().__init__()
        widths = [in_chans] + [dim // 2] * (n_layers - 1) + [dim]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=False),
                       nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).flatten(2).transpose(1, 2)  # (B, D, H', W') -> (B, N, D)


class SequencePooling(nn.Module):
    """z = softmax(g(x_L))^T x_L (paper eqs. 2-4): one learned importance weight per token."""

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Linear(dim, 1)  # g: token -> importance logit

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) tokens -> (B, N) pooling weights, summing to 1 over tokens."""
        return self.score(x).squeeze(-1).softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bn,bnd->bd", self.weights(x), x)  # (B, D)


class CCT(nn.Module):
    """Conv tokenizer -> learned positions -> transformer blocks -> sequence pooling -> logits."""

    def __init__(self, img_size: int, in_chans: int, num_classes: int, dim: int, depth: int,
                 num_heads: int, mlp_ratio: float, n_conv_layers: int, kernel_size: int,
                 drop_rate: float, drop_path_rate: float):
        super().__init__()
        self.tokenizer = ConvTokenizer(in_chans, dim, n_conv_layers, kernel_size)
        with torch.no_grad():  # token count from a dry run: padding/pooling arithmetic stays in one place
            n_tokens = self.tokenizer(torch.zeros(1, in_chans, img_size, img_size)).shape[1]
        self.pos_embed = nn.Parameter(torch.randn(1, n_tokens, dim) * 0.02)
        rates = drop_path_schedule(drop_path_rate, depth)
        self.blocks = nn.Sequential(*(Block(dim, num_heads, mlp_ratio, 0.0, r) for r in rates))
        self.norm = nn.LayerNorm(dim)
        self.pool = SequencePooling(dim)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.tokenizer(x) + self.pos_embed  # (B, N, D)
        tokens = self.norm(self.blocks(tokens))
        return self.head(self.head_drop(self.pool(tokens)))  # (B, num_classes)


def build_cct(*, img_size: int, in_chans: int, num_classes: int, drop_rate: float = 0.0,
              drop_path_rate: float = 0.1, embed_dim: int = 256, depth: int = 7,
              num_heads: int = 4, mlp_ratio: float = 2.0, n_conv_layers: int = 2,
              kernel_size: int = 3) -> nn.Module:
    """CCT-7/3x2 (7 blocks, 3x3 convs, 2 tokenizer layers): 64 px -> 16x16 tokens."""
    if n_conv_layers < 1:
        raise ValueError(f"cct n_conv_layers must be >= 1, got {n_conv_layers}")
    return CCT(img_size, in_chans, num_classes, embed_dim, depth, num_heads, mlp_ratio,
               n_conv_layers, kernel_size, drop_rate, drop_path_rate)
